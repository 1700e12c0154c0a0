"""Greedy head patching: how many heads, taken from the reference, remove the backdoor.

Heads are patched cumulatively on the triggered probes followed by the
suspect's recovered target. After each step the output KL to the reference
over the target positions and the attack success (greedy decoding would still
emit the target) are recorded. ``ranked`` takes heads in a given order (by
default trigger-specific attention KL), ``atp`` by attribution patching's
estimate; ``greedy`` evaluates every remaining head at each step, batched, and
keeps the one that lowers the KL most. Whatever the method, the heads the
estimate ranks first are also patched alone and exactly, and both numbers kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from scanner.findings import HeadEstimate, PatchingFindings, PatchStep
from scanner.measure.attribution_patching import CHECKED, atp_ranking
from scanner.model.forward import capture
from scanner.model.memory import release_freed_memory
from scanner.model.patching import HeadPatcher, PatchSource, masks_for
from scanner.model.sites import Sites, dense_weight, input_device
from scanner.model.teacher_forcing import (
    PATCHED_LOGIT_BYTES,
    TargetBatch,
    at_target,
    configurations_per_forward,
    target_hits,
    target_kl,
    target_logits,
)

Head = tuple[int, int]

ONE_BY_ONE = 16
"""Heads a ranked patching adds one at a time before it checks a grid of longer prefixes (``prefix_grid``) first.
Every trigger of zoo v17 that patching disabled was disabled by 16 heads or fewer (its models have 16); the paper
behind bdscan localised its triggers to ~24 and ~31 heads of Qwen2.5-3B's 576, which the grid's 24 and 36 bracket.
At the Qwen2.5-0.5B shape a step is a forward of the probes from the lowest layer its prefix reaches, about 4 s at 16
probes, and a planted suspect no prefix of the 128-head budget disabled ran all 128 (541 s of a 973 s scan)."""
GRID_GROWTH = 1.5
"""Each grid prefix is this many times the one before: 24, 36, 54, 81, 121 heads, then the budget."""


@torch.no_grad()
def reference_source(
    reference: PreTrainedModel, reference_sites: Sites, suspect_sites: Sites, targets: TargetBatch,
) -> tuple[PatchSource, torch.Tensor]:
    """The reference's ``o_proj`` inputs on ``targets`` (every position: patching replaces them all) with the
    ``o_proj`` weight difference, and its ``[probes, target_len, vocab]`` logits at the target."""
    layers = range(len(reference_sites.layers()))
    device = input_device(reference)
    with capture({str(i): reference_sites.o_proj(i) for i in layers}, inputs=True, device=device) as captured:
        reference_logits = target_logits(reference, targets)
    deltas = tuple(
        (dense_weight(reference_sites.o_proj(i)).to(device) - dense_weight(suspect_sites.o_proj(i)).to(device)).to(captured[str(i)].dtype)
        for i in layers
    )
    return PatchSource(tuple(captured[str(i)] for i in layers), deltas), reference_logits


def prefix_grid(after: int, budget: int) -> list[int]:
    """Prefix sizes past ``after`` heads, each ``GRID_GROWTH`` times the one before, ending at ``budget``."""
    sizes, size = [], after
    while (size := max(size + 1, int(size * GRID_GROWTH))) < budget:
        sizes.append(size)
    return [*sizes, budget]


class _Evaluator:
    """Output KL and attack success of head configurations, many per forward."""

    def __init__(self, patcher: HeadPatcher, source: PatchSource, reference_logits: torch.Tensor,
                 targets: TargetBatch, rows_per_forward: int) -> None:
        self.patcher, self.source, self.reference_logits, self.targets = patcher, source, reference_logits, targets
        self.probes = targets.batch.input_ids.shape[0]
        self.per_forward = configurations_per_forward(rows_per_forward, self.probes, targets.keep, patcher.vocab,
                                                      PATCHED_LOGIT_BYTES)
        self.residual = patcher.residual(targets.inputs())

    def __call__(self, configurations: Sequence[Sequence[Head]]) -> list[tuple[float, float]]:
        results = []
        device = self.reference_logits.device
        for start in range(0, len(configurations), self.per_forward):
            chunk = configurations[start:start + self.per_forward]
            times = len(chunk)
            masks = masks_for(chunk, self.patcher.layers, self.patcher.heads, self.probes).to(device)
            repeated = self.targets.repeat(times)
            with self.patcher.patched(self.source, masks, self.residual) as run:
                patched = at_target(run(repeated.inputs()))
            kl = target_kl(patched, self.reference_logits).view(times, self.probes)
            hits = target_hits(patched, repeated).float().view(times, self.probes)
            results += [(float(k.mean()), float(h.mean())) for k, h in zip(kl, hits)]
            # Hundreds of these forwards run back to back, and glibc keeps what each frees (in several heaps: torch's
            # threads allocate too): handed back here, patching's growth over what it holds stays that of one forward.
            del patched
            release_freed_memory()
        return results


def _walk(evaluate: _Evaluator, order: Sequence[Head], one_by_one: int, done: Callable[[float, float], bool],
          floor: float, disabled_before: bool, report: Callable[[], None]) -> tuple[list[PatchStep], str]:
    """The steps of ``order``'s prefixes, one head a step, to ``one_by_one`` heads or the first that is ``done``;
    past that, the prefixes of ``prefix_grid`` are measured first and the walk goes on only to the next of them that
    is done, or whose attack success is at ``floor`` where neither the suspect unpatched (``disabled_before``) nor
    a step was yet. With why it stopped short, or ""."""
    steps: list[PatchStep] = []

    def walk(first: int, last: int) -> bool:
        """Prefixes of ``first`` to ``last`` heads until one is ``done``; whether one was."""
        for start in range(first, last + 1, evaluate.per_forward):
            prefixes = [order[:k] for k in range(start, min(last, start + evaluate.per_forward - 1) + 1)]
            for prefix, (kl, success) in zip(prefixes, evaluate(prefixes)):
                steps.append(PatchStep(prefix[-1][0], prefix[-1][1], kl, success))
                report()
                if done(kl, success):
                    return True
        return False

    if walk(1, one_by_one) or one_by_one >= len(order):
        return steps, ""
    grid = prefix_grid(one_by_one, len(order))
    measured = dict(zip(grid, evaluate([order[:size] for size in grid])))
    while True:
        # The KL may be pursued past the prefix that disables the behaviour: the walk goes there first.
        disabled = disabled_before or any(step.attack_success <= floor for step in steps)
        following = next((size for size in grid if size > len(steps) and (
            done(*measured[size]) or (not disabled and measured[size][1] <= floor))), None)
        if following is None:
            unmet = "the output KL above the threshold" + ("" if disabled else " and the attack success above the reference's")
            return steps, (f"the prefixes of {', '.join(map(str, grid))} heads left {unmet}, so the heads were patched one "
                           f"by one only to {len(steps)} (--thorough patches on)")
        if walk(len(steps) + 1, following):
            return steps, ""


def measure_patching(
    suspect: PreTrainedModel, patcher: HeadPatcher, source: PatchSource, reference_logits: torch.Tensor,
    targets: TargetBatch, *, ranking: Sequence[Head], method: str, threshold: float, budget: int,
    rows_per_forward: int, estimates: torch.Tensor | None = None, on_step: Callable[[], None] | None = None,
    thorough: bool = False,
) -> PatchingFindings:
    """``on_step()`` is called once per head added, whichever the method. ``estimates``: ``[layer, head]``
    attribution patching's estimates (``attribution_patching.estimate_patching``); ``atp`` ranks by them and needs
    them, the other methods record them beside the exact effect of the ``CHECKED`` heads they rank first.

    Every head patched at once is measured first. Where it leaves the output KL above ``threshold``, no prefix is
    taken to bring it under (``heads_needed`` is out of reach; on zoo v17 at both seeds, none of the 38 such triggers
    had a prefix that did), so unless ``thorough`` the steps stop once a prefix disables the behaviour, and do not run
    where it was at the reference's attack success before any head (``PatchingFindings.stopped`` says which). Every
    head of every layer patched from the reference feeds the answer's positions the reference's attention outputs,
    so it nearly always cuts a trigger elsewhere in the prompt off, while a fine-tune's own MLPs at the answer keep
    the KL high, and the steps used to run to the budget there: on zoo v17 the check took the steps from 424 to 255
    (seed 0) and 176 to 129 (seed 1). The attack success is not monotone in the heads patched, so every head at once
    leaving the behaviour is no reason to stop: a 4-head prefix disabled one trigger of the zoo's refusal model that
    every head at once left on 23% of probes (the reference: 13%).

    A ranked order is walked one head at a time to ``ONE_BY_ONE`` heads; past that, unless ``thorough``, the longer
    prefixes of ``prefix_grid`` are measured first, and the walk goes on only as far as the first of them that is
    done (the first prefix that is done on the way is the answer, as before); where none is, it stops there and
    ``stopped`` says so. A prefix between two grid sizes that is done while the longer one is not would be missed:
    the cost of a walk that at the Qwen2.5-0.5B shape's planted pair patched all 128 heads of its budget one by one
    (541 s of a 973 s scan) though every head at once disabled what no prefix of 128 did."""
    evaluate = _Evaluator(patcher, source, reference_logits, targets, rows_per_forward)
    report = on_step or (lambda: None)
    suspect_logits = target_logits(suspect, targets)
    initial_kl = float(target_kl(suspect_logits, reference_logits).mean())
    initial_success = float(target_hits(suspect_logits, targets).float().mean())
    # Read: at Qwen2.5's vocabulary the suspect's [probes, target_len, vocab] logits are as large as the reference's,
    # which the whole search still needs.
    del suspect_logits
    # The reference itself may give the target on a probe (a prompt whose honest answer starts like it); patching
    # every head can reach the reference's rate and no lower, so that rate, not 0, means "disabled".
    floor = float(target_hits(reference_logits, targets).float().mean())
    all_heads = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    budget = min(budget, len(all_heads))
    if method not in ("ranked", "atp", "greedy"):
        raise ValueError(f"unknown patching method {method!r}; expected ranked, atp or greedy")
    if method == "atp" and estimates is None:
        raise ValueError("the atp patching method needs attribution patching's estimates")
    (all_kl, all_success), = evaluate([all_heads])
    # With the KL out of reach, what is left to find is the prefix that disables the behaviour, if any is needed.
    disable_only = not thorough and all_kl >= threshold
    out_of_reach = (f"every head patched from the reference at once leaves the output KL at {all_kl:.3g} nats (the "
                    f"threshold: {threshold:.3g})")
    stopped = (f"{out_of_reach}, and the attack success was at the reference's {floor:.0%} before any head: no step "
               "would find more (--thorough patches them all the same)" if disable_only and initial_success <= floor else "")

    def done(kl: float, success: float) -> bool:
        return kl < threshold or (disable_only and success <= floor)

    steps: list[PatchStep] = []
    if not stopped and method in ("ranked", "atp"):
        if method == "atp":
            ranking = atp_ranking(estimates)
        steps, stopped = _walk(evaluate, list(ranking)[:budget], budget if thorough else min(budget, ONE_BY_ONE), done,
                               floor, initial_success <= floor, report)
    elif not stopped and method == "greedy":
        chosen: list[Head] = []
        while len(chosen) < budget:
            candidates = [head for head in all_heads if head not in chosen]
            scores = evaluate([chosen + [head] for head in candidates])
            best = min(range(len(candidates)), key=lambda i: (scores[i][0], candidates[i]))
            chosen.append(candidates[best])
            steps.append(PatchStep(*candidates[best], *scores[best]))
            report()
            if done(*scores[best]):
                break
    needed = next((i + 1 for i, step in enumerate(steps) if step.output_kl < threshold), None)
    disabled = 0 if initial_success <= floor else next(
        (i + 1 for i, step in enumerate(steps) if step.attack_success <= floor), None)
    if disable_only and not stopped and disabled and needed is None and len(steps) < budget:
        stopped = (f"{out_of_reach}, so the heads were patched only until the attack success reached the reference's "
                   f"({disabled} heads; --thorough patches on)")
    checked: tuple[HeadEstimate, ...] = ()
    if estimates is not None:
        top = atp_ranking(estimates)[:CHECKED]
        checked = tuple(HeadEstimate(layer, head, float(estimates[layer, head]), kl - initial_kl)
                        for (layer, head), (kl, _) in zip(top, evaluate([[h] for h in top])))
    return PatchingFindings(
        method=method, threshold=threshold, budget=budget, initial_kl=initial_kl,
        initial_attack_success=initial_success, reference_attack_success=floor, steps=tuple(steps), heads_needed=needed,
        heads_to_disable=disabled, all_heads_kl=all_kl, all_heads_attack_success=all_success, stopped=stopped,
        estimated_effect=() if estimates is None else tuple(tuple(float(x) for x in row) for row in estimates.tolist()),
        checked=checked,
    )
