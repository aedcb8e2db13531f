"""The signature corpus, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cms.corpus import Corpus, generate


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return generate(Path(tmp_path_factory.mktemp("corpus")))
