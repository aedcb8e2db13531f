"""The release's entry script: a boot menu that is fail-closed by construction.

The firmware's embedded script fetches this script and its signature, verifies it and runs
it; this script then picks the entries for the running architecture (``${platform}`` and
``${buildarch}``), shows the menu, and for the chosen entry fetches the kernel and every
initrd by absolute HTTPS URL (``<public base>/releases/<id>/<key>``, so the same bytes
work at the entry path and inside the release directory), ``imgverify --signer``s each
one before anything boots, and sends every failure to one ``:failed`` label that ends in
the failure action. The kernel command line lives here, inside the signed script. Every
value is checked with :mod:`trustboot.ipxe.syntax` (no quoting in iPXE: a value that holds
``&&``, ``;`` or ``${`` could run commands before ``imgverify``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trustboot.errors import ConfigError
from trustboot.ipxe.script import (
    FAILED_LABEL,
    check_script,
    echo,
    failure_block,
    free_text,
    or_fail,
    reserved_image_name,
    verify,
)
from trustboot.ipxe.syntax import check_word, check_words

# How each recipe architecture is recognised at boot.
ARCH_TESTS = {
    "bios": "iseq ${platform} pcbios",
    "x86_64-efi": "iseq ${platform} efi && iseq ${buildarch} x86_64",
    "arm64-efi": "iseq ${platform} efi && iseq ${buildarch} arm64",
}


@dataclass(frozen=True)
class MenuEntry:
    name: str
    title: str
    arch: tuple[str, ...]
    kernel_key: str
    initrd_keys: tuple[str, ...]
    cmdline: str
    default: bool = False


def object_url(base: str, release_id: str, key: str) -> str:
    return check_word(f"{base.rstrip('/')}/releases/{release_id}/{key}", "object URL")


def _image_name(key: str) -> str:
    """The name iPXE gives an image fetched from a URL: its last path segment (never one
    of the chain's own, which the recipe refused already: checked again here)."""
    name = key.rsplit("/", 1)[-1]
    if reserved_image_name(name):
        raise ConfigError(f"image {name!r} would take a name the boot chain keeps for "
                          "its own images", hint="rename the file")
    return name


def render_menu(*, release_id: str, name: str, base_url: str, signer: str, title: str,
                timeout: int, entries: Sequence[MenuEntry], on_failure: str) -> str:
    """The signed entry script of a release. Deterministic: same inputs, same bytes."""
    check_word(signer, "signer name")
    check_word(release_id, "release id")
    check_words(title, "menu title")
    if not entries:
        raise ConfigError("a release needs at least one entry")
    lines = [
        "#!ipxe",
        f"# trustboot release {release_id} ({check_word(name, 'recipe name')}): generated, "
        f"signed by {signer}.",
        "# Every kernel and initrd is imgverify'd before use; every failure goes to "
        f":{FAILED_LABEL}.",
        "imgtrust --permanent",
    ]
    arches = [a for a in ARCH_TESTS if any(a in e.arch for e in entries)]
    for arch in arches:
        lines.append(f"{ARCH_TESTS[arch]} && goto arch_{arch} ||")
    lines += [echo("trustboot: no entry of this release boots on this platform"),
              f"goto {FAILED_LABEL}", ""]
    for arch in arches:
        mine = [e for e in entries if arch in e.arch]
        default = next((e for e in mine if e.default), mine[0])
        lines.append(f":arch_{arch}")
        if timeout == 0:
            lines += [f"goto entry_{default.name}", ""]
            continue
        heading = free_text(f"{title} - release {release_id}", "menu title")
        lines.append(or_fail(f"menu {heading}"))
        for e in mine:
            lines.append(or_fail(f"item e_{check_word(e.name, 'entry name')} "
                                 f"{check_words(e.title, 'entry title')}"))
        lines.append(or_fail(f"choose --default e_{default.name} --timeout {timeout * 1000} "
                             "tb_choice"))
        for e in mine:
            lines.append(f"iseq ${{tb_choice}} e_{e.name} && goto entry_{e.name} ||")
        lines += [f"goto {FAILED_LABEL}", ""]
    for e in entries:
        kernel_url = object_url(base_url, release_id, e.kernel_key)
        cmdline = check_words(e.cmdline, f"entry {e.name} cmdline")
        title_text = check_words(e.title, f"entry {e.name} title")
        names = [_image_name(e.kernel_key), *(_image_name(k) for k in e.initrd_keys)]
        if len(set(names)) != len(names):
            raise ConfigError(f"entry {e.name}: two images share the name "
                              "iPXE would give them (the last path segment)",
                              hint="rename one of the files")
        lines += [f":entry_{e.name}",
                  echo(f"trustboot: booting {title_text} (release {release_id})"),
                  or_fail(f"kernel {kernel_url}"
                          + (f" {cmdline}" if cmdline.strip() else "")),
                  verify(names[0], f"{kernel_url}.sig", signer=signer)]
        for key, image in zip(e.initrd_keys, names[1:], strict=True):
            url = object_url(base_url, release_id, key)
            lines += [or_fail(f"initrd {url}"), verify(image, f"{url}.sig", signer=signer)]
        lines += [or_fail("boot"), f"goto {FAILED_LABEL}", ""]
    lines += failure_block(on_failure, message=f"trustboot: release {release_id}: a download "
                           "or signature check failed, nothing unverified was booted")
    script = "\n".join(lines) + "\n"
    # Fail-closed by construction; the lint proves it for these values before anything
    # is signed (a value the checks above let through would otherwise boot nothing).
    check_script(script, origin=f"the menu script of release {release_id}", stage="chained")
    return script
