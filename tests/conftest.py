"""Shared fixtures: an isolated base directory with the embedded corpus built once per test session."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """A private MINI_NANOCHAT_HOME holding the embedded corpus (built once, ~2 s)."""
    d = tmp_path_factory.mktemp("mnh")
    old = os.environ.get("MINI_NANOCHAT_HOME")
    os.environ["MINI_NANOCHAT_HOME"] = str(d)
    from mini_nanochat.stages import data

    data.main([])
    yield d
    if old is None:
        os.environ.pop("MINI_NANOCHAT_HOME", None)
    else:
        os.environ["MINI_NANOCHAT_HOME"] = old


@pytest.fixture(scope="session")
def train_docs(base_dir):
    from mini_nanochat.dataset import iter_texts

    return list(iter_texts("embedded", "train"))


@pytest.fixture(scope="session")
def sample_2mb(train_docs):
    """The first ~2 MB of training documents."""
    out, n = [], 0
    for d in train_docs:
        out.append(d)
        n += len(d.encode("utf-8"))
        if n >= 2_000_000:
            break
    return out
