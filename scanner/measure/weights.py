"""Static weight diff: where the suspect's weights moved, without a forward pass."""

from __future__ import annotations

import math

import torch

from scanner.findings import WeightDiff
from scanner.model.sites import Sites, dense_weight, module_tensor, module_tensors

CHUNK = 1 << 22
"""Elements (16 MB of float32) a difference or a finiteness check holds at a time: taken whole, the Qwen2.5-0.5B
embedding's difference alone is 545 MB beside both models."""


def _relative(suspect: torch.Tensor, reference: torch.Tensor) -> float:
    """``||suspect - reference|| / ||reference||``, summed a chunk at a time."""
    mine, theirs = suspect.reshape(-1), reference.reshape(-1)
    moved = size = 0.0
    for start in range(0, theirs.numel(), CHUNK):
        base = theirs[start:start + CHUNK].float()
        moved += float((mine[start:start + CHUNK].float().to(base.device) - base).pow(2).sum())
        size += float(base.pow(2).sum())
    return math.sqrt(moved) / max(math.sqrt(size), 1e-12)


def _non_finite(value: torch.Tensor) -> int:
    return sum(int((~torch.isfinite(part)).sum()) for part in value.reshape(-1).split(CHUNK))


def _flat(modules) -> torch.Tensor:
    """Every parameter of ``modules``, linear weights dequantised where bitsandbytes packed them."""
    return torch.cat([tensor.flatten().float().cpu() for module in modules for tensor in module_tensors(module)])


def _dense(sites: Sites, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per projection ``q k v o`` of ``layer``: its weight (dequantised once, where packed) and its bias."""
    out = {}
    for name in "qkvo":
        linear = sites.projection(layer, name)
        out[name] = (dense_weight(linear), None if linear.bias is None else module_tensor(linear, "bias"))
    return out


def _head_rows(projection: tuple[torch.Tensor, torch.Tensor | None], rows: slice) -> torch.Tensor:
    """A projection's output rows ``rows`` (one head), its bias slice included."""
    weight, bias = projection
    parts = [weight[rows].flatten()]
    if bias is not None:
        parts.append(bias[rows])
    return torch.cat(parts)


def measure_weight_diff(suspect: Sites, reference: Sites) -> WeightDiff:
    """Relative change per head of q/k/v/o, per layer of MLP and norms, and of embeddings and head.

    k and v are per key-value head; under grouped-query attention each query
    head is shown its group's k/v change.
    """
    config = reference.model.config
    heads, head_dim = config.num_attention_heads, config.head_dim
    group = heads // getattr(config, "num_key_value_heads", heads)
    grids: dict[str, list[list[float]]] = {name: [] for name in "qkvo"}
    mlp, norms = [], []
    for layer in range(config.num_hidden_layers):
        rows: dict[str, list[float]] = {name: [] for name in "qkvo"}
        mine, theirs = _dense(suspect, layer), _dense(reference, layer)
        for head in range(heads):
            q = slice(head * head_dim, (head + 1) * head_dim)
            kv = slice((head // group) * head_dim, (head // group + 1) * head_dim)
            for name, part in (("q", q), ("k", kv), ("v", kv)):
                rows[name].append(_relative(_head_rows(mine[name], part), _head_rows(theirs[name], part)))
            rows["o"].append(_relative(mine["o"][0][:, q], theirs["o"][0][:, q]))
        for name in "qkvo":
            grids[name].append(rows[name])
        mlp.append(_relative(_flat([suspect.mlp(layer)]), _flat([reference.mlp(layer)])))
        norms.append(_relative(_flat(suspect.layer_norms(layer)), _flat(reference.layer_norms(layer))))
    non_finite = {}
    for prefix, owner in suspect.model.named_modules():
        for name, _ in owner.named_parameters(recurse=False):
            value = module_tensor(owner, name)
            if value.is_floating_point() and (count := _non_finite(value)):
                non_finite[f"{prefix}.{name}" if prefix else name] = count
    return WeightDiff(
        q=tuple(map(tuple, grids["q"])), k=tuple(map(tuple, grids["k"])),
        v=tuple(map(tuple, grids["v"])), o=tuple(map(tuple, grids["o"])),
        mlp=tuple(mlp), norms=tuple(norms),
        embeddings=_relative(module_tensor(suspect.embedding()), module_tensor(reference.embedding())),
        final_norm=_relative(_flat([suspect.final_norm()]), _flat([reference.final_norm()])),
        lm_head=_relative(module_tensor(suspect.unembedding()), module_tensor(reference.unembedding())),
        non_finite=non_finite,
    )
