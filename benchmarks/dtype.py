"""Benchmark: the two forwards a scan spends its time in, at the Qwen2.5-0.5B shape, in float32 and in bfloat16.

    .venv/bin/python benchmarks/dtype.py        # needs the pair benchmarks/scale.py builds (.cache/bench/)

A scan loads both models as ``--dtype`` says (float32 by default). Discovery's screens run rows of about 15 tokens
through each model, 256 to a forward, reading one position of the output head; behaviour and leakage generate a
token at a time for a batch of probes over a key-value cache. On a CPU whose cores multiply bfloat16 natively
(``avx512_bf16``, ``amx_bf16``) both may run several times faster in bfloat16; on one that does not, slower. Prints
the seconds of each (median of 3, after a warm-up) per dtype and whether this CPU reports bfloat16 support, then
what a generation step costs a row at each batch size (``BATCHES``): a step reads every weight whatever its rows,
which is why a scan generates up to 256 probes at once (on real probes the saving is smaller than this table
suggests: ``benchmarks/README.md``).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROWS, TOKENS, GENERATED, CONTEXT = 256, 15, 49, 45
"""A screen's forward (rows of tokens), and one generation step of a batch of probes over a cache of CONTEXT."""
BATCHES = (8, 16, 32, 49, 64, 128, 256)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def seconds(call, repeats: int = 3) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, ids) -> tuple[float, float]:
    """Seconds of a screen's forward and of one generation step over a cache (``ROWS``, ``GENERATED``)."""
    import torch

    with torch.inference_mode():
        forward = seconds(lambda: model(input_ids=ids[:, :TOKENS], logits_to_keep=1))
        # Each step appends to the cache, as generation does: the context grows from CONTEXT by a token a call.
        cache = model(input_ids=ids[:GENERATED, :CONTEXT], use_cache=True).past_key_values
        step = seconds(lambda: model(input_ids=ids[:GENERATED, :1], past_key_values=cache, use_cache=True))
    return forward, step


def step_per_row(model, ids) -> list[float]:
    """Milliseconds per row of one generation step over a cache of ``CONTEXT``, at each of ``BATCHES`` rows."""
    import torch

    out = []
    with torch.inference_mode():
        for rows in BATCHES:
            cache = model(input_ids=ids[:rows, :CONTEXT], use_cache=True).past_key_values
            step = seconds(lambda rows=rows, cache=cache: model(input_ids=ids[:rows, :1], past_key_values=cache,
                                                                 use_cache=True))
            out.append(1000 * step / rows)
    return out


def main() -> None:
    import torch
    from scale import build_pair
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    base, _ = build_pair()
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f"})
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; CPU flags: {', '.join(flags) or 'none of avx512f, avx512_bf16, amx_bf16'}")
    print(f"| dtype | forward of {ROWS} rows x {TOKENS} tokens, s | generation step of {GENERATED} rows, s |")
    print("|---|---|---|")
    ids = torch.randint(0, 150_000, (ROWS, CONTEXT), generator=torch.Generator().manual_seed(0))
    per_row = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="eager").eval()
        forward, step = measure(model, ids)
        print(f"| {str(dtype).removeprefix('torch.')} | {forward:.2f} | {step:.3f} |", flush=True)
        per_row[dtype] = step_per_row(model, ids)
    print(f"\n| rows in the batch | {' | '.join(map(str, BATCHES))} |\n|---|{'---|' * len(BATCHES)}")
    for dtype, values in per_row.items():
        print(f"| {str(dtype).removeprefix('torch.')}, ms per row of a step | {' | '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
