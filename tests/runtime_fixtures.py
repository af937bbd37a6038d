"""Shared fixtures for the runtime tests: model directories and real radiographs.

`model_dir` runs every test that uses it twice: on a tiny model built at test time from
tests/model_fixture.py (cached in .pytest_cache by the builder's hash), and on the shipped default
model in edgeba/models/default, which must exist: its absence is a failure, not a skip.
Import the fixtures into a test module with `from runtime_fixtures import *`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeba.dataset import rsna_root
from edgeba.manifest import DEFAULT_DIR

TESTS = Path(__file__).parent
# Real radiographs on which the fixture U-Net's mask passes QC (and the trained one's should).
GOOD_IDS = ("10043", "10108")
MODELS = ("fixture", "default")

__all__ = ["GOOD_IDS", "fixture_model", "model_dir", "good_image", "run_cli", "MODELS"]


def _build_fixture(cache_root: Path) -> Path:
    key = hashlib.sha256((TESTS / "model_fixture.py").read_bytes()).hexdigest()[:12]
    out = cache_root / key
    if not (out / "manifest.json").is_file():
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        # A subprocess keeps TensorFlow (about 1 GB) out of the test process.
        proc = subprocess.run([sys.executable, str(TESTS / "model_fixture.py"), str(out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def fixture_model(request, tmp_path_factory) -> Path:
    # No cache under -p no:cacheprovider (no `config.cache` at all; a read-only checkout): build into a temporary folder
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("edgeba-fixture-model") if cache is not None else tmp_path_factory.mktemp("fixture-model")
    return _build_fixture(Path(root))


@pytest.fixture(scope="session", params=MODELS)
def model_dir(request) -> Path:
    if request.param == "fixture":
        return request.getfixturevalue("fixture_model")
    if not (DEFAULT_DIR / "manifest.json").is_file():
        pytest.fail(f"the shipped default model is missing: {DEFAULT_DIR}/manifest.json (issue 5 ships it)")
    return DEFAULT_DIR


@pytest.fixture(scope="session")
def good_image() -> Path:
    return rsna_root() / "train" / f"{GOOD_IDS[0]}.jpg"


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`edgeba ARGS` as a clinic user runs it: a fresh process, stdout and stderr apart."""
    return subprocess.run([sys.executable, "-m", "edgeba.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
