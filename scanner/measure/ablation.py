"""Mean head ablation: each head's output replaced by its mean over clean probes.

The effect is on the suspect's log-probability of its own triggered
completion; a head the backdoor needs makes it drop. Runs through the same
patching engine as head patching (source = the head's mean ``o_proj`` input,
no weight correction), many heads per forward.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from scanner.findings import AblationFindings, HeadEstimate
from scanner.inputs.rendering import RenderedProbe
from scanner.measure.attribution_patching import CHECKED, atp_ranking, estimate_ablation
from scanner.model.forward import capture, encode_ids
from scanner.model.patching import HeadPatcher, PatchSource, masks_for
from scanner.model.sites import Sites
from scanner.model.teacher_forcing import TargetBatch, at_target, target_logits, target_logprob


@torch.no_grad()
def clean_head_means(model: PreTrainedModel, sites: Sites, clean: Sequence[RenderedProbe], pad: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Per layer ``[1, 1, heads * head_dim]``: the ``o_proj`` input averaged over real tokens of clean probes."""
    device = next(model.parameters()).device
    layers = range(len(sites.layers()))
    sums, count = None, 0
    for start in range(0, len(clean), batch_size):
        batch = encode_ids([p.ids for p in clean[start:start + batch_size]], pad, device)
        with capture({str(i): sites.o_proj(i) for i in layers}, inputs=True) as captured:
            model(**batch.model_inputs(), logits_to_keep=1)  # only the captured inputs are read
        real = batch.attention_mask.bool()
        chunk = [captured[str(i)][real].float().sum(0) for i in layers]
        sums = chunk if sums is None else [a + b for a, b in zip(sums, chunk)]
        count += int(real.sum())
    return tuple((total / count)[None, None, :] for total in sums)


def measure_ablation(
    suspect: PreTrainedModel, patcher: HeadPatcher, means: tuple[torch.Tensor, ...], targets: TargetBatch, *,
    rows_per_forward: int, method: str = "exact", sites: Sites | None = None,
    on_heads: Callable[[int], None] | None = None,
) -> AblationFindings:
    """``exact``: every head ablated, ``layers x heads x probes`` rows through the suspect. ``atp``: every head
    estimated from one forward and one backward (``sites`` needed), the ``CHECKED`` the estimate ranks first then
    ablated exactly beside it. ``on_heads(n)`` is called with the number of heads finished after each forward."""
    baseline = target_logprob(target_logits(suspect, targets), targets)  # [probes]
    all_heads = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    if method == "exact":
        effects = torch.zeros(patcher.layers, patcher.heads)
        for (layer, head), effect in zip(all_heads, _exact(patcher, means, targets, baseline, all_heads, rows_per_forward, on_heads)):
            effects[layer, head] = effect
        checked: tuple[HeadEstimate, ...] = ()
    elif method == "atp":
        if sites is None:
            raise ValueError("the atp ablation method needs the suspect's sites")
        effects = estimate_ablation(suspect, sites, means, targets)
        top = atp_ranking(effects)[:CHECKED]
        exact = _exact(patcher, means, targets, baseline, top, rows_per_forward, None)
        checked = tuple(HeadEstimate(layer, head, float(effects[layer, head]), value) for (layer, head), value in zip(top, exact))
        if on_heads is not None:
            on_heads(len(all_heads))
    else:
        raise ValueError(f"unknown ablation method {method!r}; expected exact or atp")
    return AblationFindings(
        baseline_logprob=float(baseline.mean()),
        effect=tuple(tuple(float(x) for x in row) for row in effects.tolist()), method=method, checked=checked,
    )


def _exact(patcher: HeadPatcher, means: tuple[torch.Tensor, ...], targets: TargetBatch, baseline: torch.Tensor,
           heads: list[tuple[int, int]], rows_per_forward: int, on_heads: Callable[[int], None] | None) -> list[float]:
    """Each of ``heads`` ablated alone: the mean change in the target's log-probability, many heads per forward."""
    probes = baseline.shape[0]
    per_forward = max(1, rows_per_forward // probes)
    effects = []
    residual = patcher.residual(targets.inputs())
    # A forward starts at the lowest layer it ablates in, so chunks never straddle two layers.
    layers = [list(group) for _, group in itertools.groupby(heads, key=lambda h: h[0])]
    for chunk in (group[at:at + per_forward] for group in layers for at in range(0, len(group), per_forward)):
        masks = masks_for([[h] for h in chunk], patcher.layers, patcher.heads, probes)
        repeated = targets.repeat(len(chunk))
        with patcher.patched(PatchSource(means, None), masks.to(baseline.device), residual) as run:
            ablated = target_logprob(at_target(run(repeated.inputs())), repeated).view(len(chunk), probes)
        effects += [float((row - baseline).mean()) for row in ablated]
        if on_heads is not None:
            on_heads(len(chunk))
    return effects
