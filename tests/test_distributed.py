"""Fleets beyond one process: on a Ray cluster (started by the test, or by ``ray start --head`` and joined by its
address), and resumed after an interruption. The findings must be those of the sequential fleet, timings apart."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.findings import SCHEMA_VERSION

from helpers import invoke, probe_lines

EMOJI = "\N{SMILING FACE WITH HALO}"
SUSPECTS = ("emoji", "clean", "deployment")


def _fleet(zoo_dir: Path, tmp_path: Path) -> tuple[list[Path], Path]:
    """Three zoo suspects and a corrupt one, side by side in a directory, and 12 probes."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in SUSPECTS:
        (fleet / name).symlink_to(zoo_dir / name, target_is_directory=True)
    (fleet / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(probe_lines(zoo_dir, 12)) + "\n", encoding="utf-8")
    return [fleet], probes


def _documents(out: Path) -> dict[str, dict]:
    """Every findings document in ``out``, with what differs between two runs of the same scan removed: the
    seconds each stage took and the verdict (judged again on reading anyway)."""
    documents = {}
    for path in sorted(out.glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["run"].pop("timings")
        raw.pop("verdict")
        documents[path.stem] = raw
    return documents


def _scan(zoo_dir: Path, given: list[Path], probes: Path, out: Path, *extra: str):
    return invoke(*given, "--reference", zoo_dir / "base", "--trigger", EMOJI, "--probes", probes, "--out-dir", out,
                  "--keep-going", "--quiet", *extra)


@pytest.fixture(scope="module")
def sequential(zoo_dir, tmp_path_factory):
    """The fleet scanned one suspect after another, in this process: what Ray must reproduce."""
    tmp_path = tmp_path_factory.mktemp("sequential")
    given, probes = _fleet(zoo_dir, tmp_path)
    result = _scan(zoo_dir, given, probes, tmp_path / "out")
    return given, probes, result, _documents(tmp_path / "out"), tmp_path / "out"


def test_a_fleet_on_a_ray_cluster_started_here_matches_the_sequential_one(zoo_dir, tmp_path, sequential):
    ray = pytest.importorskip("ray")
    given, probes, expected, documents, _ = sequential
    assert expected.exit_code == 1, expected.output  # the emoji and deployment models are backdoored
    assert set(documents) == set(SUSPECTS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    try:
        # By default a task reserves as many CPUs as torch runs threads here (2), so the floats are the same.
        result = _scan(zoo_dir, given, probes, tmp_path / "out", "--ray")
    finally:
        ray.shutdown()
    assert result.exit_code == expected.exit_code, result.output
    assert _documents(tmp_path / "out") == documents
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "corrupt.safetensors" in index and "NOT SCANNED" in index


def test_a_fleet_joins_a_ray_cluster_by_its_address(zoo_dir, tmp_path, sequential):
    pytest.importorskip("ray")
    given, probes, expected, documents, _ = sequential
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_cli, "the ray extra installs the ray command beside python"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard",
                              "false", "--object-store-memory", str(128 * 2**20), "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        result = _scan(zoo_dir, given, probes, tmp_path / "out", "--ray", f"127.0.0.1:{port}", "--cpus-per-suspect", "2")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
    assert result.exit_code == expected.exit_code, result.output
    assert _documents(tmp_path / "out") == documents


def test_an_interrupted_fleet_resumes_where_it_stopped(zoo_dir, tmp_path, sequential, monkeypatch):
    """Ctrl-C during the third suspect (by name: clean, corrupt, deployment, emoji): what was scanned keeps its
    files, the index names what was not reached, and ``--resume`` then scans only what has no findings yet, to the
    same documents as an uninterrupted run."""
    import scanner.api.fleet

    given, probes, _, documents, _ = sequential
    real, calls = scanner.api.fleet.scan_against, []

    def interrupted_at_third(context, suspect, options, progress):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(Path(suspect).name)
        return real(context, suspect, options, progress)

    monkeypatch.setattr(scanner.api.fleet, "scan_against", interrupted_at_third)
    out = tmp_path / "out"
    first = _scan(zoo_dir, given, probes, out)
    assert first.exit_code == 130, first.output
    assert calls == ["clean", "corrupt.safetensors"]
    assert [path.stem for path in out.glob("*.json")] == ["clean"]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.count("not reached: the run was interrupted") == 2  # deployment and emoji

    def counted(context, suspect, options, progress):
        calls.append(Path(suspect).name)
        return real(context, suspect, options, progress)

    monkeypatch.setattr(scanner.api.fleet, "scan_against", counted)
    del calls[:]
    resumed = _scan(zoo_dir, given, probes, out, "--resume")
    assert resumed.exit_code == 1, resumed.output
    assert calls == ["corrupt.safetensors", "deployment", "emoji"]  # clean's findings stand; the failed one is tried again
    assert _documents(out) == documents
    # A document an older schema wrote is read through a migration, but scanned again: it lacks what this one records.
    stale = out / "clean.json"
    raw = json.loads(stale.read_text(encoding="utf-8"))
    raw["schema_version"] = SCHEMA_VERSION - 1
    stale.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    del calls[:]
    again = _scan(zoo_dir, given, probes, out, "--resume")
    assert again.exit_code == 1 and calls == ["clean", "corrupt.safetensors"], calls
    # Other options make another scan: nothing is resumed.
    del calls[:]
    other = _scan(zoo_dir, given, probes, out, "--resume", "--max-new-tokens", "8")
    assert other.exit_code == 1 and len(calls) == 4


def test_ray_without_its_extra_or_without_a_fleet_is_refused_in_one_line(zoo_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = invoke(zoo_dir / "emoji", zoo_dir / "clean", "--reference", zoo_dir / "base", "--out-dir", tmp_path / "out",
                    "--ray")
    assert result.exit_code == 2 and "pip install 'bdscan[ray]'" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    alone = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--resume")
    assert alone.exit_code == 2 and "--resume is for a fleet" in alone.stderr, alone.output
    sized = invoke(zoo_dir / "emoji", zoo_dir / "clean", "--reference", zoo_dir / "base", "--out-dir", tmp_path / "out",
                   "--gpus-per-suspect", "1")
    assert sized.exit_code == 2 and "give --ray too" in sized.stderr, sized.output
    # --ray takes an optional address, so a directory right after it is read as one: said, not tried for minutes.
    swallowed = invoke("scan", "--ray", zoo_dir, "--reference", zoo_dir / "base", "--out-dir", tmp_path / "out")
    assert swallowed.exit_code == 2 and "that is a path" in swallowed.stderr, swallowed.output


def test_an_address_nothing_answers_at_is_refused_before_any_model_loads(zoo_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import scanner.api.distributed

    monkeypatch.setattr(scanner.api.distributed, "_probe_set", lambda *a: pytest.fail("the reference was loaded"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = invoke(zoo_dir / "emoji", zoo_dir / "clean", "--reference", zoo_dir / "base", "--out-dir", tmp_path / "out",
                    "--ray", f"127.0.0.1:{port}", "--quiet")
    assert result.exit_code == 2 and "no Ray cluster answers there" in result.stderr, result.output


def test_a_worker_that_dies_twice_is_that_suspects_failure_and_the_fleet_goes_on(tmp_path):
    """A worker killed mid-scan (out of memory, a node lost) is retried once by Ray; when the retry dies too, the
    suspect is recorded with a typed ``WorkerError`` in the one wording every failure has, and the others stand."""
    ray = pytest.importorskip("ray")
    import os

    from scanner.api.distributed import _collect
    from scanner.cli.app import describe
    from scanner.errors import WorkerError

    attempts = tmp_path / "attempts"

    def dies(path: str):
        with open(path, "a", encoding="utf-8") as log:
            log.write("attempt\n")
        os._exit(1)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    try:
        result = _collect(ray, ray.remote(dies).options(max_retries=1).remote(str(attempts)), Path("suspect"))
    finally:
        ray.shutdown()
    assert attempts.read_text(encoding="utf-8").count("attempt") == 2  # the first try and Ray's one retry
    assert result.findings is None and isinstance(result.error, WorkerError)
    assert describe(result.error).startswith("worker died: suspect suspect: its Ray worker died twice")
