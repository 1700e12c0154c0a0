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
from transformers import PreTrainedModel

from scanner.model.forward import Batch, encode_ids, rows_within

LOGIT_BYTES = 160 * 2**20
"""Most bytes of float32 target logits a batched forward may return. With Qwen2.5's 151,936-row head, 256 rows x 17
kept positions are 2.6 GB, and a log-partition over them as much again: on the Qwen2.5-0.5B shape that took peak
memory to 2.3 times the two models' weights. It bounds every forward that keeps many positions
(``configurations_per_forward``): ablation's and head patching's configurations, and discovery's KL and target
reads. At 512 MB head patching still held three configurations of 16 probes a forward (496 MB of logits beside the
reference's) and was the known-trigger scan's peak, 6,975 MB (2026-12-07); at 160 MB it holds one, and that scan
peaked at 6,647 MB in no more time. The zoo's batches never come near the cap and are unchanged."""

REDUCE_ROWS = 8
"""Rows per vocabulary-wide reduction (log-partition, KL): temporaries of ``8 x target_len x vocab`` floats."""


PAIR_LOGIT_BYTES = 256 * 2**20
"""Most bytes of float32 logits the two models' forwards of one batch may hold together for a KL between them, every
answer position kept (behaviour's response KL): at Qwen2.5's vocabulary 16 probes of a 32-token answer were 642 MB,
and the scan's peak (1.07 GB over the resident models, 2026-12-07)."""


def pair_rows(rows: int, keep: int, vocab: int) -> int:
    """Rows of ``keep`` kept positions each whose logits, both models', fit ``PAIR_LOGIT_BYTES``: at most ``rows``,
    at least one."""
    return rows_within(PAIR_LOGIT_BYTES, 2 * keep * vocab * 4, rows)


ACTIVATION_BYTES = 32 * 2**20
"""Most bytes of one layer's widest activation (the MLP's, every token of the batch at its intermediate width in
float32) a forward of many short rows may make: at the Qwen2.5-0.5B shape 256 rows of 16 tokens are 80 MB a tensor,
several alive at once, and a discovery screen's forward of both models peaked 830 MB over the resident models
against 436 MB at the 107 rows this allows (2 cores, 2026-12-07; seconds a row the same within this machine's
noise, 155-195 ms at 32 to 256 rows). The test and demo zoos' rows never reach it: their batches are unchanged."""


def rows_by_activations(model: PreTrainedModel, tokens: int, rows_per_forward: int) -> int:
    """Rows of ``tokens`` tokens one forward of ``model`` runs: ``rows_per_forward``, fewer where the MLP's widest
    activation would pass ``ACTIVATION_BYTES``, and at least one."""
    return rows_within(ACTIVATION_BYTES, tokens * activation_width(model) * 4, rows_per_forward)


def activation_width(model: PreTrainedModel) -> int:
    """The widest activation a layer of ``model`` makes per token: the MLP's intermediate width, or the hidden one."""
    config = model.config
    return max(getattr(config, "intermediate_size", 0) or 0, config.hidden_size)


PATCHED_LOGIT_BYTES = 64 * 2**20
"""``LOGIT_BYTES`` for head patching's and mean ablation's forwards, which run one after another by the hundred with
the heap handed back after each (``release_freed_memory``). On the Qwen2.5-0.5B shape's planted pair (16 probes, a
5-token target; 2026-12-07) two configurations a forward, 117 MB of logits, grew the resident set 319 and 332 MB over
what patching held, one configuration, 58 MB, 58 and 116 MB, in no more time. A configuration of a 16-token target
(165 MB) passes either cap and runs alone whichever applies."""


def configurations_per_forward(rows_per_forward: int, probes: int, keep: int, vocab: int,
                               budget: int | None = None) -> int:
    """Configurations of ``probes`` rows one forward holds: ``rows_per_forward`` rows, fewer where their target
    logits (``keep`` positions over ``vocab``) would pass ``budget`` bytes (``LOGIT_BYTES`` unless given), and at
    least one."""
    return rows_within(LOGIT_BYTES if budget is None else budget, probes * keep * vocab * 4, rows_per_forward // probes)


@dataclass(frozen=True)
class TargetBatch:
    """``batch``: prompt + target per row, left-padded, so every row ends with the target and the positions that
    predict it are the same last ``len(target) + 1`` but one in every row; ``target``: ``[target_len]``."""

    batch: Batch
    target: torch.Tensor

    @property
    def keep(self) -> int:
        """The trailing positions whose logits a measurement needs: ``logits_to_keep`` for the forward."""
        return self.target.numel() + 1

    def inputs(self) -> dict[str, torch.Tensor | int]:
        """The forward's keyword arguments: the batch, and the output head applied at ``keep`` positions only
        (with Qwen2.5's 151,936-row head, full logits of 256 rows x 60 positions are 9.3 GB of float32)."""
        return {**self.batch.model_inputs(), "logits_to_keep": self.batch.last(self.keep)}

    def repeat(self, times: int) -> TargetBatch:
        return TargetBatch(self.batch.repeat(times), self.target)


def target_batch(prompts: Sequence[Sequence[int]], target_ids: Sequence[int], pad: int, device: torch.device) -> TargetBatch:
    """Each prompt's token ids followed by ``target_ids``, left-padded into one batch."""
    rows = [list(ids) + list(target_ids) for ids in prompts]
    return TargetBatch(encode_ids(rows, pad, device), torch.tensor(list(target_ids), device=device))


def at_target(kept: torch.Tensor) -> torch.Tensor:
    """``[batch, target_len, vocab]`` float32 from the ``[batch, keep, vocab]`` logits a forward with
    ``TargetBatch.inputs()`` returns: the last position predicts past the target and is dropped."""
    return kept[:, :-1].float()


@torch.no_grad()
def target_logits(model: PreTrainedModel, targets: TargetBatch) -> torch.Tensor:
    """``[batch, target_len, vocab]`` logits predicting each target token."""
    return at_target(model(**targets.inputs()).logits)


def target_logprob(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch]`` summed log-probability of the target tokens; ``logits`` ``[batch, target_len, vocab]``."""
    # The target's logit minus the log-partition: no vocabulary-sized log-softmax is materialised.
    picked = logits.gather(-1, batch.target[None, :, None].expand(logits.shape[0], -1, 1)).squeeze(-1)
    partition = torch.cat([rows.logsumexp(-1) for rows in logits.split(REDUCE_ROWS)])
    return (picked - partition).sum(-1)


def target_hits(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """``[batch]`` bool: greedy decoding would emit the whole target; ``logits`` ``[batch, target_len, vocab]``."""
    return (logits.argmax(-1) == batch.target[None, :]).all(-1)


def next_token_logprobs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """``[batch, vocab]``: ``model``'s float32 log-probabilities of the token after each row of ``batch``. Only the
    last position's logits are computed: a vocabulary-wide row per token would dominate memory."""
    return F.log_softmax(model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float(), -1)


def output_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``[...]``: KL(p || q) over the last dimension (nats), from the log-probabilities ``log_p`` and ``log_q``,
    ``[..., vocab]`` each: every output KL the scanner reads."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def logits_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``[rows, ...]``: ``output_kl`` of the two models' raw logits ``[rows, ..., vocab]`` (any dtype), read in float32
    ``REDUCE_ROWS`` rows at a time: a log-softmax of a whole batch is its logits' size again, four times over with
    the KL's own temporaries (at Qwen2.5's vocabulary, 256 rows held 2.5 GB more than the forward that made them)."""
    return torch.cat([output_kl(F.log_softmax(p.float(), -1), F.log_softmax(q.float(), -1))
                      for p, q in zip(p_logits.split(REDUCE_ROWS), q_logits.split(REDUCE_ROWS), strict=True)])


def target_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """``[batch]`` mean KL(logits || reference) over the target positions: ``logits`` ``[batch, target_len, vocab]``,
    ``reference_logits`` the same, or ``[probes, target_len, vocab]`` when ``logits`` stacks several configurations
    of the same probes (configuration-major); the reference is then read once per configuration, never repeated."""
    probes = reference_logits.shape[0]
    if logits.shape[0] % probes:
        raise ValueError(f"{logits.shape[0]} rows of logits are not whole configurations of {probes} probes")
    # A configuration at a time against the reference, each read REDUCE_ROWS rows at a time (``logits_kl``), the
    # reference's log-softmax recomputed beside them: the temporaries stay [REDUCE_ROWS, target_len, vocab], whatever
    # the batch and the number of probes. Never negative; rounding noise (-2.8e-10 with every head patched) is
    # clamped rather than printed.
    return torch.cat([logits_kl(chunk, reference_logits) for chunk in logits.split(probes)]).clamp_min(0).mean(-1)
