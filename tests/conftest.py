"""Session fixtures: the test zoo, built once and cached on disk by zoo version and seed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
ZOO_SEED = 0


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from transformers.utils import logging as hf_logging

    from scanner.zoo.build import ZOO_VERSION, ensure_zoo

    hf_logging.disable_progress_bar()
    directory = Path(os.environ.get("BDSCAN_TEST_ZOO", ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s{ZOO_SEED}"))
    ensure_zoo(directory, "test", ZOO_SEED, extras=("full", "lora"))
    return directory


@pytest.fixture(scope="session")
def zoo_manifest(zoo_dir: Path):
    from scanner.zoo.build import load_manifest

    return load_manifest(zoo_dir)
