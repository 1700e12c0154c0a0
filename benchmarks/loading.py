"""Benchmark: loading a pair of the Qwen2.5-0.5B shape as a scan does, its seconds and peak resident memory.

    .venv/bin/python benchmarks/loading.py
    .venv/bin/python benchmarks/loading.py --max-memory 1GB    # both models' weights beyond 1 GB offloaded to disk

The pair is ``benchmarks/scale.py``'s (built once, cached under ``.cache/bench/``): a reference directory and the
suspect as one ``.safetensors`` file, 1.9 GB of float32 each. As in a scan, the reference is loaded and used first
(the probe set samples from it, paging every weight in: here one forward), then the suspect is loaded beside it and
runs one forward. Printed: resident memory after each step and the process's peak, against the two models' weights
and, with ``--max-memory``, the weights the cap keeps resident. Each run is its own process, so the peak is this
loading's alone.
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
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-memory", default=None, metavar="SIZE", help="as bdscan's --max-memory (e.g. 1GB)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import torch
    from scale import build_pair

    from scanner.inputs.loading import load_reference, load_suspect
    from scanner.inputs.offload import resident_bytes
    from scanner.options import parse_size

    base, suspect = build_pair(0)
    cap = None if args.max_memory is None else parse_size(args.max_memory)
    weights = 2 * sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    print(f"| step | seconds | resident MB | peak MB | peak / both models' weights ({weights:,.0f} MB) |\n|---|---|---|---|---|")
    ids = torch.arange(1000, 1032)[None]

    def run(model) -> None:  # what sampling the probe set and the first measurements do to the weights' pages
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1)

    started = time.perf_counter()
    reference = load_reference(str(base), max_memory=cap)
    run(reference.model)
    print(f"| reference loaded, one forward | {time.perf_counter() - started:.1f} | {resident_mb():,.0f} | {peak_mb():,.0f} | "
          f"{peak_mb() / weights:.2f}x |")
    started = time.perf_counter()
    pair = load_suspect(reference, suspect)
    run(pair.suspect)
    run(pair.reference)
    print(f"| suspect loaded beside it, a forward of each | {time.perf_counter() - started:.1f} | {resident_mb():,.0f} | "
          f"{peak_mb():,.0f} | {peak_mb() / weights:.2f}x |")
    if cap is not None:
        kept = (resident_bytes(pair.reference) + resident_bytes(pair.suspect)) / 2**20
        print(f"\n--max-memory {args.max_memory}: {kept:,.0f} MB of weights resident (cap {cap / 2**20:,.0f} MB); "
              f"peak {peak_mb():,.0f} MB is {peak_mb() / (cap / 2**20):.2f}x the cap")


if __name__ == "__main__":
    main()
