from __future__ import annotations

from pathlib import Path

import pytest

from tests.cms.pki import Material, make_material


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))
