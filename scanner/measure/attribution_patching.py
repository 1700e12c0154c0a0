"""Attribution patching (AtP, Kramár et al. 2024): every head's patching effect estimated in one forward and one
backward.

Patching head ``h`` of layer ``l`` from the reference changes that layer's ``o_proj`` output by
``W_ref[:, h] z_ref[h] - W_sus[:, h] z_sus[h]`` at every position (the head's value-weighted sum ``z`` and its
columns of ``o_proj``: the same change the patching engine makes, weight difference included). To first order the
change in the metric is that difference dotted with the metric's gradient at the layer's ``o_proj`` output, so one
backward pass of the unpatched suspect gives the estimate for every head at once. The metric is the one head
patching lowers: the mean KL(suspect || reference) over the target positions of the triggered probes.

A linear estimate misses saturation and interactions (a head whose effect only shows once others are patched);
exact patching checks the heads it ranks first, and the findings keep both numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from scanner.model.patching import PatchSource
from scanner.model.sites import Sites
from scanner.model.teacher_forcing import TargetBatch, at_target, target_kl


def estimate_patching(
    suspect: PreTrainedModel, sites: Sites, source: PatchSource, reference_logits: torch.Tensor, targets: TargetBatch,
) -> torch.Tensor:
    """``[layer, head]`` estimated change of the mean target KL when that head alone is patched from the reference
    (negative: patching it brings the suspect closer). ``source``: the reference's ``o_proj`` inputs on ``targets``
    (``[probes, seq, heads * head_dim]`` per layer) and the ``o_proj`` weight differences, as patching uses them;
    ``reference_logits``: ``[probes, target_len, vocab]``."""
    config = suspect.config
    layers, heads, head_dim = config.num_hidden_layers, config.num_attention_heads, config.head_dim
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keeper(layer: int) -> Callable:
        def hook(_module, args, output):
            output.retain_grad()
            seen[layer] = (args[0].detach(), output)
        return hook

    def track(_module, _args, output):
        # No parameter asks for gradients (the patcher turned them off): start the graph at the embeddings.
        return output.detach().requires_grad_()

    handles = [sites.o_proj(layer).register_forward_hook(keeper(layer)) for layer in range(layers)]
    handles.append(sites.embedding().register_forward_hook(track))
    try:
        with torch.enable_grad():
            metric = target_kl(at_target(suspect(**targets.inputs()).logits), reference_logits).mean()
            metric.backward()
    finally:
        for handle in handles:
            handle.remove()
    estimates = torch.zeros(layers, heads)
    with torch.no_grad():
        for layer in range(layers):
            z_suspect, output = seen[layer]
            gradient = output.grad.float()  # [probes, seq, hidden]
            w_suspect = sites.o_proj(layer).weight.float()  # [hidden, heads * head_dim]
            w_reference = w_suspect + (source.o_proj_delta[layer].float() if source.o_proj_delta is not None else 0)
            shape = (*z_suspect.shape[:2], heads, head_dim)
            patched = ((gradient @ w_reference).view(shape) * source.values[layer].float().view(shape)).sum((0, 1, 3))
            unpatched = ((gradient @ w_suspect).view(shape) * z_suspect.float().view(shape)).sum((0, 1, 3))
            estimates[layer] = (patched - unpatched).cpu()
    return estimates


def atp_ranking(estimates: torch.Tensor) -> list[tuple[int, int]]:
    """Heads by estimated effect, the largest KL reduction first."""
    heads = estimates.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in torch.argsort(estimates.flatten(), stable=True)]
