"""What judging produces: the verdict, the rules that fired, and the fail-on policy.

Plain frozen data, torch-free; ``rules.document.Document`` carries it beside
the findings it was judged from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERDICT_SCHEMA_VERSION = 4
"""3: ``discovered_firing``; 4: the explanation's parts (``headline``, ``points``, ``context``, ``caveats``,
``next_steps``) beside its text."""
LEVELS = ("CLEAN", "SUSPICIOUS", "BACKDOORED")
FAIL_ON_CHOICES = ("SUSPICIOUS", "BACKDOORED", "never")


@dataclass(frozen=True)
class FiredRule:
    rule_id: str
    title: str
    severity: str
    confidence: str
    effect: str
    trigger: str | None
    value: float
    comparator: str
    threshold: float
    sentence: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotEvaluated:
    """A rule that could not be evaluated (for a trigger), and why: a gap in the evidence, stated."""

    rule_id: str
    trigger: str | None
    reason: str


@dataclass(frozen=True)
class Verdict:
    schema_version: int
    level: str
    """One of ``LEVELS``."""
    explanation: str
    """The whole verdict in one paragraph (``headline``, ``points``, ``context``, ``caveats``, ``next_steps``)."""
    fired: tuple[FiredRule, ...]
    rules_evaluated: tuple[str, ...]
    triggers_implicated: tuple[str, ...]
    """Triggers named by a fired ``backdoor`` rule, strongest first."""
    not_evaluated: tuple[NotEvaluated, ...] = ()
    discovered_firing: tuple[str, ...] = ()
    """Discovered candidates judged firing (``rules.discovery``), in order; their records are in the findings."""
    fires_threshold: float | None = None
    """The fire rate that judgement used; None when discovery did not run."""
    headline: str = ""
    """``explanation``'s first sentence: the level and its strongest evidence (CLEAN: what was tested)."""
    points: tuple[str, ...] = ()
    """The other fired rules that move the verdict, a sentence each ending in its rule id."""
    context: tuple[str, ...] = ()
    """Informational rules that fired: context, not evidence of a backdoor."""
    caveats: tuple[str, ...] = ()
    """What the evidence could not cover, and how far a CLEAN verdict reaches."""
    next_steps: tuple[str, ...] = ()
    """What a reader does with this verdict."""

    @property
    def triggers_in_evidence(self) -> frozenset[str]:
        """Triggers a rule that moves the verdict fired on (not an informational one): those a reader gets in full,
        a row in the terminal and a section in the report; the rest share one line and one table. A catalogue
        string whose only reading is BD004's attention is context, not a finding."""
        return frozenset(rule.trigger for rule in self.fired if rule.trigger is not None and rule.effect != "info")

    def fails(self, fail_on: str) -> bool:
        """The fail-on policy: whether this verdict is at or above ``fail_on`` (``never``: never)."""
        if fail_on.upper() == "NEVER":
            return False
        return LEVELS.index(self.level) >= LEVELS.index(fail_on.upper())
