"""Mean head ablation: each head's output replaced by its mean over clean probes.

The effect is on the suspect's log-probability of its own triggered
completion; a head the backdoor needs makes it drop. Runs through the same
patching engine as head patching (source = the head's mean ``o_proj`` input,
no weight correction), many heads per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from scanner.findings import AblationFindings
from scanner.inputs.rendering import RenderedProbe
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
    rows_per_forward: int, on_heads: Callable[[int], None] | None = None,
) -> AblationFindings:
    """``on_heads(n)`` is called with the number of heads finished after each forward."""
    baseline = target_logprob(target_logits(suspect, targets), targets)  # [probes]
    probes = baseline.shape[0]
    heads = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    per_forward = max(1, rows_per_forward // probes)
    effects = torch.zeros(patcher.layers, patcher.heads)
    for start in range(0, len(heads), per_forward):
        chunk = heads[start:start + per_forward]
        masks = masks_for([[h] for h in chunk], patcher.layers, patcher.heads, probes)
        repeated = targets.repeat(len(chunk))
        with patcher.patched(PatchSource(means, None), masks.to(baseline.device)) as run:
            ablated = target_logprob(at_target(run(repeated.inputs())), repeated).view(len(chunk), probes)
        for (layer, head), row in zip(chunk, ablated):
            effects[layer, head] = (row - baseline).mean()
        if on_heads is not None:
            on_heads(len(chunk))
    return AblationFindings(
        baseline_logprob=float(baseline.mean()),
        effect=tuple(tuple(float(x) for x in row) for row in effects.tolist()),
    )
