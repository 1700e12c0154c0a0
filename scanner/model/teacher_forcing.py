"""Triggered probes followed by a target completion, teacher-forced.

Greedy generation emits the target exactly when, at every target position,
the next-token argmax is the target token; so attack success under an
intervention is measured in one forward pass, without generating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scanner.inputs.rendering import RenderedProbe
from scanner.model.forward import Batch, encode_ids


@dataclass(frozen=True)
class TargetBatch:
    """``batch``: prompt + target per row; ``positions``: ``[batch, target_len]`` indices predicting each target token."""

    batch: Batch
    positions: torch.Tensor
    target: torch.Tensor  # [target_len]

    def repeat(self, times: int) -> TargetBatch:
        return TargetBatch(self.batch.repeat(times), self.positions.repeat(times, 1), self.target)


def target_batch(probes: Sequence[RenderedProbe], target_ids: Sequence[int], pad: int, device: torch.device) -> TargetBatch:
    rows = [list(p.ids) + list(target_ids) for p in probes]
    batch = encode_ids(rows, pad, device)
    offsets = torch.arange(len(target_ids), device=device)
    positions = torch.stack([
        batch.pad(row) + len(probe.ids) - 1 + offsets for row, probe in enumerate(probes)
    ])
    return TargetBatch(batch, positions, torch.tensor(list(target_ids), device=device))


def at_target(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch, target_len, vocab]`` logits at the target positions."""
    index = batch.positions[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def target_logprob(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch]`` summed log-probability of the target tokens."""
    log_probs = F.log_softmax(at_target(logits, batch), dim=-1)
    return log_probs.gather(-1, batch.target[None, :, None].expand(log_probs.shape[0], -1, 1)).squeeze(-1).sum(-1)


def target_hits(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch]`` bool: greedy decoding would emit the whole target."""
    return (at_target(logits, batch).argmax(-1) == batch.target[None, :]).all(-1)


def target_kl(logits: torch.Tensor, reference_logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch]`` mean KL(logits || reference) over the target positions."""
    log_p = F.log_softmax(at_target(logits, batch), dim=-1)
    log_q = F.log_softmax(at_target(reference_logits, batch), dim=-1)
    # Never negative; rounding noise (-2.8e-10 with every head patched) is clamped rather than printed.
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).mean(-1)
