"""Hash a release's inputs from the moment the recipe is read, beside the rest of start-up.

`trustboot release` spends its first fraction of a second on one core: importing the
signing and publishing stack, validating the recipe, unlocking the origin's TLS client
key. Its kernels and initrds are hashed meanwhile in a forked process
(``trustboot.cms.digest.HashJob``), on the core that would otherwise wait. Their digests
are then known, by the files' stamps, when the stages need them: the plan does not hash
them again, and neither does the upload that stages them on the origin
(``trustboot.publish.stream.digesting_chunks`` checks the stamp instead), which leaves
the upload's CPU to TLS. What the origin serves is still read back in full and verified
before anything is switched.

Only an optimisation: a recipe whose inputs do not resolve, or a file that cannot be
read, starts nothing here and is reported by the stage that needs it, with its context.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from trustboot.cms.digest import HashJob
from trustboot.errors import TrustbootError
from trustboot.publish.cache import PublishCache
from trustboot.release.recipe import Recipe, recipe_inputs


def start(recipe: Recipe, allow_outside: Sequence[Path],
          publish_cache: Path | None) -> HashJob | None:
    """The hashing of ``recipe``'s inputs, started; None when there is nothing to hash
    (inputs the publish cache knows unchanged are not read at all, as in the plan). The
    caller calls ``settle`` before the digests are needed, and ``cancel`` on failure."""
    try:
        inputs = recipe_inputs(recipe, allow_outside)  # the path rules validate applies
    except TrustbootError:
        return None
    cache = PublishCache(publish_cache) if publish_cache is not None else None
    todo: list[Path] = []
    for i in inputs:
        try:
            st = os.stat(i.path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or i.path in todo:
            continue
        if (cache is not None and recipe.signer.hash == "sha256"
                and cache.local_digest(i.path, st) is not None):
            continue
        todo.append(i.path)
    return HashJob(todo, recipe.signer.hash) if todo else None


def settle(job: HashJob | None) -> None:
    """Wait for ``job``: its digests are then remembered by stamp (cms.digest.recall). A
    failure is left to the stage that hashes the file again, which reports it."""
    if job is None:
        return
    try:
        job.result()
    except (TrustbootError, OSError):
        pass
