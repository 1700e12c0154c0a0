"""Benchmark: discovery's KL scoring with each probe's head cached against whole rows (the naive loop).

    .venv/bin/python benchmarks/prefix_cache.py [--zoo DIR] [--model NAME] [--repeats N]

Scores 64 one-token candidates on 8 search probes (512 rows through each model) at the start and at the end of
the prompt, alternating the two ways ``--repeats`` times in one process, and prints the median CPU and wall
seconds of each: on a shared 2-core machine whole discovery runs vary by 2x from one run to the next, so the
two ways are compared side by side on the same work instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from scanner.inputs.loading import load_pair  # noqa: E402
from scanner.measure.discovery import engine  # noqa: E402
from scanner.measure.discovery.engine import Budget, Search  # noqa: E402
from scanner.model.prefix_cache import PrefixCache  # noqa: E402


def main() -> None:
    from scanner.zoo.build import ZOO_VERSION

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s0")
    parser.add_argument("--model", default="clean")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prompts = [line.strip() for line in (args.zoo / "probes.txt").read_text(encoding="utf-8").splitlines() if line.strip()][:8]
    pair = load_pair(args.zoo / args.model, str(args.zoo / "base"))
    original = PrefixCache.continues
    engine.PREFIX_MIN_TOKENS = 0  # measure the cache at both positions, worth it or not
    print("| position | head tokens | tail tokens | rows | cached: CPU s | cached: wall s | whole: CPU s | whole: wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for position in ("start", "end"):
        search = Search(pair.suspect, pair.reference, pair.tokenizer, prompts, 256, Budget(10**9), position)
        search.set_answers([tuple(ids) for ids in search.complete(pair.suspect, search.clean_rows, 24)])
        rows = [row for token in range(100, 164) for row in search.rows((token,))]
        seconds: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.repeats):
            for cached in (True, False):
                PrefixCache.continues = original if cached else (lambda self, rows, owners: False)
                cpu, wall = time.process_time(), time.perf_counter()
                search.kls(rows)
                seconds[cached].append((time.process_time() - cpu, time.perf_counter() - wall))
        PrefixCache.continues = original
        cells = [f"{statistics.median(s[i] for s in seconds[cached]):.2f}" for cached in (True, False) for i in (0, 1)]
        print(f"| {position} | {statistics.mean(map(len, search.heads)):.1f} | {statistics.mean(map(len, search.tails)):.1f} "
              f"| {len(rows)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
