"""``scan(suspect, reference, options) -> Findings``: the stages of a scan, in order.

Loading (the reference once, ``scanner.api.reference``; then the suspect), the triggers placed in every probe
and checked before any model work, the weight difference, discovery, behaviour at every position (a catalogue trigger's only where
its first response token moves), and localisation of the triggers that matter most (``scanner.api.localise``). Each stage is recorded in
``Findings.stages`` (``scanner.api.stages``): a stage that fails the way a measurement can fail is a record and
the scan goes on where later stages do not depend on it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from scanner import __version__
from scanner.api.localise import localise, skipped_localisation
from scanner.api.reference import ReferenceContext, prepare_reference
from scanner.api.stages import StageLog, StepProgress, enter_stage
from scanner.errors import IdenticalModelsError, InputError
from scanner.findings import SCHEMA_VERSION, CleanFindings, Findings, RunInfo, TriggerFindings, WeightDiff
from scanner.findings.discovery import DiscoveryFindings
from scanner.inputs.loading import LoadedPair, architecture, load_suspect
from scanner.inputs.rendering import TriggerProbes, prepare
from scanner.measure.behaviour import (
    POSITION_SCREEN_FROM,
    POSITION_SCREEN_PROBES,
    BehaviourResult,
    complete_both,
    first_token_kls,
    measure_behaviour,
    measure_clean,
    ordinary_logprob,
    position_readings,
    positions_to_measure,
    strongest_position,
)
from scanner.measure.discovery import discover
from scanner.measure.weights import measure_weight_diff
from scanner.model.forward import pad_id
from scanner.model.patching import HeadPatcher
from scanner.model.sites import input_device, sites_for
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress

Placed = dict[tuple[str, str], TriggerProbes]
"""``(trigger, position)`` -> the probes clean and with the trigger placed there."""


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "peft", "pyvene", "safetensors", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def scan(suspect: Path | str, reference: str, options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS) -> Findings:
    """Compare ``suspect`` with ``reference`` and measure everything bdscan knows to measure.

    Raises a ``scanner.errors.BdscanError`` for inputs that cannot be scanned.
    """
    return scan_against(prepare_reference(reference, options, progress), suspect, options, progress)


def scan_against(context: ReferenceContext, suspect: Path | str, options: ScanOptions = ScanOptions(),
                 progress: Progress = NO_PROGRESS) -> Findings:
    """``scan`` with the reference already prepared: a fleet loads and samples the reference once."""
    torch.manual_seed(options.seed)
    stages = StageLog()
    enter_stage(progress, options, "suspect and weight difference")
    task = progress.start("loading the suspect", 1)
    started = time.perf_counter()
    try:
        pair = load_suspect(context.reference, suspect, allow_pickle=options.model.allow_pickle).with_tokenizer(context.tokenizer)
    finally:
        progress.finish(task)  # a suspect that fails to load leaves no bar behind in a fleet
    stages.add_time("load", time.perf_counter() - started + context.seconds)
    prompts = list(context.probe_set.used)
    triggers = list(options.triggers_to_try)
    positions = options.behaviour.positions
    placed = place_triggers(pair, prompts, triggers, positions, options.seed)
    with stages.run("weight_diff"):
        weight_diff = measure_weight_diff(sites_for(pair.suspect), sites_for(pair.reference))
    if weight_diff.unchanged:
        raise IdenticalModelsError(f"suspect {suspect}: every weight equals the reference's, so there is nothing to "
                                   "compare; check that the right suspect was given (an adapter exported without its "
                                   "weights, or the reference itself)")
    discovery, found = _discover(pair, prompts, triggers, options, stages, progress, weight_diff)
    placed.update(place_triggers(pair, prompts, found, positions, options.seed))
    triggers += found
    clean, at_positions = _behaviour(pair, placed, triggers, found, options, stages, progress)
    results = _trigger_findings(pair, placed, at_positions, found, options, stages, progress)
    quantised = context.reference.quantisation != "none"
    run = RunInfo(
        bdscan_version=__version__, library_versions=library_versions(),
        architecture=architecture(pair.reference, context.reference.shapes if quantised else None), seed=options.seed,
        device=str(input_device(pair.suspect)),
        dtype=options.model.dtype, quantisation=context.reference.quantisation,
        trigger_positions=positions, max_new_tokens=options.behaviour.max_new_tokens,
        triggers=tuple(triggers), triggers_from=("user" if options.triggers else "catalogue") + ("+discovery" if found else ""),
        merge_route=pair.merge_route, tokenizer=context.tokenizer_info, timings=stages.timings,
        options_digest=options.digest,
    )
    return Findings(
        schema_version=SCHEMA_VERSION, suspect=pair.suspect_info, reference=pair.reference_info, run=run,
        probes=context.probe_set, clean=clean, weight_diff=weight_diff, triggers=tuple(results),
        stages=tuple(stages.records), discovery=discovery,
    )


def place_triggers(pair: LoadedPair, prompts: Sequence[str], triggers: Sequence[str], positions: Sequence[str],
                   seed: int) -> Placed:
    """Every trigger placed in every probe at every position, checked as an input before any model runs on it:
    ``InputError`` for a trigger that tokenizes to nothing, or a tokenizer that is not the checkpoint's."""
    placed = {(t, where): prepare(pair.tokenizer, list(prompts), t, where, seed) for t in triggers for where in positions}
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
    return placed


def _discover(pair: LoadedPair, prompts: list[str], tried: Sequence[str], options: ScanOptions, stages: StageLog,
              progress: Progress, weight_diff: WeightDiff) -> tuple[DiscoveryFindings | None, list[str]]:
    """The search for an unknown trigger, when it runs, and the proposed candidates the scan will measure."""
    if not options.runs_discovery:
        return None, []
    discovery = None
    enter_stage(progress, options, "discovery")
    with stages.run("discovery"), StepProgress(progress, "discovery") as step:
        discovery = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=options.seed,
                             options=options.discovery, positions=options.discovery_positions,
                             rows_per_forward=options.model.rows_per_forward, weight_diff=weight_diff,
                             on_step=step)
    if discovery is None:
        return None, []
    return discovery, [text for text in discovery.proposed if text not in tried][: options.discovery.confirm]


def _catalogue(triggers: Sequence[str], discovered: Sequence[str], options: ScanOptions) -> list[str]:
    """The catalogue's triggers among ``triggers``: tried blind, so measured at a position and localised only where
    they act. None where the user gave the triggers, every one of which is measured and localised whole."""
    return [] if options.triggers else [t for t in triggers if t not in discovered]


def _behaviour(pair: LoadedPair, placed: Placed, triggers: Sequence[str], discovered: Sequence[str], options: ScanOptions,
               stages: StageLog, progress: Progress) -> tuple[CleanFindings, dict[str, dict[str, BehaviourResult]]]:
    """Both models' answers to the clean probes once, then each trigger at each position: a catalogue trigger only
    where its first response token says it acts (``_catalogue_positions``)."""
    positions, generation = options.behaviour.positions, options.behaviour.max_new_tokens
    batch_size = options.model.batch_size
    rows = options.model.rows_per_forward
    prompts = len(next(iter(placed.values())).clean)
    enter_stage(progress, options, "behaviour")
    catalogue = [] if options.behaviour.thorough or len(positions) < 2 else _catalogue(triggers, discovered, options)
    measured_at = {trigger: list(positions) for trigger in triggers}
    screened: dict[str, list[str]] = {}
    left_out: dict[str, str] = {}
    if catalogue:
        with stages.run("behaviour_screen", fallback="every catalogue trigger was measured at every position"):
            screened, left_out = _catalogue_positions(pair, placed, catalogue, positions, batch_size, progress)
        measured_at.update(screened)
        for name, why in left_out.items():
            stages.skip(name, why)
    task = progress.start("behaviour: completions and output KL", (sum(map(len, measured_at.values())) + 1) * prompts * 2)
    clean_probes = next(iter(placed.values())).clean
    advance = lambda n: progress.advance(task, n)  # noqa: E731
    # Clean completions do not depend on the trigger: measured once, shared by every trigger and position.
    (answered,) = complete_both(pair.suspect, pair.reference, pair.tokenizer, [clean_probes], max_new_tokens=generation,
                                rows_per_generation=rows, on_batch=advance)
    clean = measure_clean(pair.suspect, pair.reference, pair.tokenizer, clean_probes, answered, batch_size=batch_size)
    at_positions: dict[str, dict[str, BehaviourResult]] = {}
    for trigger in triggers:
        # A trigger's positions share generations, inside its stage: a failure (out of memory) loses that trigger
        # only, and the stage's time holds its answers. Every trigger's in the same generations saved 3% at the
        # Qwen2.5-0.5B shape (benchmarks/README.md), not worth either.
        with stages.run(f"behaviour[{trigger}]"):
            where = measured_at[trigger]
            answers = complete_both(pair.suspect, pair.reference, pair.tokenizer,
                                    [placed[(trigger, w)].triggered for w in where], max_new_tokens=generation,
                                    rows_per_generation=rows, on_batch=advance)
            at_positions[trigger] = {w: measure_behaviour(pair.suspect, pair.reference, pair.tokenizer,
                                                          placed[(trigger, w)], clean, a, batch_size=batch_size)
                                     for w, a in zip(where, answers)}
    progress.finish(task)
    return clean, at_positions


def _catalogue_positions(pair: LoadedPair, placed: Placed, catalogue: Sequence[str], positions: Sequence[str],
                         batch_size: int, progress: Progress) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Where each catalogue trigger is measured in full: the positions its first response token says it acts at
    (``positions_to_measure``, on the first ``POSITION_SCREEN_PROBES`` probes); and each left out, as a skipped
    stage's name with why."""
    pad = pad_id(pair.tokenizer)
    first = next(iter(placed.values())).clean[:POSITION_SCREEN_PROBES]
    task = progress.start("behaviour: where each catalogue trigger acts (its first response token)", len(catalogue))
    try:
        clean = first_token_kls(pair.suspect, pair.reference, first, pad, batch_size)
        chosen, left_out = {}, {}
        for trigger in catalogue:
            readings = position_readings(pair.suspect, pair.reference,
                                         {where: placed[(trigger, where)] for where in positions}, clean, pad, batch_size)
            chosen[trigger] = positions_to_measure(readings)
            kept = ", ".join(f"{where} ({readings[where]:.2f})" for where in chosen[trigger])
            for where in positions:
                if where not in chosen[trigger]:
                    left_out[f"behaviour[{trigger}] at {where}"] = (
                        f"the catalogue trigger moves the first response token by {readings[where]:.2f} nats here "
                        f"(trigger-specific KL on {len(first)} probes), under {POSITION_SCREEN_FROM:g} nats; measured "
                        f"in full at {kept} only (--thorough measures every position)")
            progress.advance(task)
    finally:
        progress.finish(task)
    return chosen, left_out


def _trigger_findings(pair: LoadedPair, placed: Placed, at_positions: dict[str, dict[str, BehaviourResult]],
                      discovered: Sequence[str], options: ScanOptions, stages: StageLog,
                      progress: Progress) -> list[TriggerFindings]:
    """Each measured trigger at the position it acted most, localised when it ranks among those that matter
    (``skipped_localisation``, read from the trigger's own findings; every one, where the user gave triggers)."""
    results: dict[str, TriggerFindings] = {}
    prepared: dict[str, TriggerProbes] = {}
    for trigger, by_position in at_positions.items():
        where = strongest_position(by_position)
        b, prepared[trigger] = by_position[where], placed[(trigger, where)]
        results[trigger] = TriggerFindings(
            trigger=trigger, trigger_tokens=len(prepared[trigger].triggered[0].trigger_positions), position=where,
            other_positions=tuple(r.summary(there) for there, r in by_position.items() if there != where),
            probes=b.probes, kl_clean=b.kl_clean, kl_triggered=b.kl_triggered,
            recovered_target=b.recovered_target, target_share_suspect=b.target_share_suspect,
            target_share_reference=b.target_share_reference, target_share_suspect_clean=b.target_share_suspect_clean,
            target_reference_logprob=ordinary_logprob(pair.reference, prepared[trigger].clean, b.target_ids,
                                                      pad_id(pair.tokenizer), options.model.batch_size),
            attention=None, attribution=None, ablation=None, patching=None,
        )
    ranked = sorted(results.values(), key=lambda t: -t.kl_ratio)
    skipped = {} if options.triggers else skipped_localisation(
        ranked, set(_catalogue(list(results), discovered, options)), options.localisation.top, options.localisation.thorough)
    patcher = None
    enter_stage(progress, options, "localisation")
    for trigger, record in results.items():
        if trigger in skipped:
            for name in ("attention", "attribution", "ablation", "patching"):
                stages.skip(f"{name}[{trigger}]", skipped[trigger])
            continue
        patcher = patcher or HeadPatcher(pair.suspect, sites_for(pair.suspect))
        found = localise(pair, patcher, prepared[trigger], at_positions[trigger][record.position], options.localisation,
                         options.model, stages, progress)
        results[trigger] = dataclasses.replace(record, attention=found.attention, attribution=found.attribution,
                                               ablation=found.ablation, patching=found.patching)
    return list(results.values())
