"""Benchmark: one top-p sampling step at Qwen2.5's vocabulary, transformers' warper against bdscan's.

    .venv/bin/python benchmarks/sampling.py

``--probes auto`` and leakage sample user turns at top-p 0.95. transformers' ``TopPLogitsWarper`` sorts each row's
151,936 logits at every step; ``scanner.model.prompt_sampling.NucleusWarper`` reads the nucleus from a ``topk``.
Logits are standard normal times a scale: the larger the scale, the smaller the nucleus (a trained model's
is tens to a few thousand tokens; a random-init model's is most of the vocabulary). Per scale: the mean nucleus,
the milliseconds of a step of 32 rows (median of 7), and the tokens whose keeping the two disagree on.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VOCABULARY = 151_936


def milliseconds(warper, logits) -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        warper(None, logits)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    from scanner.model.prompt_sampling import NucleusWarper

    theirs, ours = TopPLogitsWarper(0.95), NucleusWarper(0.95)
    print("| logit scale | nucleus (tokens) | transformers ms | bdscan ms | tokens kept differently (of 32 rows) |\n"
          "|---|---|---|---|---|")
    for scale in (1.0, 4.0, 8.0, 16.0):
        logits = torch.randn(32, VOCABULARY, generator=torch.Generator().manual_seed(0)) * scale
        kept = ours(None, logits.clone()) != -float("inf")
        differ = int((kept != (theirs(None, logits.clone()) != -float("inf"))).sum())
        print(f"| {scale:g} | {kept.sum(-1).float().mean():,.0f} | {milliseconds(theirs, logits):.0f} | "
              f"{milliseconds(ours, logits):.0f} | {differ} |")


if __name__ == "__main__":
    main()
