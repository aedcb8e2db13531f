"""The generated site sharing its port with another site that asks for client
certificates from another CA (one nginx, two server blocks, as sites-enabled/ has)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from tests.publish.conftest import KEY_PASS, Pki, make_pki, start_nginx, stop_nginx


def test_a_client_certificate_of_another_site_cannot_write(pki: Pki, tmp_path: Path) -> None:
    """A client sending no SNI (an IP-literal URL) is verified in the TLS context of the
    port's default server. When that was another site (it came first), a publisher
    certificate from the CA *that* site trusts read as $ssl_client_verify SUCCESS in ours,
    chosen by the Host header: it could PUT anything onto the boot origin."""
    other = make_pki(tmp_path / "other-ca")
    chain = tmp_path / "other-chain.pem"
    chain.write_bytes(other.cert("origin").read_bytes()
                      + (other.dir / "issuing-ca.crt").read_bytes())

    def other_site(port: int) -> str:
        return f"""\
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name other.example;
        ssl_certificate {chain};
        ssl_certificate_key {other.key("origin")};
        ssl_password_file {other.key_pass};
        ssl_client_certificate {other.dir / "chain.pem"};
        ssl_verify_client optional;
        return 200 "other site\\n";
    }}"""

    nginx = start_nginx(pki, tmp_path / "nginx", other_site=other_site)
    try:
        def put(client_pki: Pki, name: str) -> int:
            # an attacker does not mind whose server certificate it gets
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            if client_pki is not pki:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(str(client_pki.cert("publisher")),
                                str(client_pki.key("publisher")), password=KEY_PASS)
            with httpx.Client(verify=ctx, trust_env=False) as client:
                return client.put(nginx.url + name, content=b"x",
                                  headers={"Host": "localhost"}).status_code

        # (127.0.0.1: no SNI)
        assert put(other, "theirs") in (400, 403)
        assert not (nginx.root / "theirs").exists()
        # and our publisher, sending no SNI either, gets our certificate and may write
        assert put(pki, "ours") == 201
    finally:
        stop_nginx(nginx)
