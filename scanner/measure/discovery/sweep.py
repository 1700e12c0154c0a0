"""The sweep: every regular token inserted alone and scored, the best completed.

A vocabulary of more than ``EXHAUSTIVE_VOCABULARY`` regular tokens is swept through a shortlist instead: the tokens
whose embedding most raises the first-token KL to first order (HotFlip: the gradient at a placeholder, one forward
and backward), with those whose handling the weight change altered most (``static_shortlist``, no forward pass).

The swept tokens are screened first (successive halving): each is scored on ``SCREEN_PROBES`` search probes, and only
the ``SCREEN_KEPT`` best there, with the ``beam`` best after the clean answer and the weight change's first ``beam``,
are scored on every search probe: the KL scores growth's lines and the fire checks read. A token left at the screen
has none, so it seeds no KL line and is neither fire-checked nor listed among the candidates; the searches that
score every swept token on an objective of their own (the behaviour switch's departure, an inverted target's or the
fixed answer's log-probability) still read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanner.measure.discovery.engine import Candidate, Search
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
    kept, screened = screen(at, swept, [(t,) for t in at.common.static[:beam]], beam)
    if screened:
        note = "; ".join(filter(None, [note, (
            # Worded alike at every position, so the findings hold it once.
            f"the sweep scored {screened:,} tokens on {int(SCREEN_PROBES.value)} search probes and the "
            f"{int(SCREEN_KEPT.value)} best there (with the {beam} best after the clean answer and the weight change's "
            f"first {beam}) on all {len(at.search.prompts)}")]))
    at.score(kept, "sweep")
    at.check(at.by_score(swept)[:fire_checks])
    return Swept(tuple(swept), note)


def screen(at: Position, swept: list[Candidate], always: list[Candidate], beam: int) -> tuple[list[Candidate], int]:
    """The ``SCREEN_KEPT`` of ``swept`` whose trigger-specific KL (the larger of its two readings, as ``Position.score``
    keeps) is highest over ``SCREEN_PROBES`` search probes, the ``beam`` whose KL after the clean answer is highest
    there, and ``always``, best first; and how many the screen scored. All of ``swept`` (and 0) where it holds no
    more than ``SCREEN_KEPT``, the search has no more probes than the screen, or the budget is spent.

    The screen reads the probes whose clean answer ended first, so the KL after the answer is read on it too: a
    payload's trigger pieces move nothing else ("ug" of "sugar", 2.6 nats), and at a shortlist of 2,048 tokens they
    would compete with task switches for the places the larger reading fills. Its scores are net of the same
    probes' clean KL. Where the budget runs out during the screen, only what it scored is kept."""
    search = at.search
    size, kept = int(SCREEN_PROBES.value), int(SCREEN_KEPT.value)
    if len(swept) <= kept or len(search.prompts) <= size or search.budget.exhausted:
        return swept, 0
    probes = sorted(range(len(search.prompts)), key=lambda i: (search.answers[i] is None, i))[:size]
    screened = Search(search.suspect, search.reference, search.tokenizer, [search.prompts[i] for i in probes],
                      search.rows_per_forward, search.budget, search.position)
    screened.answers = [search.answers[i] for i in probes]
    first, end = screened.kls(screened.clean_rows)
    clean = (float(first.mean()), float(end.nanmean()) if not end.isnan().all() else 0.0)
    read = dict(zip(swept, screened.score(swept, clean, at._progress("sweep: screen", len(swept)))))
    best = sorted(read, key=lambda c: (-max(read[c]), c))
    after = sorted(read, key=lambda c: (-read[c][1], c))[:beam]
    return list(dict.fromkeys([*always, *best[:kept], *after])), len(read)
