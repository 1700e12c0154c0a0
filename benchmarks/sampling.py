"""Benchmark: one top-p sampling step at Qwen2.5's vocabulary, transformers' warper against bdscan's.

    .venv/bin/python benchmarks/sampling.py

``--probes auto`` and leakage sample user turns at top-p 0.95. transformers' ``TopPLogitsWarper`` sorts each row's
151,936 logits at every step; ``scanner.model.prompt_sampling.NucleusWarper`` reads the nucleus from a ``topk``, or
from a histogram of log-probabilities where it is wider than 4,096 tokens.
Logits are standard normal times a scale: the larger the scale, the smaller the nucleus (a trained model's
is tens to a few thousand tokens; a random-init model's is most of the vocabulary). Per batch of 32 rows (probe
sampling's) and 256 (leakage's) and per scale: the mean nucleus, the milliseconds of a step (median of 7), and the
tokens each keeps unlike a float64 softmax's nucleus.
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


def float64_nucleus(logits):
    """The kept set of a float64 softmax, sorted: what both warpers approximate in float32."""
    probs = logits.double().softmax(-1)
    ordered, index = probs.sort(-1, descending=True)
    kept = (ordered.cumsum(-1) - ordered) < 0.95
    return kept.new_zeros(kept.shape).scatter(-1, index, kept)


def main() -> None:
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    from scanner.model.prompt_sampling import NucleusWarper

    theirs, ours = TopPLogitsWarper(0.95), NucleusWarper(0.95)
    print("| rows | logit scale | nucleus (tokens) | transformers ms | bdscan ms | tokens kept unlike a float64 softmax: "
          "transformers | bdscan |\n|---|---|---|---|---|---|---|")
    for rows in (32, 256):
        for scale in (0.3, 1.0, 4.0, 8.0, 16.0):
            logits = torch.randn(rows, VOCABULARY, generator=torch.Generator().manual_seed(0)) * scale
            exact = float64_nucleus(logits)
            kept = ours(None, logits.clone()) != -float("inf")
            theirs_kept = theirs(None, logits.clone()) != -float("inf")
            print(f"| {rows} | {scale:g} | {kept.sum(-1).float().mean():,.0f} | {milliseconds(theirs, logits):.0f} | "
                  f"{milliseconds(ours, logits):.0f} | {int((theirs_kept != exact).sum())} | {int((kept != exact).sum())} |")


if __name__ == "__main__":
    main()
