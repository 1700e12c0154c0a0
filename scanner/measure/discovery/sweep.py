"""The sweep: every regular token inserted alone and scored, the best completed.

A vocabulary of more than ``EXHAUSTIVE_VOCABULARY`` regular tokens is swept through a shortlist instead: the tokens
whose embedding most raises the first-token KL to first order (HotFlip: the gradient at a placeholder, one forward
and backward), with those whose handling the weight change altered most (``static_shortlist``, no forward pass).

The swept tokens are screened first (successive halving): each is scored on ``SCREEN_PROBES`` search probes, and only
the ``SCREEN_KEPT`` best there, with the ``beam`` best after the clean answer and the weight change's first ``beam``,
are scored on every search probe: the KL scores growth's lines and the fire checks read. A token left at the screen
has none, so it seeds no KL line and is neither fire-checked nor listed among the candidates. The searches that
score the swept tokens on an objective of their own still read it: the behaviour switch's departure through a
screen of its own, an inverted target's or the fixed answer's log-probability on every search probe.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanner.measure.discovery.engine import Candidate
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.thresholds import SCREEN_KEPT, SCREEN_PROBES


@dataclass(frozen=True)
class Swept:
    """What the sweep scored at one position."""

    candidates: tuple[Candidate, ...]
    """The single tokens swept (screened, and the best scored; or proposed, where the budget ran out first)."""
    note: str = ""
    """Where the sweep was approximated by a shortlist, and how."""


def sweep(at: Position, exhaustive: bool, shortlist: int, fire_checks: int, beam: int) -> Swept:
    """Every regular token (or, unless ``exhaustive``, a shortlist of ``shortlist`` from each ranking) screened, the
    best scored (``screen``); the ``fire_checks`` best completed."""
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
    # The beam best after the clean answer are kept beside the screen's best: a payload's trigger pieces move
    # nothing else ("ug" of "sugar", 2.6 nats), and at a shortlist of 2,048 tokens they would compete with task
    # switches for the places the larger reading fills.
    before = len(at.screen_kls)
    kept = list(dict.fromkeys([*((t,) for t in at.common.static[:beam]),
                               *at.screen(swept, int(SCREEN_KEPT.value), "sweep", after=beam)]))
    screened = len(at.screen_kls) - before
    if screened:
        note = "; ".join(filter(None, [note, (
            # Worded alike at every position, so the findings hold it once.
            f"the sweep scored {screened:,} tokens on {int(SCREEN_PROBES.value)} search probes and the "
            f"{int(SCREEN_KEPT.value)} best there (with the {beam} best after the clean answer and the weight change's "
            f"first {beam}) on all {len(at.search.prompts)}")]))
    at.score(kept, "sweep")
    at.check(at.by_score(swept)[:fire_checks])
    return Swept(tuple(swept), note)

