"""Attention KL per head, attention mass on trigger tokens, and one example pattern.

Attention rows are distributions over keys, so suspect and reference compare
head by head as KL(suspect row || reference row), averaged over the real
(non-pad) query positions of each probe and then over probes. Pad keys get
exactly zero weight under the attention mask and drop out of the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import AttentionFindings, AttentionPattern
from scanner.forward import attention_patterns, encode_ids, pad_id
from scanner.prepared import RenderedProbe, TriggerProbes

_EPS = 1e-10


def _grid(tensor: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in tensor.tolist())


def head_kl_and_trigger_mass(
    suspect: PreTrainedModel, reference: PreTrainedModel, probes: Sequence[RenderedProbe], pad: int, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[layer, head]`` mean attention KL, and suspect's and reference's mean mass on trigger tokens."""
    device = next(suspect.parameters()).device
    kl_sum = mass_s_sum = mass_r_sum = None
    counted = 0
    for start in range(0, len(probes), batch_size):
        chunk = probes[start:start + batch_size]
        batch = encode_ids([p.ids for p in chunk], pad, device)
        p_layers = torch.stack(attention_patterns(suspect, batch), dim=1)  # [batch, layer, head, query, key]
        q_layers = torch.stack(attention_patterns(reference, batch), dim=1)
        real = batch.attention_mask.bool()  # [batch, seq]
        terms = torch.where(p_layers > 0, p_layers * (p_layers.clamp_min(_EPS).log() - q_layers.clamp_min(_EPS).log()), 0.0)
        row_kl = terms.sum(-1)  # [batch, layer, head, query]
        query_mask = real[:, None, None, :].float()
        kl = (row_kl * query_mask).sum(-1) / query_mask.sum(-1)  # [batch, layer, head]
        mass_s = torch.zeros_like(kl)
        mass_r = torch.zeros_like(kl)
        for row, probe in enumerate(chunk):
            if not probe.trigger_positions:
                continue
            keys = torch.tensor(probe.trigger_positions, device=device) + batch.pad(row)
            after = torch.arange(int(keys.max()) + 1, batch.width, device=device)
            mass_s[row] = p_layers[row][..., after, :][..., keys].sum(-1).mean(-1)
            mass_r[row] = q_layers[row][..., after, :][..., keys].sum(-1).mean(-1)
        kl_sum = kl.sum(0) if kl_sum is None else kl_sum + kl.sum(0)
        mass_s_sum = mass_s.sum(0) if mass_s_sum is None else mass_s_sum + mass_s.sum(0)
        mass_r_sum = mass_r.sum(0) if mass_r_sum is None else mass_r_sum + mass_r.sum(0)
        counted += len(chunk)
    return kl_sum / counted, mass_s_sum / counted, mass_r_sum / counted


def example_pattern(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    probe: RenderedProbe, layer: int, head: int,
) -> AttentionPattern:
    """The full ``[query, key]`` pattern of one head on one triggered probe, both models."""
    device = next(suspect.parameters()).device
    batch = encode_ids([probe.ids], pad_id(tokenizer), device)
    suspect_pattern = attention_patterns(suspect, batch)[layer][0, head]
    reference_pattern = attention_patterns(reference, batch)[layer][0, head]
    rounded = lambda m: tuple(tuple(round(float(x), 4) for x in row) for row in m.tolist())  # noqa: E731
    return AttentionPattern(
        layer=layer, head=head,
        tokens=tuple(tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(list(probe.ids))),
        trigger_tokens=probe.trigger_positions,
        suspect=rounded(suspect_pattern), reference=rounded(reference_pattern),
    )


def measure_attention(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    probes: TriggerProbes, *, batch_size: int,
) -> AttentionFindings:
    pad = pad_id(tokenizer)
    kl_triggered, mass_s, mass_r = head_kl_and_trigger_mass(suspect, reference, probes.triggered, pad, batch_size)
    kl_clean, _, _ = head_kl_and_trigger_mass(suspect, reference, probes.clean, pad, batch_size)
    specific = kl_triggered - kl_clean
    layer, head = divmod(int(specific.argmax()), specific.shape[1])
    example = example_pattern(suspect, reference, tokenizer, probes.triggered[0], layer, head)
    return AttentionFindings(
        kl_triggered=_grid(kl_triggered), kl_clean=_grid(kl_clean),
        trigger_mass_suspect=_grid(mass_s), trigger_mass_reference=_grid(mass_r), example=example,
    )


def rank_heads(attention: AttentionFindings) -> list[tuple[int, int]]:
    """Heads by trigger-specific attention divergence (triggered minus clean KL), largest first."""
    scored = [
        (attention.kl_triggered[layer][head] - attention.kl_clean[layer][head], layer, head)
        for layer in range(len(attention.kl_triggered)) for head in range(len(attention.kl_triggered[0]))
    ]
    return [(layer, head) for _, layer, head in sorted(scored, key=lambda item: (-item[0], item[1], item[2]))]
