"""The signature corpus, generated once per test session; a directory other users reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cms.corpus import Corpus, generate


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return generate(Path(tmp_path_factory.mktemp("corpus")))


@pytest.fixture
def shared() -> Iterator[Path]:
    """A scratch directory other users can reach (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tb-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)
