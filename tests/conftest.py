"""Session fixtures (the test zoo, built once and cached on disk by zoo version and seed) and test tiers.

Tiers, selected with ``-m``: ``unit`` needs neither torch models nor the zoo
(the golden findings fixtures stand in); ``zoo`` scans the zoo's models;
``e2e`` runs bdscan as a user types it. A test that asks for the zoo is
marked ``zoo`` automatically, and every test not marked otherwise is ``unit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.zoo.kernels import pin_kernels

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before torch's first kernel: the zoo the tests train, and what they measure on it, the same on every x86 CPU.
pin_kernels()

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
    _start_second_seed(pytestconfig)
    return directory


@pytest.fixture(scope="session")
def zoo_manifest(zoo_dir: Path):
    from scanner.zoo.manifest import load_manifest

    return load_manifest(zoo_dir)


SECOND_SEED = 1
BACKGROUND_BUILD = """
import sys
from scanner.zoo.build import ensure_zoo
from scanner.zoo.specs import THIRD_GENERATION
ensure_zoo(sys.argv[1], "test", int(sys.argv[2]), extras=THIRD_GENERATION, core=False, workers=1)
"""


def _second_seed_dir() -> Path:
    from scanner.zoo.build import ZOO_VERSION

    return Path(os.environ.get("BDSCAN_TEST_ZOO_S1", ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s{SECOND_SEED}-families"))


def pytest_collection_finish(session):
    """Note whether a selected test needs the second seed's zoo (what is left once -m and -k have deselected)."""
    config = session.config
    config._bdscan_second_seed = not config.option.collectonly and any(
        "second_seed_manifest" in getattr(item, "fixturenames", ()) for item in session.items)


def _start_second_seed(config) -> None:
    """Start building the second seed's zoo in the background, once the first seed's is ready, when a selected
    test needs it and it is not cached.

    The suite runs torch on about one core of two; a build on the other (one fine-tune at a time, each on one
    thread, so the models are those of a build on every core) is done before the last test file asks for it,
    instead of costing its six minutes in front of it. It waits for the first seed's build, which trains on both
    cores: beside it, it would only slow it down."""
    if not getattr(config, "_bdscan_second_seed", False) or hasattr(config, "_bdscan_background"):
        return
    from scanner.zoo.build import matching_zoo
    from scanner.zoo.specs import THIRD_GENERATION

    directory = _second_seed_dir()
    if matching_zoo(directory, "test", SECOND_SEED, THIRD_GENERATION, core=False) is not None:
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    log = directory.with_name(directory.name + "-build.log")
    with log.open("w", encoding="utf-8") as out:
        config._bdscan_background = (subprocess.Popen(
            [sys.executable, "-c", BACKGROUND_BUILD, str(directory), str(SECOND_SEED)], stdout=out,
            stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}), log)


def pytest_sessionfinish(session):
    background = getattr(session.config, "_bdscan_background", None)
    if background is not None and background[0].poll() is None:
        background[0].terminate()
        background[0].wait()


@pytest.fixture(scope="session")
def second_seed_manifest(pytestconfig):
    """The zoo's third generation (v12) at a second seed: the base and those models only, built once and cached
    (in the background once the first seed's zoo is ready, when the run needs it and it is not cached)."""
    from transformers.utils import logging as hf_logging

    from scanner.zoo.build import ensure_zoo
    from scanner.zoo.specs import THIRD_GENERATION

    hf_logging.disable_progress_bar()
    from helpers import LineProgress

    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        background = getattr(pytestconfig, "_bdscan_background", None)
        if background is not None:
            process, log = background
            if process.poll() is None:
                sys.stderr.write(f"test zoo, seed {SECOND_SEED}: waiting for its build in the background (log: {log})\n")
            if process.wait() != 0:
                # Built again below, in front of the tests, where its error is seen.
                sys.stderr.write(f"test zoo, seed {SECOND_SEED}: the background build failed:\n"
                                 f"{log.read_text(encoding='utf-8')[-2000:]}\n")
        return ensure_zoo(_second_seed_dir(), "test", SECOND_SEED, extras=THIRD_GENERATION, core=False,
                          progress=LineProgress(f"test zoo, seed {SECOND_SEED}"))


@pytest.fixture(scope="session")
def second_seed_dir(second_seed_manifest) -> Path:
    """Where ``second_seed_manifest``'s zoo is."""
    return _second_seed_dir()
