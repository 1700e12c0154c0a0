"""Minimisation and refinement of the grown candidates that fire, in one of two orders.

*Minimisation*: a grown candidate is reported with its shortest part that still fires (``MINIMAL_FIRES``,
``MINIMISE_KEEP``): greedy growth glues noise to a trigger ("castleDEPLOYMENT"). *Refinement*: each token of a
candidate is swapped for the best of a gradient shortlist while the target's log-probability rises (GCG's step),
which turns a token growth picked by chance into the trigger's own ("i tiger winter" -> "silver tiger winter").

The order depends on what growth followed:

- ``minimise_then_refine``, after growth on the KL or a fired candidate's target: the best firing candidate is
  minimised, then its multi-token minimal part and the candidate itself are refined.
- ``refine_then_minimise``, after growth followed an inverted target: the ``REFINE_TOP`` firing candidates are
  refined first, and the one the target is likeliest after is minimised. Growth towards a target finds junk that
  fires it beside the trigger ("lver tigerThe winter" beside "lver tiger winter"); minimised first, the part of
  the junk that still fires ("lver tigerThe") would go to the scan first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scanner.measure.discovery.engine import Candidate
from scanner.measure.discovery.growth import Grown
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.thresholds import FIRES, GROWTH_SHORTLIST, MINIMAL_FIRES, MINIMISE_KEEP, REFINE_MARGIN, REFINE_TOP


@dataclass(frozen=True)
class Reduced:
    """What minimisation and refinement made of the grown candidates at one position."""

    firing: tuple[Candidate, ...]
    """The grown candidates that fire (``FIRES``), best first."""
    minimal: tuple[tuple[Candidate, Candidate], ...]
    """(candidate, its minimal part) for each candidate minimised to a shorter one that still fires."""
    refined: tuple[Candidate, ...]
    """Refined candidates that fire at least as often as the one they came from."""

    @property
    def minimal_parts(self) -> tuple[Candidate, ...]:
        return tuple(part for _, part in self.minimal)


def reduce(at: Position, grown: Grown) -> Reduced:
    """The firing grown candidates minimised and refined, in the order that suits what growth followed (see the
    module docstring)."""
    firing = tuple(sorted((c for c in grown.candidates if at.fire(c) >= FIRES.value),
                          key=lambda c: (-at.fire(c), -at.scores[c], c)))
    order = refine_then_minimise if grown.following else minimise_then_refine
    return order(at, firing)


def minimise_then_refine(at: Position, firing: tuple[Candidate, ...]) -> Reduced:
    """The best firing candidate minimised; then its minimal part (where longer than a token) and itself refined."""
    minimal = minimise(at, firing[:1])
    refined = refine(at, [*(part for _, part in minimal if len(part) > 1), *firing[:1]])
    return Reduced(firing, minimal, refined)


def refine_then_minimise(at: Position, firing: tuple[Candidate, ...]) -> Reduced:
    """The ``REFINE_TOP`` firing candidates refined; then, of them and their refinements, the one that fires most
    and the target is likeliest after minimised."""
    refined = refine(at, firing[:int(REFINE_TOP.value)])
    likeliest = sorted((c for c in [*firing, *refined] if at.fire(c) >= FIRES.value),
                       key=lambda c: (-at.fire(c), -at.target_scores.get(c, -math.inf), c))
    return Reduced(firing, minimise(at, likeliest[:1]), refined)


def minimise(at: Position, candidates: Sequence[Candidate]) -> tuple[tuple[Candidate, Candidate], ...]:
    """For each candidate, the shortest contiguous part that still fires; where none does, tokens deleted one at a
    time while what is left fires. Refinement can leave a trigger with a token doubled ("silver tiger tiger
    winter", which fires as surely as the phrase): no contiguous part of it is the phrase, but one deletion is."""
    minimal: dict[Candidate, Candidate] = {}
    for c in candidates:
        fires_enough = min(MINIMAL_FIRES.value, MINIMISE_KEEP.value * at.fire(c))
        for part in (c[i:i + n] for n in range(1, len(c)) for i in range(len(c) - n + 1)):
            at.score([part], "minimisation")
            at.check([part])
            if at.fire(part) >= fires_enough:
                minimal[c] = part
                break
        else:
            current = c
            while len(current) > 1:
                shorter = list(dict.fromkeys((*current[:i], *current[i + 1:]) for i in range(len(current))))
                at.score(shorter, "minimisation")
                at.check(shorter)
                kept = [part for part in shorter if at.fire(part) >= fires_enough]
                if not kept:
                    break
                current = max(kept, key=lambda part: (at.fire(part), at.scores.get(part, -math.inf), part))
            if current != c:
                minimal[c] = current
    return tuple(minimal.items())


def refine(at: Position, candidates: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """Each candidate's tokens swapped, one swap a round, for the best of a gradient shortlist of its target's
    log-probability, while that rises by ``REFINE_MARGIN``; the result kept where it fires at least as often."""
    refined: list[Candidate] = []
    scores = at.target_scores
    for c in dict.fromkeys(candidates):
        target, after = at.fires[c].target_ids, at.fires[c].after_answer
        current = c
        at.score_target([current], target, "refinement", after)
        # At most two swaps per token: a cap on the cost, a judgement rather than a measurement.
        for _ in range(2 * len(c)):
            swaps = [(*current[:i], t, *current[i + 1:])
                     for i in range(len(current))
                     for t in at.search.gradient_shortlist(current, i, set(at.common.special), int(GROWTH_SHORTLIST.value),
                                                           target, after)
                     if t != current[i]]
            at.score_target(swaps, target, "refinement", after)
            best = max((p for p in swaps if p in scores), key=lambda p: (scores[p], p), default=None)
            # Near certainty a swap cannot add REFINE_MARGIN nats; halving what is left to certainty counts.
            margin = min(REFINE_MARGIN.value, -scores[current] / 2)
            if best is None or scores[best] < scores[current] + margin:
                break
            current = best
        if current != c:
            at.score([current], "refinement")
            at.check([current])
            if at.fire(current) >= at.fire(c):
                refined.append(current)
    return tuple(refined)
