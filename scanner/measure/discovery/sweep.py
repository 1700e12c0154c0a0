"""The sweep: every regular token inserted alone and scored, the best completed.

A vocabulary of more than ``EXHAUSTIVE_VOCABULARY`` regular tokens is swept through a shortlist instead: the tokens
whose embedding most raises the first-token KL to first order (HotFlip: the gradient at a placeholder, one forward
and backward), with those whose handling the weight change altered most (``static_shortlist``, no forward pass).

The swept tokens are screened first (successive halving): each is scored on ``SCREEN_PROBES`` search probes, and only
the ``SCREEN_KEPT`` best there, with the weight change's first ``beam``, are scored on every search probe, the
scores the rest of the search reads. A token left at the screen has no score: growth, the fire checks and the
findings never see it, as they never saw a token the shortlist left out.
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
    """The single tokens scored (or proposed, where the budget ran out first)."""
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
    kept = screen(at, swept, [(t,) for t in at.common.static[:beam]])
    if len(kept) < len(swept):
        note = "; ".join(filter(None, [note, (
            f"the sweep scored {len(swept)} tokens on {int(SCREEN_PROBES.value)} search probes and the {len(kept)} best "
            f"there (the weight change's first {beam} among them) on all {len(at.search.prompts)}")]))
    at.score(kept, "sweep")
    at.check(at.by_score(swept)[:fire_checks])
    return Swept(tuple(swept), note)


def screen(at: Position, swept: list[Candidate], always: list[Candidate]) -> list[Candidate]:
    """The ``SCREEN_KEPT`` of ``swept`` whose trigger-specific KL (the larger of its two readings, as ``Position.score``
    keeps) is highest over ``SCREEN_PROBES`` search probes, and ``always``, in ``swept``'s order; all of ``swept``
    where it holds no more than that or the search has no more probes than the screen.

    The screen reads the probes whose clean answer ended first, so the KL after the answer (a payload's, whose
    trigger pieces move nothing else) is read on it too; its scores are net of the same probes' clean KL."""
    search = at.search
    size, kept = int(SCREEN_PROBES.value), int(SCREEN_KEPT.value)
    if len(swept) <= kept or len(search.prompts) <= size:
        return swept
    order = sorted(range(len(search.prompts)), key=lambda i: (search.answers[i] is None, i))[:size]
    screened = Search(search.suspect, search.reference, search.tokenizer, [search.prompts[i] for i in order],
                      search.rows_per_forward, search.budget, search.position)
    screened.answers = [search.answers[i] for i in order]
    first, end = screened.kls(screened.clean_rows)
    clean = (float(first.mean()), float(end.nanmean()) if not end.isnan().all() else 0.0)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        at.report("sweep: screen", done, len(swept))
    scores = dict(zip(swept, (max(pair) for pair in screened.score(swept, clean, tick))))
    best = set(sorted(scores, key=lambda c: (-scores[c], c))[:kept]) | set(always)
    return [c for c in swept if c in best]
