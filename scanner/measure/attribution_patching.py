"""Attribution patching (AtP, Kramár et al. 2024): every head's patching effect estimated in one forward and one
backward.

Patching head ``h`` of layer ``l`` from the reference changes that layer's ``o_proj`` output by
``W_ref[:, h] z_ref[h] - W_sus[:, h] z_sus[h]`` at every position (the head's value-weighted sum ``z`` and its
columns of ``o_proj``: the same change the patching engine makes, weight difference included). To first order the
change in the metric is that difference dotted with the metric's gradient at the layer's ``o_proj`` output, so one
backward pass of the unpatched suspect gives the estimate for every head at once. The metric is the one head
patching lowers: the mean KL(suspect || reference) over the target positions of the triggered probes. Mean
ablation is estimated the same way, with the head's clean mean in place of the reference's ``z`` and the suspect's
log-probability of its target as the metric.

A linear estimate misses saturation and interactions (a head whose effect only shows once others are patched);
exact patching checks the heads it ranks first, and the findings keep both numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from scanner.model.forward import rows_within
from scanner.model.patching import PatchSource
from scanner.model.sites import Sites, dense_weight
from scanner.model.teacher_forcing import TargetBatch, activation_width, at_target, target_kl, target_logprob

CHECKED = 8
"""Heads an estimate ranks first that are also patched or ablated alone, exactly: one batched evaluation."""

BACKWARD_ROWS = 4
"""Most probes per forward and backward. A backward keeps every layer's activations: for 49 probes of about 80 tokens
at the Qwen2.5-0.5B shape that took the scan's peak memory to 3.2 times the two models' weights. The estimates are
sums over probes, so a few probes at a time give the same numbers."""

BACKWARD_BYTES = 32 * 2**20
"""Most bytes of the widest activation (the MLP's, in float32) summed over every layer and token that one backward's
probes may keep; the graph saves about three such tensors a layer. At the Qwen2.5-0.5B shape 4 probes of the planted
pair's 16 took the known-trigger scan's ablation step 646 MB over the resident models (2026-12-07); a probe there
(prompt and a 16-token target, about 36 tokens) is 24 layers x 36 x 4,864 floats, 17 MB, so it now runs one probe a
backward, 156 MB over. The zoos' probes are far under it and still run ``BACKWARD_ROWS`` at a time."""


def backward_rows(model: PreTrainedModel, tokens: int) -> int:
    """Probes of ``tokens`` tokens one forward and backward of ``model`` runs: ``BACKWARD_ROWS``, fewer where every
    layer's widest activation would pass ``BACKWARD_BYTES``, and at least one."""
    return rows_within(BACKWARD_BYTES, model.config.num_hidden_layers * tokens * activation_width(model) * 4, BACKWARD_ROWS)


def _gradients(
    suspect: PreTrainedModel, sites: Sites, targets: TargetBatch, metric: Callable[[torch.Tensor], torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (its ``o_proj`` input ``z`` ``[probes, seq, heads * head_dim]``, the gradient of ``metric`` at its
    ``o_proj`` output ``[probes, seq, hidden]``), from one forward and one backward of the unpatched suspect;
    ``metric`` maps the ``[probes, target_len, vocab]`` target logits to a scalar."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keeper(layer: int) -> Callable:
        def hook(_module, args, output):
            seen[layer] = (args[0].detach(), output)
        return hook

    def track(_module, _args, output):
        # The graph starts at the embeddings, cut from the weights: whether or not a parameter asks for gradients,
        # none is computed or left behind on the model.
        return output.detach().requires_grad_()

    layers = suspect.config.num_hidden_layers
    handles = [sites.o_proj(layer).register_forward_hook(keeper(layer)) for layer in range(layers)]
    handles.append(sites.embedding().register_forward_hook(track))
    try:
        with torch.enable_grad():
            value = metric(at_target(suspect(**targets.inputs()).logits))
            gradients = torch.autograd.grad(value, [seen[layer][1] for layer in range(layers)])
    finally:
        for handle in handles:
            handle.remove()
    return [(seen[layer][0].float(), gradient.float()) for layer, gradient in enumerate(gradients)]


def _head_dot(gradient: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, heads: int) -> torch.Tensor:
    """``[heads]``: the gradient dotted with each head's ``o_proj`` contribution ``weight[:, h] z[h]``, summed over
    probes and positions. ``gradient`` ``[probes, seq, hidden]``, ``weight`` ``[hidden, heads * head_dim]``, ``z``
    ``[probes, seq, heads * head_dim]`` or broadcastable to it."""
    projected = gradient @ weight  # [probes, seq, heads * head_dim]
    shape = (*projected.shape[:2], heads, -1)
    return (projected.view(shape) * z.expand_as(projected).reshape(shape)).sum((0, 1, 3))


def _chunks(model: PreTrainedModel, targets: TargetBatch) -> list[tuple[slice, TargetBatch]]:
    """``backward_rows`` probes at a time: the rows and the targets of each chunk (the batch's width kept)."""
    probes, step = targets.batch.input_ids.shape[0], backward_rows(model, targets.batch.width)
    return [(rows, TargetBatch(targets.batch.rows(rows), targets.target))
            for rows in (slice(start, start + step) for start in range(0, probes, step))]


def estimate_patching(
    suspect: PreTrainedModel, sites: Sites, source: PatchSource, reference_logits: torch.Tensor, targets: TargetBatch,
) -> torch.Tensor:
    """``[layer, head]`` estimated change of the mean target KL when that head alone is patched from the reference
    (negative: patching it brings the suspect closer). ``source``: the reference's ``o_proj`` inputs on ``targets``
    (``[probes, seq, heads * head_dim]`` per layer) and the ``o_proj`` weight differences, as patching uses them;
    ``reference_logits``: ``[probes, target_len, vocab]``."""
    heads, probes = suspect.config.num_attention_heads, reference_logits.shape[0]
    estimates = torch.zeros(suspect.config.num_hidden_layers, heads)
    for rows, chunk in _chunks(suspect, targets):
        # The mean over every probe: each chunk's share of it, so that the gradients add up to the whole's.
        seen = _gradients(suspect, sites, chunk, lambda out, rows=rows: target_kl(out, reference_logits[rows]).sum() / probes)
        with torch.no_grad():
            for layer, (z_suspect, gradient) in enumerate(seen):
                w_suspect = dense_weight(sites.o_proj(layer)).float()  # [hidden, heads * head_dim]
                delta = source.o_proj_delta[layer].float() if source.o_proj_delta is not None else 0
                patched = _head_dot(gradient, w_suspect + delta, source.values[layer][rows].float(), heads)
                estimates[layer] += (patched - _head_dot(gradient, w_suspect, z_suspect, heads)).cpu()
    return estimates


def estimate_ablation(suspect: PreTrainedModel, sites: Sites, means: tuple[torch.Tensor, ...], targets: TargetBatch) -> torch.Tensor:
    """``[layer, head]`` estimated change of the mean target log-probability when that head's ``o_proj`` input is
    replaced by its clean mean (``means``: ``[1, 1, heads * head_dim]`` per layer) at every position, as mean
    ablation does; negative: the head supports the target."""
    heads, probes = suspect.config.num_attention_heads, targets.batch.input_ids.shape[0]
    estimates = torch.zeros(suspect.config.num_hidden_layers, heads)
    for _, chunk in _chunks(suspect, targets):
        seen = _gradients(suspect, sites, chunk, lambda out, chunk=chunk: target_logprob(out, chunk).sum() / probes)
        with torch.no_grad():
            for layer, (z_suspect, gradient) in enumerate(seen):
                weight = dense_weight(sites.o_proj(layer)).float()
                estimates[layer] += (_head_dot(gradient, weight, means[layer].float() - z_suspect, heads)).cpu()
    return estimates


def atp_ranking(estimates: torch.Tensor) -> list[tuple[int, int]]:
    """Heads by estimated effect, the most negative first."""
    heads = estimates.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in torch.argsort(estimates.flatten(), stable=True)]
