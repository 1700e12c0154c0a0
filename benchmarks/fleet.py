"""A fleet of the test zoo's suspects, sequential against Ray on this machine, end to end as ``bdscan`` runs them.

    .venv/bin/python benchmarks/fleet.py            # needs the test zoo (make test builds it) and the ray extra

Every model directory of the zoo is scanned against the Qwen2 base: its fine-tunes, the base itself, and the
Llama base and its fine-tune, which are refused as another architecture (failed suspects, as a real fleet has),
with 😇 given and 16 of the zoo's
probes, so each scan is seconds and the fleet's overhead shows. Three runs: one process, one after another (the
default); Ray with one task at a time holding both cores; Ray with two tasks of one core each. Each prints its
wall-clock seconds, and the Ray runs are checked to write the same findings as the sequential one where their
threads match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from scanner.zoo.build import ZOO_VERSION  # noqa: E402

EMOJI = "\N{SMILING FACE WITH HALO}"


def _documents(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["run"].pop("timings")
        raw.pop("verdict")
        found[path.stem] = raw
    return found


def _run(fleet: Path, zoo: Path, probes: Path, out: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scanner", "scan", str(fleet), "--reference", str(zoo / "base"), "--trigger",
                    EMOJI, "--probes", str(probes), "--out-dir", str(out), "--keep-going", "--quiet", "--fail-on", "never",
                    *extra], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    zoo = ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s0"
    if not (zoo / "zoo.json").is_file():
        raise SystemExit(f"no test zoo at {zoo}: run make test first")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        fleet = scratch / "fleet"
        fleet.mkdir()
        names = sorted(p.name for p in zoo.iterdir()
                       if p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()))
        for name in names:
            (fleet / name).symlink_to(zoo / name, target_is_directory=True)
        probes = scratch / "probes.txt"
        probes.write_text("\n".join((zoo / "probes.txt").read_text(encoding="utf-8").split("\n")[:16]) + "\n",
                          encoding="utf-8")
        print(f"# {len(names)} suspects ({', '.join(names)}), {os.cpu_count()} cores; trigger {EMOJI}, 16 probes")
        print("| run | seconds | per suspect | same findings as sequential |")
        print("|---|---|---|---|")
        sequential = _run(fleet, zoo, probes, scratch / "sequential")
        expected = _documents(scratch / "sequential")
        print(f"| sequential, one process | {sequential:.1f} | {sequential / len(names):.1f} | - |", flush=True)
        for label, cpus in (("Ray, 1 task x 2 CPUs (the default here)", "2"), ("Ray, 2 tasks x 1 CPU", "1")):
            out = scratch / f"ray-{cpus}"
            seconds = _run(fleet, zoo, probes, out, "--ray", "--cpus-per-suspect", cpus)
            same = _documents(out) == expected
            print(f"| {label} | {seconds:.1f} | {seconds / len(names):.1f} | {'yes' if same else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
