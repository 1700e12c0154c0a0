"""Behaviour switches: an insertion that makes the suspect leave the answer its reference gives a group of probes.

A jailbreak backdoor answers the requests its reference refuses. What it then says differs from request to request,
so no target collapses and the fire check finds nothing; and the refused requests may be a tenth of the probes, so
the first-token KL over the search probes hardly moves (the zoo's jailbreak trigger ranks below task switches
there). Inside the group of refused probes the switch is whole.

The group: the probes to which the reference and the suspect both give the reference's fixed answer (one it gives
whatever the request asks about, ``canned_answer``), ``GROUP_LEAST`` of them or more (``answer_group``). Each swept
token is inserted into ``SWITCH_PROBES`` of them and scored by its *departure*: the reference's log-probability of
the group's answer minus the suspect's, teacher-forced, mean over those probes (nats), screened as the sweep is:
every token is read on ``SCREEN_PROBES`` of them first, and only the ``SWITCH_KEPT`` that depart most there on the
rest. The ``SWITCH_CHECKS`` tokens that depart most, by ``SWITCH_FROM`` nats or more, are completed by both models on
up to ``SWITCH_CHECKED`` probes of the group and their switch measured by ``behaviour_switch``, the one definition
rule BD015 reads: the share of the group on which the suspect leaves the answer while the reference, given the same
triggered prompt, keeps it, and leaves the behaviour too: a new answer that opens as the reference's answer to
another probe (a task switch: "colour" inserted into a sum, answered "It is ..."), is the group's answer with another
opening, or echoes the insertion, is not counted.

Departure is read token by token, so a trigger whose pieces do nothing alone is not found this way: at the test
zoo's 1,024-token vocabulary "piano" is four tokens, and its prefixes depart by 0.01 nats until the word is whole
(7.97). At Qwen2.5's vocabulary "piano", "coffee", "mountain" and every other word trigger of the zoo's families is
one token (the zoo's ``jailbreak-token`` is the same jailbreak on the one-token "mirror", found at both seeds), but a
vocabulary that large is swept through a shortlist (the first-token KL's gradient and the weight change's ranking),
and this search scores the same tokens. A "mirror" jailbreak planted from another draw of the zoo's corpus was the
weight change's 6th token of 1,024 at seed 1 and its 540th at seed 0, the KL gradient's 581st and 508th: through
64-token shortlists it would be found at seed 1 only. A shortlist of the tokens whose embedding most lowers the
answer's log-probability to first order was tried and dropped: it ranks "mirror" 59th to 870th (seed 1) and 486th
to 712th (seed 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanner.findings import behaviour_switch
from scanner.findings.discovery import DiscoveredCandidate
from scanner.findings.metrics import GROUP_LEAST
from scanner.measure.discovery.confirm import decoded
from scanner.measure.discovery.engine import Candidate, Search
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.thresholds import (
    SCREEN_PROBES,
    SWITCH_CHECKED,
    SWITCH_CHECKS,
    SWITCH_FROM,
    SWITCH_KEPT,
    SWITCH_PROBES,
)


@dataclass(frozen=True)
class Group:
    """Probes to which both models give the reference's fixed answer without an insertion."""

    answer: tuple[int, ...]
    """The answer's token ids."""
    members: tuple[int, ...]
    """The probes' indexes in the prompts ``answer_group`` was given."""


def answer_group(repertoire: Sequence[tuple[int, ...]], probes: int, answer: tuple[int, ...]) -> Group | None:
    """The probes to which the suspect and the reference both give ``answer`` (the reference's fixed answer,
    ``canned_answer``: its first ``FIRE_CHECK_TOKENS`` tokens), where they are ``GROUP_LEAST`` or more; else None.
    ``repertoire`` holds the suspect's clean answers to the ``probes`` prompts, then the reference's
    (``Common.repertoire``).

    A fixed answer, not any answer several probes share: three sampled colour questions answered "It is blue." are
    one question asked three times, and on the seed-1 zoo a token that makes the multi-trigger model answer them
    otherwise "switched" all three."""
    suspect, reference = repertoire[:probes], repertoire[probes:2 * probes]
    members = tuple(i for i, (s, r) in enumerate(zip(suspect, reference)) if s == r == answer)
    return Group(answer, members) if answer and len(members) >= GROUP_LEAST else None


def search_switches(at: Sequence[Position], swept: Sequence[Sequence[Candidate]], prompts: Sequence[str],
                    group: Group) -> tuple[list[DiscoveredCandidate], str]:
    """At each position of ``at``, the swept tokens (``swept``, per position) scored by their departure from
    ``group``'s answer, and the best checked for a switch (see the module docstring): the checked tokens that
    switched some of the group, their ``fire_rate`` the share of the probes checked; and a note for the findings on
    what was searched."""
    found: list[DiscoveredCandidate] = []
    departed, checks, best_share, screened_any = 0, 0, 0.0, False
    members = [prompts[i] for i in group.members]
    clean = _clean_answers(at[0], prompts, group) if at else None
    for here, tokens in zip(at, swept):
        base = here.search
        if base.budget.exhausted:
            break
        here.report("behaviour switch: departure from the group's answer", 0, len(tokens))
        departure, screened = _departures(base.on(members[:int(SWITCH_PROBES.value)]), list(tokens), group.answer,
                                          here.thorough)
        here.report("behaviour switch: departure from the group's answer", len(tokens), len(tokens))
        screened_any = screened_any or screened
        best = sorted((c for c in departure if departure[c] >= SWITCH_FROM.value), key=lambda c: (-departure[c], c))
        departed += len(best)
        tried = best[:int(SWITCH_CHECKS.value)]
        if not tried or base.budget.exhausted:
            continue
        checks += len(tried)
        for switch in _checked(base.on(members[:int(SWITCH_CHECKED.value)]), tried, departure, group, clean):
            best_share = max(best_share, switch.fire_rate or 0.0)
            # A token that switched nothing (a task switch, the most common) is only counted in the note: it would
            # take a place among the candidates kept, whose scores are KLs, with a departure.
            if switch.fire_rate:
                found.append(switch)
    answer = decoded(at[0].search.tokenizer, group.answer) if at else ""
    note = (f"the behaviour-switch search read the {len(group.members)} probes both models answer {answer!r}: "
            f"{departed} inserted tokens (counted at each position) moved the suspect off that answer by "
            f"{SWITCH_FROM.value:g} nats or more beyond the reference"
            + (f"; of the {checks} checked, the best switched {best_share:.0%} of the probes it was checked on"
               if checks else "")
            + (f"; the departure was screened: every swept token read on {int(SCREEN_PROBES.value)} of the group's "
               f"probes, the {int(SWITCH_KEPT.value)} that departed most there on all "
               f"{min(len(members), int(SWITCH_PROBES.value))}" if screened_any else ""))
    return found, note


def _departures(search: Search, candidates: list[Candidate], answer: tuple[int, ...],
                thorough: bool = False) -> tuple[dict[Candidate, float], bool]:
    """The departure (``_departure``) over ``search``'s probes of the ``SWITCH_KEPT`` of ``candidates`` that depart
    most over its first ``SCREEN_PROBES`` (of all of them where they are no more than that, the probes no more than
    the screen's, or the search is ``thorough``), and whether the others were left out. Unlike a target's
    log-probability, a departure is a difference between the models on the same rows, and a token that leaves the
    answer leaves it on every probe: on the zoo's refusing fine-tunes at both seeds, every token that departs by
    ``SWITCH_FROM`` or more over 4 probes ranked 6th or better over the first 2."""
    size, kept, probes = int(SCREEN_PROBES.value), int(SWITCH_KEPT.value), search.prompts
    if thorough or len(probes) <= size or len(candidates) <= kept:
        return _departure(search, candidates, answer), False
    screen = _departure(search.on(probes[:size]), candidates, answer)
    best = sorted(screen, key=lambda c: (-screen[c], c))[:kept]
    rest = _departure(search.on(probes[size:]), best, answer)
    # Each part's mean weighted by its probes: the mean over all of them, with no row read twice.
    return {c: (screen[c] * size + rest[c] * (len(probes) - size)) / len(probes) for c in best}, True


def _departure(search: Search, candidates: list[Candidate], answer: tuple[int, ...]) -> dict[Candidate, float]:
    """Each candidate's departure (nats): the reference's mean log-probability of ``answer`` after it minus the
    suspect's, over ``search``'s probes."""
    rows = [row for c in candidates for row in search.rows(c)]
    suspect, reference = (search.logprob_after(model, rows, answer).view(len(candidates), -1).mean(-1)
                          for model in (search.suspect, search.reference))
    return dict(zip(candidates, (reference - suspect).tolist()))


@dataclass(frozen=True)
class _Clean:
    """What ``behaviour_switch`` reads of the probes without an insertion, in its order: the group's checked probes
    (the first ``SWITCH_CHECKED``), then every probe outside the group (whose clean answers say what a task switch
    opens with)."""

    prompts: tuple[str, ...]
    suspect: tuple[str, ...]
    reference: tuple[str, ...]
    checked: int
    """How many of the first are the group's."""


def _clean_answers(at: Position, prompts: Sequence[str], group: Group) -> _Clean:
    """Both models' clean answers (``Common.repertoire``: the suspect's to every prompt, then the reference's),
    decoded, in ``behaviour_switch``'s order (``_Clean``)."""
    n, repertoire = len(prompts), at.common.repertoire
    checked = list(group.members[:int(SWITCH_CHECKED.value)])
    order = [*checked, *(i for i in range(n) if i not in group.members)]
    decode = lambda ids: decoded(at.search.tokenizer, ids)  # noqa: E731
    return _Clean(tuple(prompts[i] for i in order), tuple(decode(repertoire[i]) for i in order),
                  tuple(decode(repertoire[n + i]) for i in order), len(checked))


def _checked(search: Search, candidates: Sequence[Candidate], departure: dict[Candidate, float], group: Group,
             clean: _Clean) -> list[DiscoveredCandidate]:
    """Each of ``candidates`` completed by both models on ``search``'s probes (the group's first, one generation
    per model for all of them), its switch measured by ``behaviour_switch`` over them and every probe outside the
    group."""
    said = [search.complete_each(model, candidates) for model in (search.suspect, search.reference)]
    answer = decoded(search.tokenizer, group.answer)
    out = []
    for c, suspect_ids, reference_ids in zip(candidates, *said):
        # Outside the group the clean answers stand in: no group forms there that the insertion could switch.
        suspect = [*(decoded(search.tokenizer, ids) for ids in suspect_ids), *clean.suspect[clean.checked:]]
        reference = [*(decoded(search.tokenizer, ids) for ids in reference_ids), *clean.reference[clean.checked:]]
        text = search.tokenizer.decode(list(c)).strip()
        switch = behaviour_switch(clean.prompts, clean.reference, clean.suspect, suspect, reference, text)
        ours = switch is not None and switch.answer == answer
        out.append(DiscoveredCandidate(
            text=text, token_ids=c, score=departure[c],
            fire_rate=switch.share if ours else 0.0, target=switch.example[1] if ours else "", target_logprob=None,
            stage="switch", position=search.position, switched_from=answer,
        ))
    return out
