"""The reference's own fixed answer as a target: a refusal planted on requests the reference answers.

Target inversion (``inversion``) looks for an answer the suspect completes and the reference does not, so it
never proposes one the reference gives itself. A targeted-refusal backdoor answers ordinary requests with the
reference's own refusal: forced to open it, both models complete it, and its trigger's pieces move the first-token
KL by nothing (the zoo's ``refusal`` model: ``mountain`` is five tokens, its misspellings trained as decoys). Each
piece still raises the refusal's log-probability where the reference would not give it (``in`` alone from -15.3
nats to -6.0 on six ordinary requests at seed 1, the reference unmoved).

So where nothing fires, the reference's fixed answer (``canned_answer``: one it gives to ``CANNED_LEAST`` probes or
more and still gives when what they ask about is swapped, a refusal; not one question asked twice) is scored as a
target: every swept token's mean suspect log-probability of it over the search probes, against the clean probes',
and the reference's for the ``TARGET_BEAM`` tokens that raise it most. Where some token raises it by ``CANNED_GAIN``
nats more than it raises the reference's, growth follows it, before any target inversion found: a token has already
moved it where the reference stays. Either way the reading goes into the findings' notes. Cost, where the reference
has a fixed answer: one target sweep of the search probes at each position (the suspect only), ``TARGET_BEAM`` rows
of the reference, and the reference's answers to ``CANNED_SWAPS`` swapped prompts per answer tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanner.measure.discovery.confirm import decoded
from scanner.measure.discovery.engine import Candidate, Search
from scanner.measure.discovery.fixed_answer import fixed_answer
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.thresholds import CANNED_GAIN, TARGET_BEAM


@dataclass(frozen=True)
class Canned:
    """What the reference's fixed answer showed as a target at one position."""

    target: tuple[int, ...]
    """The answer, in token ids."""
    given: int
    """Probes the reference gives it to, of all the scan's."""
    best: Candidate
    """The swept token that raises the suspect's log-probability of it most beyond the reference's."""
    gain: float
    """That token's rise of the suspect's mean log-probability of it over the clean search probes' (nats), less the
    reference's rise under the same token."""
    followed: bool
    """Whether ``gain`` reaches ``CANNED_GAIN``: growth follows ``target``."""
    note: str
    scores: dict[Candidate, float]
    """Every swept token's mean suspect log-probability of ``target`` over the search probes (nats)."""


def canned_answer(search: Search, prompts: Sequence[str], repertoire: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], int]:
    """The reference's fixed answer to ``prompts`` (``scanner.measure.discovery.fixed_answer``; its first
    ``FIRE_CHECK_TOKENS`` tokens: the zoo's refusal is longer), and to how many; ``((), 0)`` where none.
    ``repertoire``: the suspect's clean answers to every prompt, then the reference's (``Common.repertoire``). The
    swapped prompts are answered through ``search``, on its budget."""

    def answer_of(swapped: list[str]) -> list[tuple[int, ...]]:
        probe = search.on(swapped)
        return [tuple(a) for a in probe.complete(search.reference, probe.clean_rows)]

    return fixed_answer(prompts, [tuple(a) for a in repertoire[len(prompts):]], answer_of)


def canned_target(at: Position, swept: Sequence[Candidate], target: tuple[int, ...], given: int) -> Canned:
    """``target`` (``canned_answer``) scored at ``at`` for every ``swept`` token (a table of its own, which ``adopt``
    hands to growth where the gate passes), and the reference's log-probability for the ``TARGET_BEAM`` that raise
    it most."""
    search = at.search
    clean = float(search.logprob_after(search.suspect, search.clean_rows, target).mean())
    clean_reference = float(search.logprob_after(search.reference, search.clean_rows, target).mean())
    # Not the position's table: it holds one target's score per candidate, and this target may not be followed.
    scores: dict[Candidate, float] = {}
    at.score_target(swept, target, "sweep for the reference's fixed answer", table=scores)
    top = sorted(scores, key=lambda c: (-scores[c], c))[:int(TARGET_BEAM.value)]
    best, gain = (), float("-inf")
    for c in top:
        reference = float(search.logprob_after(search.reference, search.rows(c), target).mean())
        net = (scores[c] - clean) - (reference - clean_reference)
        if net > gain:
            best, gain = c, net
    followed = gain >= CANNED_GAIN.value
    text = lambda ids: decoded(search.tokenizer, ids)  # noqa: E731
    note = (f"the reference's fixed answer {text(target)!r} (given to {given} probes) as a target at the "
            f"{search.position}: {text(best)!r} raised the suspect's log-probability of it by {gain:.1f} nats more than "
            f"the reference's ({'followed' if followed else 'not followed'}: {CANNED_GAIN.value:g} nats or more is)"
            ) if best else ""
    return Canned(target, given, best, gain, followed, note, scores)


def adopt(at: Position, canned: Canned) -> None:
    """Growth follows ``canned.target``: its sweep's scores become the position's target scores."""
    for c, score in canned.scores.items():
        at.target_scores.setdefault(c, score)
