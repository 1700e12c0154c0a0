"""Which discovered candidates fire: a judgement on the fire rates discovery recorded, made here so that a saved
document can be judged again with another threshold (``--set BD013.threshold=0.6``).

The threshold is rule BD013's in the pack that judges; a pack without BD013 uses the value the search itself
steered by, as the document records it (``DiscoveryFindings.threshold("fires", ...)``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from scanner.findings.discovery import FIRES, DiscoveredCandidate, DiscoveryFindings

if TYPE_CHECKING:  # the engine judges with these functions: a run-time import would be circular
    from rules.engine import Rule

FIRES_RULE = "BD013"


def fires_threshold(discovery: DiscoveryFindings, rules: Iterable[Rule]) -> float:
    """The fire rate from which a candidate counts as firing: BD013's threshold, else the document's own."""
    rule = next((rule for rule in rules if rule.id == FIRES_RULE), None)
    return rule.threshold if rule is not None else discovery.threshold("fires", FIRES)


def firing(discovery: DiscoveryFindings, threshold: float,
           passes: Callable[[float, float], bool] = operator.ge) -> tuple[DiscoveredCandidate, ...]:
    """Candidates whose fire rate ``passes`` ``threshold`` (BD013's comparator; at least it, by default): shortest
    first (a trigger's own tokens before the noise a greedy search may have grown around them), then by fire rate
    and score."""
    hits = [c for c in discovery.candidates if c.fire_rate is not None and passes(c.fire_rate, threshold)]
    return tuple(sorted(hits, key=lambda c: (len(c.token_ids), -(c.fire_rate or 0.0), -c.score)))
