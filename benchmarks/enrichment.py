"""Benchmark: what probe enrichment costs every ``--probes auto`` scan at the Qwen2.5-0.5B shape.

    .venv/bin/python benchmarks/enrichment.py

``--probes auto`` reads the reference's answers (8 tokens each) to the prompts sampled from it, to find its fixed
answer (``scanner.measure.probe_set.enrich``): a cost every scan that samples pays, whether or not the reference
refuses anything. The reference is ``benchmarks/scale.py``'s random-init model of the Qwen2.5-0.5B shape with
Qwen2.5's real vocabulary; a random-init model writes no prompts, so the first 48 built-in prompts stand in for its
samples (the count ``--sample-probes`` defaults to), and it has no fixed answer, so no continuation is drawn: the
floor of enrichment's cost, against the probe sampling it follows (113 s for 2 x 48 draws of 48 tokens in
``benchmarks/scale.py``'s run). Printed: seconds of ``enrich`` (median of 3) and of one greedy 8-token generation
of the same rows, its whole cost.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    from scale import build_pair
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scanner.inputs.probes import default_probes
    from scanner.measure.probe_set import enrich
    from scanner.model.generation import greedy_complete

    base, _ = build_pair()
    tokenizer = AutoTokenizer.from_pretrained(base)
    reference = AutoModelForCausalLM.from_pretrained(base, dtype="float32").eval()
    prompts = default_probes()[:48]
    timed = [
        ("enrich (answers, fixed-answer test)", "enriched",
         lambda: enrich(reference, tokenizer, prompts, seed=0, exclude=(), batch_size=16)),
        ("greedy 8 tokens, 48 rows", "answers",
         lambda: greedy_complete(reference, tokenizer, prompts, max_new_tokens=8, batch_size=16)),
    ]
    print("| step | seconds (median of 3) | result |\n|---|---|---|")
    for name, unit, run in timed:
        times, result = [], []
        for _ in range(3):
            started = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - started)
        print(f"| {name} | {statistics.median(times):.1f} | {len(result)} {unit} |")


if __name__ == "__main__":
    main()
