"""Seconds per scan stage on the zoo's pairs, and what the cost model predicts for a larger model.

    .venv/bin/python benchmarks/run.py                        # the test zoo's emoji pair and the demo pair, if built
    .venv/bin/python benchmarks/run.py --zoo .cache/zoo-demo  # one zoo

Each pair is scanned twice as a user would scan it: the default scan (catalogue triggers, discovery) and a scan
with the trigger given (no discovery). The stage timings come from the findings (``run.timings``), so this measures
exactly what a scan records; peak MB is the process's maximum resident set so far.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("load", "weight_diff", "discovery", "behaviour_screen", "behaviour", "attention", "attribution", "ablation",
          "patching")


def _stage(name: str) -> str:
    return name.split("[")[0]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _zoos(given: list[Path]) -> list[Path]:
    if given:
        return given
    from scanner.zoo.build import ZOO_VERSION

    candidates = [ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s0", ROOT / ".cache" / "zoo-demo"]
    return [zoo for zoo in candidates if (zoo / "zoo.json").is_file()]


def measure(zoo: Path) -> list[dict]:
    from scanner.api import ScanOptions, scan
    from scanner.zoo.specs import EMOJI_TRIGGER

    rows = []
    for label, options in (("default (catalogue + discovery)", ScanOptions()),
                           ("known trigger", ScanOptions(triggers=(EMOJI_TRIGGER,)))):
        started = time.perf_counter()
        findings = scan(zoo / "emoji", str(zoo / "base"), options)
        total = time.perf_counter() - started
        per_stage: dict[str, float] = {}
        for name, seconds in findings.run.timings.items():
            per_stage[_stage(name)] = per_stage.get(_stage(name), 0.0) + seconds
        config = json.loads((zoo / "base" / "config.json").read_text(encoding="utf-8"))
        rows.append({"zoo": zoo.name, "scan": label, "total": total, "stages": per_stage, "peak_mb": peak_mb(),
                     "triggers": len(findings.triggers), "probes": len(findings.probes.used),
                     "shape": f"h{config['hidden_size']} L{config['num_hidden_layers']} H{config['num_attention_heads']} "
                              f"V{config['vocab_size']}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, action="append", default=[], help="a built zoo (repeatable)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    zoos = _zoos(args.zoo)
    if not zoos:
        raise SystemExit("no zoo built: run make test (the test zoo) or make demo (the demo zoo) first")
    print(f"# {platform.machine()}, python {platform.python_version()}, "
          + ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "pyvene")))
    print("| zoo | pair shape | scan | triggers x probes | " + " | ".join(STAGES) + " | other | total s | peak MB |")
    print("|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|")
    for zoo in zoos:
        for row in measure(zoo):
            cells = " | ".join(f"{row['stages'].get(stage, 0.0):.1f}" for stage in STAGES)
            # Outside the timed stages: the clean completions, probe preparation, findings assembly.
            cells += f" | {row['total'] - sum(row['stages'].get(stage, 0.0) for stage in STAGES):.1f}"
            print(f"| {row['zoo']} | {row['shape']} | {row['scan']} | {row['triggers']} x {row['probes']} | {cells} | "
                  f"{row['total']:.1f} | {row['peak_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
