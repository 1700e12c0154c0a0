"""``scan(suspect, reference, options) -> Findings``: the library entry point.

Stages run in order. A stage that fails in a way a measurement can fail (it
raises ``MeasurementError``, or runs out of memory) is recorded in
``Findings.stages`` with its error, and the scan goes on where later stages do
not depend on it. Anything else is a bug and propagates: a crash must never
be reported as a finding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from scanner import __version__
from scanner.errors import InputError, MeasurementError
from scanner.findings import SCHEMA_VERSION, Findings, ProbeSetFindings, RunInfo, StageRecord, TokenizerInfo, TriggerFindings
from scanner.inputs.loading import OUT_OF_MEMORY, LoadedPair, LoadedReference, architecture, load_reference, load_suspect
from scanner.inputs.probes import KNOWN_TRIGGERS, default_probes
from scanner.inputs.rendering import TriggerProbes, prepare
from scanner.inputs.tokenizer import faithful_tokenizer
from scanner.measure.ablation import ablation_runs, clean_head_means, measure_ablation
from scanner.measure.attention import measure_attention
from scanner.measure.attribution import measure_attribution
from scanner.measure.attribution_patching import estimate_patching
from scanner.measure.behaviour import BehaviourResult, measure_behaviour, measure_clean, ordinary_logprob, strongest_position
from scanner.measure.discovery import discover
from scanner.measure.head_patching import measure_patching, reference_source
from scanner.measure.probe_set import build_probe_set
from scanner.measure.weights import measure_weight_diff
from scanner.model.forward import pad_id
from scanner.model.patching import HeadPatcher
from scanner.model.sites import sites_for
from scanner.model.teacher_forcing import target_batch
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress

MIN_THRESHOLD = 0.05


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "peft", "pyvene", "safetensors", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class _Stages:
    """Times stages and records their outcome; errors become records, not crashes."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self.timings: dict[str, float] = {}

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except (MeasurementError, *OUT_OF_MEMORY) as error:
            self.records.append(StageRecord(name, "error", f"{type(error).__name__}: {error}"))
        else:
            self.records.append(StageRecord(name, "ok"))
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 3)

    def skip(self, name: str, reason: str) -> None:
        self.records.append(StageRecord(name, "skipped", reason))


class _StepProgress:
    """Turns ``on_step(stage, done, total)`` callbacks into one progress task per stage (a new task whenever
    the stage changes or its count starts over)."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress, self.prefix = progress, prefix
        self.stage, self.task, self.done = "", None, 0

    def __enter__(self) -> _StepProgress:
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.task is None or stage != self.stage or done < self.done:
            self.__exit__()
            self.stage, self.task, self.done = stage, self.progress.start(f"{self.prefix}: {stage}", total), 0
        self.progress.advance(self.task, done - self.done)
        self.done = done

    def __exit__(self, *_: object) -> None:
        if self.task is not None:
            self.progress.finish(self.task)
            self.task = None


@dataclass(frozen=True)
class ReferenceContext:
    """What a scan needs of the reference, made once and shared by every suspect scanned against it: the loaded
    model, the tokenizer checked against the checkpoint's own file, and the probes in its domain."""

    reference: LoadedReference
    tokenizer: PreTrainedTokenizerBase
    tokenizer_info: TokenizerInfo
    probe_set: ProbeSetFindings
    seconds: float
    """Loading the reference and building the probe set."""


def prepare_reference(reference: str, options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS) -> ReferenceContext:
    """Load ``reference`` and choose the probes (``options.probe_source``); ``BdscanError`` for what cannot be scanned."""
    started = time.perf_counter()
    task = progress.start("loading the reference", 1)
    loaded = load_reference(reference, dtype=options.dtype, device=options.device, allow_download=options.allow_download,
                            quantisation=options.quantisation)
    progress.finish(task)
    triggers = list(options.triggers) or list(KNOWN_TRIGGERS)
    # The tokenizer is checked on the prompts known before sampling; sampled ones are decoded by it.
    known_prompts = list(options.probes) or default_probes()
    prepared = {t: prepare(loaded.tokenizer, known_prompts, t, options.positions[0], options.seed) for t in triggers}
    tokenizer_file = loaded.directory / "tokenizer.json"
    tokenizer, tokenizer_info = faithful_tokenizer(loaded.tokenizer, tokenizer_file if tokenizer_file.is_file() else None,
                                                   prepared.values())
    probe_set = build_probe_set(
        loaded.model, tokenizer, mode=options.probe_source, given=options.probes, builtin=default_probes(),
        sample_count=options.sample_probes, seed=options.seed, exclude=triggers, batch_size=options.batch_size,
        progress=progress,
    )
    if not probe_set.used:
        raise InputError("no probe is left to scan with: the reference produced no usable prompts and no built-in "
                         "probe lies in its domain; give --probes from the model's domain")
    return ReferenceContext(loaded, tokenizer, tokenizer_info, probe_set, round(time.perf_counter() - started, 3))


def scan(suspect: Path | str, reference: str, options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS) -> Findings:
    """Compare ``suspect`` with ``reference`` and measure everything bdscan knows to measure.

    Raises a ``scanner.errors.BdscanError`` for inputs that cannot be scanned.
    """
    return scan_against(prepare_reference(reference, options, progress), suspect, options, progress)


def scan_against(context: ReferenceContext, suspect: Path | str, options: ScanOptions = ScanOptions(),
                 progress: Progress = NO_PROGRESS) -> Findings:
    """``scan`` with the reference already prepared: a fleet loads and samples the reference once."""
    torch.manual_seed(options.seed)
    stages = _Stages()
    task = progress.start("loading the suspect", 1)
    started = time.perf_counter()
    pair = load_suspect(context.reference, suspect, allow_pickle=options.allow_pickle).with_tokenizer(context.tokenizer)
    stages.timings["load"] = round(time.perf_counter() - started + context.seconds, 3)
    progress.finish(task)
    triggers = list(options.triggers) or list(KNOWN_TRIGGERS)
    with stages.run("weight_diff"):
        weight_diff = measure_weight_diff(sites_for(pair.suspect), sites_for(pair.reference))
    probe_set, tokenizer_info = context.probe_set, context.tokenizer_info
    prompts = list(probe_set.used)
    discovery = None
    triggers_from = "user" if options.triggers else "catalogue"
    if options.runs_discovery:
        with stages.run("discovery"), _StepProgress(progress, "discovery") as step:
            discovery = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=options.seed,
                                 positions=tuple(p for p in ("start", "end") if p in options.positions) or ("start", "end"),
                                 budget=options.discovery_budget, rows_per_forward=options.rows_per_forward, on_step=step)
        found = [c.text for c in discovery.to_confirm if c.text not in triggers] if discovery else []
        if found:
            triggers += found[: options.discovered_triggers]
            triggers_from += "+discovery"
    positions = options.positions
    placed = {(t, where): prepare(pair.tokenizer, prompts, t, where, options.seed) for t in triggers for where in positions}
    vocabulary = pair.reference.get_input_embeddings().num_embeddings
    for (trigger, _), probes in placed.items():
        if not all(p.trigger_positions for p in probes.triggered):
            raise InputError(f"trigger {trigger!r} tokenizes to no tokens in a probe; give a trigger with visible text")
        largest = max(max(p.ids) for p in (*probes.clean, *probes.triggered))
        if largest >= vocabulary:
            raise InputError(
                f"the reference's tokenizer produces token id {largest} but the model has {vocabulary} embeddings; "
                "the tokenizer files do not belong to this checkpoint"
            )
    task = progress.start("behaviour: completions and output KL", (len(triggers) * len(positions) + 1) * len(prompts) * 2)
    # Clean completions do not depend on the trigger: measured once, shared by every trigger and position.
    clean = measure_clean(pair.suspect, pair.reference, pair.tokenizer, next(iter(placed.values())).clean,
                          max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                          on_batch=lambda n: progress.advance(task, n))
    at_positions: dict[str, dict[str, BehaviourResult]] = {}
    for trigger in triggers:
        with stages.run(f"behaviour[{trigger}]"):
            at_positions[trigger] = {where: measure_behaviour(
                pair.suspect, pair.reference, pair.tokenizer, placed[(trigger, where)], clean.findings,
                max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                on_batch=lambda n: progress.advance(task, n),
            ) for where in positions}
    progress.finish(task)

    measured = [t for t in triggers if t in at_positions]
    where_strongest = {t: strongest_position(at_positions[t]) for t in measured}
    behaviours = {t: at_positions[t][where_strongest[t]] for t in measured}
    prepared = {t: placed[(t, where_strongest[t])] for t in measured}
    ranked = sorted(measured, key=lambda t: -behaviours[t].kl_ratio)
    localised = ranked if options.triggers else ranked[: options.localise_top]
    results = []
    patcher = None
    for trigger in measured:
        deep = {}
        if trigger in localised:
            patcher = patcher or HeadPatcher(pair.suspect, sites_for(pair.suspect))
            deep = _localise(pair, patcher, prepared[trigger], behaviours[trigger], options, stages, progress)
        else:
            for name in ("attention", "attribution", "ablation", "patching"):
                stages.skip(f"{name}[{trigger}]", f"KL ratio ranks below the top {options.localise_top} catalogue triggers")
        b = behaviours[trigger]
        results.append(TriggerFindings(
            trigger=trigger, trigger_tokens=len(prepared[trigger].triggered[0].trigger_positions),
            position=where_strongest[trigger],
            other_positions=tuple(r.summary(where) for where, r in at_positions[trigger].items() if where != where_strongest[trigger]),
            probes=b.probes, kl_clean=b.kl_clean, kl_triggered=b.kl_triggered,
            recovered_target=b.recovered_target, target_share_suspect=b.target_share_suspect,
            target_share_reference=b.target_share_reference, target_share_suspect_clean=b.target_share_suspect_clean,
            target_reference_logprob=ordinary_logprob(pair.reference, prepared[trigger].clean, b.target_ids,
                                                      pad_id(pair.tokenizer), options.batch_size),
            attention=deep.get("attention"), attribution=deep.get("attribution"),
            ablation=deep.get("ablation"), patching=deep.get("patching"),
        ))
    quantised = context.reference.quantisation != "none"
    run = RunInfo(
        bdscan_version=__version__, library_versions=library_versions(),
        architecture=architecture(pair.reference, context.reference.shapes if quantised else None), seed=options.seed,
        device=str(next(pair.suspect.parameters()).device),
        dtype=options.dtype, quantisation=context.reference.quantisation,
        trigger_positions=positions, max_new_tokens=options.max_new_tokens,
        triggers=tuple(triggers), triggers_from=triggers_from,
        merge_route=pair.merge_route, tokenizer=tokenizer_info, timings=dict(stages.timings),
    )
    return Findings(
        schema_version=SCHEMA_VERSION, suspect=pair.suspect_info, reference=pair.reference_info, run=run,
        probes=probe_set, clean=clean.findings, weight_diff=weight_diff, triggers=tuple(results), stages=tuple(stages.records),
        discovery=discovery,
    )


def _localise(
    pair: LoadedPair, patcher: HeadPatcher, probes: TriggerProbes, behaviour: BehaviourResult,
    options: ScanOptions, stages: _Stages, progress: Progress,
) -> dict[str, object]:
    """Attention, attribution, ablation and patching for one trigger."""
    trigger = probes.trigger
    pad = pad_id(pair.tokenizer)
    device = next(pair.suspect.parameters()).device
    suspect_sites, reference_sites = sites_for(pair.suspect), sites_for(pair.reference)
    found: dict[str, object] = {}
    with stages.run(f"attention[{trigger}]"):
        found["attention"] = measure_attention(pair.suspect, pair.reference, pair.tokenizer, probes, batch_size=options.batch_size)
    targets = target_batch(probes.triggered, behaviour.target_ids or (pair.tokenizer.eos_token_id,), pad, device)
    with stages.run(f"attribution[{trigger}]"):
        found["attribution"] = measure_attribution(
            pair.suspect, pair.tokenizer, suspect_sites, probes.triggered, int(targets.target[0]), pad, options.batch_size)
    heads = patcher.layers * patcher.heads
    with stages.run(f"ablation[{trigger}]"):
        runs = ablation_runs(options.ablation, patcher.layers, patcher.heads, len(probes.triggered))
        task = progress.start(f"mean head ablation {trigger}", runs)
        means = clean_head_means(pair.suspect, suspect_sites, probes.clean, pad, options.batch_size)
        found["ablation"] = measure_ablation(pair.suspect, patcher, means, targets, rows_per_forward=options.rows_per_forward,
                                             method=options.ablation, sites=suspect_sites,
                                             on_runs=lambda n: progress.advance(task, n))
        progress.finish(task)
    if "attention" not in found:
        stages.skip(f"patching[{trigger}]", "needs the attention ranking, which failed")
        return found
    with stages.run(f"patching[{trigger}]"):
        source, reference_logits = reference_source(pair.reference, reference_sites, suspect_sites, targets)
        threshold = options.kl_threshold if options.kl_threshold is not None else max(MIN_THRESHOLD, 2 * behaviour.kl_clean)
        budget = min(options.patch_budget, heads)
        estimates = None
        # A stage of its own: one backward over every probe at once may not fit where batched patching does, and
        # only the atp order needs it.
        with stages.run(f"attribution_patching[{trigger}]"):
            estimates = estimate_patching(pair.suspect, suspect_sites, source, reference_logits, targets)
        if estimates is None and options.patch_method == "atp":
            raise MeasurementError("the atp order needs attribution patching's estimate, which failed (see its stage)")
        task = progress.start(f"head patching {trigger}", budget)
        found["patching"] = measure_patching(
            pair.suspect, patcher, source, reference_logits, targets, ranking=found["attention"].ranked_heads(),
            method=options.patch_method, threshold=threshold, budget=budget, rows_per_forward=options.rows_per_forward,
            estimates=estimates, on_step=lambda: progress.advance(task),
        )
        progress.finish(task)
    return found

