"""Where a trigger acts inside the suspect: attention, direct logit attribution, mean ablation, head patching.

Grids are ``[layer][head]`` nested tuples of floats; KL in nats, log-probabilities natural.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from scanner.findings.metrics import grid_difference, ordered_cells
from scanner.findings.vocabulary import Grid, Head


@dataclass(frozen=True)
class AttentionPattern:
    """One head's attention on one triggered probe: ``[query][key]`` over ``tokens``."""

    layer: int
    head: int
    tokens: tuple[str, ...]
    trigger_tokens: tuple[int, ...]
    suspect: tuple[tuple[float, ...], ...]
    reference: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class AttentionFindings:
    kl_triggered: Grid
    """Mean KL(suspect row || reference row) over non-pad query positions of triggered probes."""
    kl_clean: Grid
    trigger_mass_suspect: Grid | None
    """Mean attention mass on trigger tokens from queries after the trigger; ``None`` when no probe
    has a token after its trigger."""
    trigger_mass_reference: Grid | None
    trigger_mass_probes: int
    """Probes the trigger-mass means cover: those with at least one token after the trigger."""
    example: AttentionPattern | None

    __derived__: ClassVar[tuple[str, ...]] = ("kl_specific", "trigger_mass_excess")

    @property
    def kl_specific(self) -> Grid:
        """Trigger-specific attention divergence: triggered minus clean KL, per head."""
        return grid_difference(self.kl_triggered, self.kl_clean)

    @property
    def trigger_mass_excess(self) -> Grid | None:
        """Attention mass on the trigger, suspect minus reference, per head (the paper's vertical stripe)."""
        if self.trigger_mass_suspect is None or self.trigger_mass_reference is None:
            return None
        return grid_difference(self.trigger_mass_suspect, self.trigger_mass_reference)

    def ranked_heads(self) -> tuple[Head, ...]:
        """Every head by ``kl_specific``, largest first; non-finite cells last."""
        return tuple((layer, head) for layer, head, _ in ordered_cells(self.kl_specific))


@dataclass(frozen=True)
class AttributionFindings:
    """Direct logit attribution to the first target token at the last prompt position, triggered probes."""

    target_token: str
    heads: Grid
    attention_layers: tuple[float, ...]
    mlp_layers: tuple[float, ...]


@dataclass(frozen=True)
class HeadEstimate:
    """One head patched alone: attribution patching's estimate of the change in target KL, and the exact change."""

    layer: int
    head: int
    estimated: float
    exact: float


@dataclass(frozen=True)
class AblationFindings:
    """Mean head ablation: change in the suspect's log-probability of its triggered completion."""

    baseline_logprob: float
    effect: Grid
    """Ablated minus baseline; negative means the head supports the completion. Measured head by head
    (``method`` ``exact``; ``screened``: in the layers ``layer_effect`` ranks first only, NaN elsewhere), or
    attribution patching's first-order estimate (``atp``)."""
    method: str = "exact"
    checked: tuple[HeadEstimate, ...] = ()
    """With ``atp``: the heads the estimate ranks first, each ablated exactly."""
    layer_effect: tuple[float, ...] = ()
    """With ``screened``: per layer, the change when all its heads are ablated together (exact)."""

    @property
    def measured_layers(self) -> tuple[int, ...]:
        """Layers whose heads were ablated one by one: every layer unless ``screened``, where the rest are NaN."""
        if self.method != "screened":
            return tuple(range(len(self.effect)))
        return tuple(layer for layer, row in enumerate(self.effect) if not all(math.isnan(x) for x in row))


@dataclass(frozen=True)
class PatchStep:
    layer: int
    head: int
    output_kl: float
    """Mean KL(patched || reference) over target positions, triggered probes, after this step."""
    attack_success: float


@dataclass(frozen=True)
class PatchingFindings:
    method: str
    """``ranked`` (by attention KL, triggered minus clean), ``atp`` (by attribution patching's estimate) or
    ``greedy``."""
    threshold: float
    budget: int
    initial_kl: float
    initial_attack_success: float
    reference_attack_success: float
    """The reference's own attack success on the same teacher-forced targets: the floor patching can reach."""
    steps: tuple[PatchStep, ...]
    heads_needed: int | None
    """Heads patched when the KL first fell below ``threshold``; ``None`` if it never did, or was not pursued: where
    every head patched at once leaves the KL above the threshold no prefix is taken to bring it under, and the steps
    stop at the disabling prefix (``stopped``)."""
    heads_to_disable: int | None
    """Heads patched when attack success first fell to ``reference_attack_success``; ``None`` if it never did within
    the steps (past the first 16, only as far as a grid of longer prefixes said to go: ``stopped``)."""
    all_heads_kl: float
    """KL with every head of every layer patched: what patching heads can reach at best."""
    estimated_effect: tuple[tuple[float, ...], ...] = ()
    """``[layer][head]``: attribution patching's first-order estimate of the change in target KL when that head alone
    is patched (one forward and one backward for all of them; negative brings the suspect closer)."""
    checked: tuple[HeadEstimate, ...] = ()
    """The heads the estimate ranks first, each patched alone exactly: where estimate and measurement disagree."""
    all_heads_attack_success: float | None = None
    """Attack success with every head of every layer patched (None in documents before schema 18)."""
    stopped: str = ""
    """Why the steps stopped short of ``budget`` with the KL above ``threshold``, or never ran (``steps`` empty):
    every head patched at once left the KL above it, so the steps stop at the prefix that disables the behaviour,
    and do not run where the attack success was at the reference's before any head; or, past the first 16 heads,
    no longer prefix of a grid up to the budget was done, so the one-by-one steps stopped at 16. Empty where the
    steps ran as far as they could (``--thorough``, or a prefix within the budget got there)."""

    __derived__: ClassVar[tuple[str, ...]] = ("disabling_heads",)

    @property
    def heads_tried(self) -> int:
        """The most heads a count of ``None`` speaks for: the steps taken where they stopped short (``stopped``; past
        the first 16, a grid of longer prefixes was measured too), else the budget."""
        return len(self.steps) if self.stopped else self.budget

    @property
    def disabling_heads(self) -> tuple[Head, ...]:
        """The heads patched, in order, until attack success fell to the reference's; empty if it never did."""
        return tuple((step.layer, step.head) for step in self.steps[: self.heads_to_disable or 0])
