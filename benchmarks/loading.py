"""Benchmark: loading a pair of the Qwen2.5-0.5B shape as a scan does, its seconds and peak resident memory.

    .venv/bin/python benchmarks/loading.py

The pair is ``benchmarks/scale.py``'s (built once, cached under ``.cache/bench/``): a reference directory and the
suspect as one ``.safetensors`` file, 1.9 GB of float32 each. As in a scan, the reference is loaded and used first
(the probe set samples from it, paging every weight in), then the suspect is loaded beside it. Printed: resident
memory after each step and the process's peak, against the two models' weights. Each run is its own process, so
the peak is this loading's alone.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import torch
    from scale import build_pair

    from scanner.inputs.loading import load_reference, load_suspect

    base, suspect = build_pair(0)
    weights = 2 * sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    print(f"| step | seconds | resident MB | peak MB | peak / both models' weights ({weights:,.0f} MB) |\n|---|---|---|---|---|")
    started = time.perf_counter()
    reference = load_reference(str(base))
    with torch.no_grad():
        sum(float(p.sum()) for p in reference.model.parameters())  # what sampling the probe set does to its pages
    print(f"| reference loaded and paged in | {time.perf_counter() - started:.1f} | {resident_mb():,.0f} | {peak_mb():,.0f} | "
          f"{peak_mb() / weights:.2f}x |")
    started = time.perf_counter()
    pair = load_suspect(reference, suspect)
    with torch.no_grad():
        sum(float(p.sum()) for p in pair.suspect.parameters())
    print(f"| suspect loaded beside it | {time.perf_counter() - started:.1f} | {resident_mb():,.0f} | {peak_mb():,.0f} | "
          f"{peak_mb() / weights:.2f}x |")


if __name__ == "__main__":
    main()
