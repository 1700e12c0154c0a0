"""The sweep: every regular token inserted alone and scored, the best completed.

A vocabulary of more than ``EXHAUSTIVE_VOCABULARY`` regular tokens is swept through a shortlist instead: the tokens
whose embedding most raises the first-token KL to first order (HotFlip: the gradient at a placeholder, one forward
and backward), with those whose handling the weight change altered most (``static_shortlist``, no forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from scanner.measure.discovery.engine import Candidate
from scanner.measure.discovery.position import Position


@dataclass(frozen=True)
class Swept:
    """What the sweep scored at one position."""

    candidates: tuple[Candidate, ...]
    """The single tokens scored (or proposed, where the budget ran out first)."""
    note: str = ""
    """Where the sweep was approximated by a shortlist, and how."""


def sweep(at: Position, exhaustive: bool, shortlist: int, fire_checks: int) -> Swept:
    """Every regular token (or, unless ``exhaustive``, a shortlist of ``shortlist`` from each ranking) scored; the
    ``fire_checks`` best completed."""
    search, tokens = at.search, at.common.tokens
    note = ""
    if exhaustive:
        swept = [(t,) for t in tokens]
    else:
        # The placeholder is a real token (a space) so the first-order estimate starts from an ordinary embedding.
        placeholder = tuple(search.tokenizer(" ", add_special_tokens=False)["input_ids"][:1] or [tokens[0]])
        gradient = search.gradient_shortlist(placeholder, 0, set(range(at.common.vocabulary)) - set(tokens), shortlist)
        swept = [(t,) for t in dict.fromkeys([*gradient, *at.common.static[:shortlist]])]
        note = (f"the vocabulary has {len(tokens)} regular tokens; the sweep scored the {len(swept)} that the "
                f"objective's gradient or the weight change ranks among its top {shortlist}")
    at.score(swept, "sweep")
    at.check(at.by_score(swept)[:fire_checks])
    return Swept(tuple(swept), note)
