"""Attention KL per head, attention mass on trigger tokens, and one example pattern.

Attention rows are distributions over keys, so suspect and reference compare
head by head as KL(suspect row || reference row), averaged over the real
(non-pad) query positions of each probe and then over probes. Pad keys get
exactly zero weight under the attention mask and drop out of the sum.

Trigger mass is read from the queries after the trigger; a probe whose
trigger is its last token has none, so it is left out of the mean and the
findings say how many probes the mean covers (``None`` when none do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import AttentionFindings, AttentionPattern
from scanner.inputs.rendering import RenderedProbe, TriggerProbes
from scanner.model.forward import attention_patterns, encode_ids, pad_id
from scanner.model.sites import input_device

_EPS = 1e-10


def _grid(tensor: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in tensor.tolist())


def head_kl_and_trigger_mass(
    suspect: PreTrainedModel, reference: PreTrainedModel, probes: Sequence[RenderedProbe], pad: int, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """``[layer, head]`` mean attention KL; the suspect's and the reference's mean mass on trigger tokens
    (``None`` when no probe has a token after its trigger); and how many probes those means cover."""
    device = input_device(suspect)
    kl_sum = mass_s_sum = mass_r_sum = None
    counted = with_mass = 0
    for start in range(0, len(probes), batch_size):
        chunk = probes[start:start + batch_size]
        batch = encode_ids([p.ids for p in chunk], pad, device)
        p_layers = torch.stack(attention_patterns(suspect, batch), dim=1)  # [batch, layer, head, query, key]
        q_layers = torch.stack(attention_patterns(reference, batch), dim=1)
        real = batch.attention_mask.bool()  # [batch, seq]
        terms = torch.where(p_layers > 0, p_layers * (p_layers.clamp_min(_EPS).log() - q_layers.clamp_min(_EPS).log()), 0.0)
        # A KL is never negative; float rounding can make it -1e-9, which would be printed as such.
        row_kl = terms.sum(-1).clamp_min(0)  # [batch, layer, head, query]
        query_mask = real[:, None, None, :].float()
        kl = (row_kl * query_mask).sum(-1) / query_mask.sum(-1)  # [batch, layer, head]
        mass_s = torch.zeros_like(kl)
        mass_r = torch.zeros_like(kl)
        for row, probe in enumerate(chunk):
            if not probe.trigger_positions or max(probe.trigger_positions) + 1 >= len(probe.ids):
                continue
            keys = torch.tensor(probe.trigger_positions, device=device) + batch.pad(row)
            after = torch.arange(int(keys.max()) + 1, batch.width, device=device)
            mass_s[row] = p_layers[row][..., after, :][..., keys].sum(-1).mean(-1)
            mass_r[row] = q_layers[row][..., after, :][..., keys].sum(-1).mean(-1)
            with_mass += 1
        kl_sum = kl.sum(0) if kl_sum is None else kl_sum + kl.sum(0)
        mass_s_sum = mass_s.sum(0) if mass_s_sum is None else mass_s_sum + mass_s.sum(0)
        mass_r_sum = mass_r.sum(0) if mass_r_sum is None else mass_r_sum + mass_r.sum(0)
        counted += len(chunk)
    if with_mass == 0:
        return kl_sum / counted, None, None, 0
    return kl_sum / counted, mass_s_sum / with_mass, mass_r_sum / with_mass, with_mass


def example_pattern(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    probe: RenderedProbe, layer: int, head: int,
) -> AttentionPattern:
    """The full ``[query, key]`` pattern of one head on one triggered probe, both models."""
    device = input_device(suspect)
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
    kl_triggered, mass_s, mass_r, with_mass = head_kl_and_trigger_mass(suspect, reference, probes.triggered, pad, batch_size)
    kl_clean, _, _, _ = head_kl_and_trigger_mass(suspect, reference, probes.clean, pad, batch_size)
    specific = kl_triggered - kl_clean
    layer, head = divmod(int(specific.argmax()), specific.shape[1])
    example = example_pattern(suspect, reference, tokenizer, probes.triggered[0], layer, head)
    return AttentionFindings(
        kl_triggered=_grid(kl_triggered), kl_clean=_grid(kl_clean),
        trigger_mass_suspect=None if mass_s is None else _grid(mass_s),
        trigger_mass_reference=None if mass_r is None else _grid(mass_r),
        trigger_mass_probes=with_mass, example=example,
    )
