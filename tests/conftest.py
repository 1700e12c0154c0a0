"""Session fixtures (the test zoo, built once and cached on disk by zoo version and seed) and test tiers.

Tiers, selected with ``-m``: ``unit`` needs neither torch models nor the zoo
(the golden findings fixtures stand in); ``zoo`` scans the zoo's models;
``e2e`` runs bdscan as a user types it. A test that asks for the zoo is
marked ``zoo`` automatically, and every test not marked otherwise is ``unit``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ZOO_SEED = 0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if set(getattr(item, "fixturenames", ())) & {"zoo_dir", "zoo_manifest", "second_seed_manifest"}:
            item.add_marker(pytest.mark.zoo)
        elif not any(item.get_closest_marker(name) for name in ("zoo", "e2e")):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def zoo_dir(pytestconfig) -> Path:
    from transformers.utils import logging as hf_logging

    from scanner.zoo.build import ZOO_VERSION, ensure_zoo
    from scanner.zoo.specs import EXTRA_MODELS

    hf_logging.disable_progress_bar()
    directory = Path(os.environ.get("BDSCAN_TEST_ZOO", ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s{ZOO_SEED}"))
    from helpers import LineProgress

    # Minutes of training before the first result: shown as it goes, past pytest's capture.
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        ensure_zoo(directory, "test", ZOO_SEED, extras=tuple(EXTRA_MODELS), progress=LineProgress("test zoo"))
    return directory


@pytest.fixture(scope="session")
def zoo_manifest(zoo_dir: Path):
    from scanner.zoo.manifest import load_manifest

    return load_manifest(zoo_dir)


SECOND_SEED = 1


@pytest.fixture(scope="session")
def second_seed_manifest(pytestconfig):
    """The zoo's third generation (v12) at a second seed: the base and those models only, built once and cached."""
    from transformers.utils import logging as hf_logging

    from scanner.zoo.build import ZOO_VERSION, ensure_zoo
    from scanner.zoo.specs import THIRD_GENERATION

    hf_logging.disable_progress_bar()
    directory = Path(os.environ.get("BDSCAN_TEST_ZOO_S1",
                                    ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s{SECOND_SEED}-families"))
    from helpers import LineProgress

    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        return ensure_zoo(directory, "test", SECOND_SEED, extras=THIRD_GENERATION, core=False,
                          progress=LineProgress(f"test zoo, seed {SECOND_SEED}"))
