"""Where one trigger acts inside the suspect: attention, direct logit attribution, mean head ablation and head
patching, each a stage of its own whose failure is recorded and does not lose the others."""

from __future__ import annotations

from dataclasses import dataclass

from scanner.api.stages import StageLog
from scanner.errors import MeasurementError
from scanner.findings import AblationFindings, AttentionFindings, AttributionFindings, PatchingFindings
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
            estimates=estimates, on_step=lambda: progress.advance(task),
        )
        progress.finish(task)
    return Localisation(attention, attribution, ablation, patching)
