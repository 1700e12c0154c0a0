"""Mean head ablation: each head's output replaced by its mean over clean probes.

The effect is on the suspect's log-probability of its own triggered
completion; a head the backdoor needs makes it drop. Runs through the same
patching engine as head patching (source = the head's mean ``o_proj`` input,
no weight correction), many heads per forward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from scanner.findings import AblationFindings, HeadEstimate
from scanner.inputs.rendering import RenderedProbe
from scanner.measure.attribution_patching import CHECKED, atp_ranking, estimate_ablation
from scanner.model.forward import capture, encode_ids
from scanner.model.memory import release_freed_memory
from scanner.model.patching import HeadPatcher, PatchSource, masks_for
from scanner.model.sites import Sites, input_device
from scanner.model.teacher_forcing import (
    PATCHED_LOGIT_BYTES,
    TargetBatch,
    at_target,
    configurations_per_forward,
    target_logits,
    target_logprob,
)


@torch.no_grad()
def clean_head_means(model: PreTrainedModel, sites: Sites, clean: Sequence[RenderedProbe], pad: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Per layer ``[1, 1, heads * head_dim]``: the ``o_proj`` input averaged over real tokens of clean probes."""
    device = input_device(model)
    layers = range(len(sites.layers()))
    sums, count = None, 0
    for start in range(0, len(clean), batch_size):
        batch = encode_ids([p.ids for p in clean[start:start + batch_size]], pad, device)
        with capture({str(i): sites.o_proj(i) for i in layers}, inputs=True, device=device) as captured:
            model(**batch.model_inputs(), logits_to_keep=1)  # only the captured inputs are read
        real = batch.attention_mask.bool()
        chunk = [captured[str(i)][real].float().sum(0) for i in layers]
        sums = chunk if sums is None else [a + b for a, b in zip(sums, chunk)]
        count += int(real.sum())
    return tuple((total / count)[None, None, :] for total in sums)


EXACT_ROWS = 4096
"""Rows through the suspect that ``auto`` spends on ablating heads one by one (``layers x heads x probes``): above
it, ``screened``. The test and demo zoos (784 and 1,764 rows at 49 probes) are ablated exactly; the Qwen2.5-0.5B
shape (16,464 rows, about 40 minutes on 2 cores) and anything larger is screened."""


def resolve_method(method: str, layers: int, heads: int, probes: int, exact_rows: int = EXACT_ROWS) -> str:
    """``auto`` becomes ``exact`` when every head ablated alone fits in ``exact_rows`` rows, else ``screened``."""
    if method != "auto":
        return method
    return "exact" if layers * heads * probes <= exact_rows else "screened"


SCREENED_LAYERS = 4
"""Most layers ``screened`` ablates head by head, whatever rows ``EXACT_ROWS`` would leave: the layers whose joint
ablation lowered the target most. Checked on 18 poisoned models of three zoos (test size at seeds 0 and 1, demo
size), each cut to one screened layer: the head whose ablation hurt the target most was in the layer the screen
ranked first in 17 and second in the other, and the three strongest were within the first two but once. Four is
twice that, and what the row budget gave at the Qwen2.5-0.5B shape and 49 probes; at 16 probes the budget alone
gave 16 layers of 24 (3,968 rows, 660 s a trigger on 2 cores) where 4 take 1,280."""


def screened_layers(layers: int, heads: int, probes: int, exact_rows: int = EXACT_ROWS) -> int:
    """How many layers ``screened`` ablates head by head: what ``exact_rows`` leaves after one configuration per
    layer, at most ``SCREENED_LAYERS``, at least one."""
    return max(1, min(layers, SCREENED_LAYERS, (exact_rows - layers * probes) // (heads * probes)))


def ablation_runs(method: str, layers: int, heads: int, probes: int, exact_rows: int = EXACT_ROWS) -> int:
    """Configurations the method ablates exactly (for a progress bar): every head, every layer and the heads of the
    screened layers, or the ``CHECKED`` heads of ``atp``."""
    resolved = resolve_method(method, layers, heads, probes, exact_rows)
    if resolved == "screened":
        return layers + screened_layers(layers, heads, probes, exact_rows) * heads
    return min(CHECKED, layers * heads) if resolved == "atp" else layers * heads


def measure_ablation(
    suspect: PreTrainedModel, patcher: HeadPatcher, means: tuple[torch.Tensor, ...], targets: TargetBatch, *,
    rows_per_forward: int, method: str = "auto", sites: Sites | None = None, exact_rows: int = EXACT_ROWS,
    on_runs: Callable[[int], None] | None = None,
) -> AblationFindings:
    """``exact``: every head ablated, ``layers x heads x probes`` rows through the suspect. ``screened``: every
    layer's heads ablated together, then each head of the layers whose ablation lowered the target most, as many
    layers as ``exact_rows`` allows up to ``SCREENED_LAYERS`` (``screened_layers``); the other heads are NaN, not
    measured. ``atp``: every head estimated from one forward and one backward (``sites`` needed), the ``CHECKED``
    the estimate ranks first then ablated exactly beside it. ``auto``: ``exact`` within ``exact_rows``, else
    ``screened``. ``on_runs(n)`` is called with the configurations finished after each forward (``ablation_runs``
    in all)."""
    baseline = target_logprob(target_logits(suspect, targets), targets)  # [probes]
    layers, heads, probes = patcher.layers, patcher.heads, baseline.shape[0]
    method = resolve_method(method, layers, heads, probes, exact_rows)
    all_heads = [(layer, head) for layer in range(layers) for head in range(heads)]
    run = lambda configurations: _exact(patcher, means, targets, baseline, configurations, rows_per_forward, on_runs)  # noqa: E731
    checked: tuple[HeadEstimate, ...] = ()
    layer_effect: tuple[float, ...] = ()
    if method == "exact":
        effects = torch.tensor(run([[h] for h in all_heads])).view(layers, heads)
    elif method == "screened":
        layer_effect = tuple(run([[(layer, head) for head in range(heads)] for layer in range(layers)]))
        # Most negative first: the layers whose heads the completion needs most, together.
        kept = screened_layers(layers, heads, probes, exact_rows)
        # A layer whose joint effect is not a number (a baseline of -inf) is not chosen over one that is.
        order = sorted(range(layers), key=lambda i: layer_effect[i] if math.isfinite(layer_effect[i]) else math.inf)
        chosen = [(layer, head) for layer in sorted(order[:kept]) for head in range(heads)]
        effects = torch.full((layers, heads), math.nan)
        for (layer, head), effect in zip(chosen, run([[h] for h in chosen])):
            effects[layer, head] = effect
    elif method == "atp":
        if sites is None:
            raise ValueError("the atp ablation method needs the suspect's sites")
        effects = estimate_ablation(suspect, sites, means, targets)
        top = atp_ranking(effects)[:CHECKED]
        checked = tuple(HeadEstimate(layer, head, float(effects[layer, head]), value)
                        for (layer, head), value in zip(top, run([[h] for h in top])))
    else:
        raise ValueError(f"unknown ablation method {method!r}; expected auto, exact, screened or atp")
    return AblationFindings(
        baseline_logprob=float(baseline.mean()),
        effect=tuple(tuple(float(x) for x in row) for row in effects.tolist()), method=method, checked=checked,
        layer_effect=layer_effect,
    )


def _exact(patcher: HeadPatcher, means: tuple[torch.Tensor, ...], targets: TargetBatch, baseline: torch.Tensor,
           configurations: list[list[tuple[int, int]]], rows_per_forward: int,
           on_runs: Callable[[int], None] | None) -> list[float]:
    """Each configuration's heads ablated together: the mean change in the target's log-probability, many
    configurations per forward. Configurations are taken in order, and a forward holds configurations of one first
    layer only, since it starts at the lowest layer it ablates in."""
    probes = baseline.shape[0]
    per_forward = configurations_per_forward(rows_per_forward, probes, targets.keep, patcher.vocab, PATCHED_LOGIT_BYTES)
    effects = []
    residual = patcher.residual(targets.inputs())
    by_layer = [list(group) for _, group in itertools.groupby(configurations, key=lambda c: min(layer for layer, _ in c))]
    for chunk in (group[at:at + per_forward] for group in by_layer for at in range(0, len(group), per_forward)):
        masks = masks_for(chunk, patcher.layers, patcher.heads, probes)
        repeated = targets.repeat(len(chunk))
        with patcher.patched(PatchSource(means, None), masks.to(baseline.device), residual) as run:
            ablated = target_logprob(at_target(run(repeated.inputs())), repeated).view(len(chunk), probes)
        effects += [float((row - baseline).mean()) for row in ablated]
        release_freed_memory()  # as head patching's forwards: what this one freed, before the next
        if on_runs is not None:
            on_runs(len(chunk))
    return effects
