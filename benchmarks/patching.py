"""Head patching and mean ablation as the scan runs them, against a naive loop of full forwards.

    .venv/bin/python benchmarks/patching.py                 # the Qwen2.5-0.5B shape, Qwen2.5's vocabulary size
    .venv/bin/python benchmarks/patching.py --shape small   # hidden 128, 4 layers: a minute
    .venv/bin/python benchmarks/patching.py --kind ablation # heads of every fourth layer, as mean ablation runs

A random-init Qwen2 pair (the suspect is the reference with every weight nudged) of the chosen shape, with
Qwen2.5's 151,936-row output head; ``--probes`` rows of ``--prompt`` random tokens followed by a ``--target``-token
target. Each path runs in its own process, so that its peak resident memory is its own:

- *target*: the scan's path: ``TargetBatch.inputs()`` asks the model for logits at the last ``target + 1``
  positions only (``logits_to_keep``), configurations batched ``--rows`` rows per forward, each forward
  starting at the first layer its configurations patch, from the clean residual there (``ResidualCache``);
- *full*: the naive path: one forward per configuration, logits at every position, the target's gathered after.

Both evaluate the same head configurations (ranked prefixes of a random order, as the ranked patching loop does,
and single heads, as mean ablation does) and must agree within float tolerance; the script prints seconds, forwards
and peak MB for each, the ratio, and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512, head_dim=32),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                 head_dim=64),
}
QWEN_VOCAB_SIZE = 151_936


def _pair(shape: str, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, max_position_embeddings=512, tie_word_embeddings=shape == "0.5b",
                         attn_implementation="eager", **SHAPES[shape])
    reference = Qwen2ForCausalLM(config).eval()
    suspect = Qwen2ForCausalLM(config).eval()
    suspect.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for parameter in suspect.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter) * parameter.std())
    return reference, suspect


def _run(path: str, args: argparse.Namespace) -> dict:
    import torch

    from scanner.measure.head_patching import reference_source
    from scanner.model.forward import encode_ids
    from scanner.model.patching import HeadPatcher, PatchSource, masks_for
    from scanner.model.sites import sites_for
    from scanner.model.teacher_forcing import TargetBatch, at_target, target_kl

    torch.set_num_threads(args.threads)
    reference, suspect = _pair(args.shape, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    rows = torch.randint(0, 151_643, (args.probes, args.prompt + args.target), generator=generator).tolist()
    # Each row ends with its own random "target": the KL read here needs only the positions, which are shared.
    targets = TargetBatch(encode_ids(rows, 151_643, torch.device("cpu")), torch.tensor(rows[0][-args.target:]))
    source, reference_logits = reference_source(reference, sites_for(reference), sites_for(suspect), targets)
    patcher = HeadPatcher(suspect, sites_for(suspect))
    layers, heads = patcher.layers, patcher.heads
    order = [(int(i) // heads, int(i) % heads) for i in torch.randperm(layers * heads, generator=generator)]
    per_forward = max(1, args.rows // args.probes)
    if args.kind == "ablation":
        # As mean ablation takes every head: a forward's worth of heads of one layer at a time, in layer order;
        # every fourth layer, so that the naive loop's one forward per head stays affordable.
        configurations = [[(layer, head)] for layer in range(0, layers, 4) for head in range(min(heads, per_forward))]
    else:
        configurations = [order[:k] for k in range(1, args.configurations // 2 + 1)]
        # Single heads in layer order, as mean ablation takes them.
        configurations += [[head] for head in sorted(order[:args.configurations - len(configurations)])]
    start, forwards, results = time.perf_counter(), 0, []
    if path == "target":
        residual = patcher.residual(targets.inputs())
        for chunk in (configurations[at:at + per_forward] for at in range(0, len(configurations), per_forward)):
            batched = PatchSource(tuple(v.repeat(len(chunk), 1, 1) for v in source.values), source.o_proj_delta)
            with patcher.patched(batched, masks_for(chunk, layers, heads, args.probes), residual) as run:
                out = at_target(run(targets.repeat(len(chunk)).inputs()))
            kl = target_kl(out, reference_logits).view(len(chunk), args.probes).mean(-1)
            results += kl.tolist()
            forwards += 1
    else:
        for configuration in configurations:
            with patcher.patched(source, masks_for([configuration], layers, heads, args.probes)) as run:
                full = run(targets.batch.model_inputs())  # [probes, seq, vocab]
            out = full[:, -targets.keep:-1]
            results.append(float(target_kl(out, reference_logits).mean()))
            forwards += 1
    seconds = time.perf_counter() - start
    return {"path": path, "seconds": seconds, "forwards": forwards, "configurations": len(configurations),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "kl": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens per probe")
    parser.add_argument("--target", type=int, default=6, help="target tokens")
    parser.add_argument("--configurations", type=int, default=8)
    parser.add_argument("--kind", choices=("mixed", "ablation"), default="mixed",
                        help="mixed: half ranked prefixes of a random head order (patching), half single heads; "
                             "ablation: a forward's worth of heads of every fourth layer, in layer order")
    parser.add_argument("--rows", type=int, default=64, help="rows per batched forward on the target path")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("target", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(_run(args.only, args)))
        return
    import torch
    import transformers

    print(f"# {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; shape {args.shape} {SHAPES[args.shape]}, vocabulary {QWEN_VOCAB_SIZE:,}; "
          f"{args.probes} probes x ({args.prompt} + {args.target}) tokens, {args.kind} configurations "
          f"({args.configurations if args.kind == 'mixed' else 'every fourth layer'}), seed {args.seed}")
    measured = {}
    for path in ("target", "full"):
        command = [sys.executable, __file__, *sys.argv[1:], "--only", path]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        if done.returncode != 0:
            raise SystemExit(f"the {path} path failed:\n{done.stderr}")
        measured[path] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| path | forwards | seconds | peak MB (both models included) |")
    print("|---|---|---|---|")
    for path, m in measured.items():
        print(f"| {path} | {m['forwards']} | {m['seconds']:.1f} | {m['peak_mb']:,.0f} |")
    difference = max(abs(a - b) for a, b in zip(measured["target"]["kl"], measured["full"]["kl"]))
    print(f"\nfull / target: {measured['full']['seconds'] / measured['target']['seconds']:.2f}x the seconds, "
          f"{measured['full']['peak_mb'] / measured['target']['peak_mb']:.2f}x the peak memory; "
          f"largest KL difference {difference:.2e}")
    if difference > 1e-3:
        raise SystemExit("the two paths disagree")


if __name__ == "__main__":
    main()
