"""Static weight diff: where the suspect's weights moved, without a forward pass."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from scanner.findings import WeightDiff


def _relative(suspect: torch.Tensor, reference: torch.Tensor) -> float:
    suspect, reference = suspect.float(), reference.float()
    return float((suspect - reference).norm() / reference.norm().clamp_min(1e-12))


def _joined(state: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([state[name].flatten() for name in names if name in state])


def measure_weight_diff(suspect: PreTrainedModel, reference: PreTrainedModel) -> WeightDiff:
    """Relative change per head of q/k/v/o, per layer of MLP and norms, and of embeddings and head.

    k and v are per key-value head; under grouped-query attention each query
    head is shown its group's k/v change.
    """
    config = reference.config
    heads, head_dim = config.num_attention_heads, config.head_dim
    kv_heads = getattr(config, "num_key_value_heads", heads)
    group = heads // kv_heads
    s, r = suspect.state_dict(), reference.state_dict()
    grids: dict[str, list[list[float]]] = {name: [] for name in "qkvo"}
    mlp, norms = [], []
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        attention = prefix + "self_attn."
        rows = {name: [] for name in "qkvo"}
        for head in range(heads):
            q = slice(head * head_dim, (head + 1) * head_dim)
            kv = slice((head // group) * head_dim, (head // group + 1) * head_dim)
            for name, part in (("q", q), ("k", kv), ("v", kv)):
                weight = attention + f"{name}_proj.weight"
                bias = attention + f"{name}_proj.bias"
                suspect_part = [s[weight][part].flatten()] + ([s[bias][part]] if bias in s else [])
                reference_part = [r[weight][part].flatten()] + ([r[bias][part]] if bias in r else [])
                rows[name].append(_relative(torch.cat(suspect_part), torch.cat(reference_part)))
            o = attention + "o_proj.weight"
            rows["o"].append(_relative(s[o][:, q], r[o][:, q]))
        for name in "qkvo":
            grids[name].append(rows[name])
        mlp_names = [key for key in r if key.startswith(prefix + "mlp.")]
        norm_names = [key for key in r if key.startswith(prefix) and "norm" in key.split(".")[-2]]
        mlp.append(_relative(_joined(s, mlp_names), _joined(r, mlp_names)))
        norms.append(_relative(_joined(s, norm_names), _joined(r, norm_names)))
    non_finite = {
        key: int((~torch.isfinite(value)).sum()) for key, value in s.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    }
    return WeightDiff(
        q=tuple(map(tuple, grids["q"])), k=tuple(map(tuple, grids["k"])),
        v=tuple(map(tuple, grids["v"])), o=tuple(map(tuple, grids["o"])),
        mlp=tuple(mlp), norms=tuple(norms),
        embeddings=_relative(s["model.embed_tokens.weight"], r["model.embed_tokens.weight"]),
        final_norm=_relative(s["model.norm.weight"], r["model.norm.weight"]),
        lm_head=_relative(s["lm_head.weight"], r["lm_head.weight"]),
        non_finite=non_finite,
    )
