"""Target inversion: what the suspect says when it fires, found before anything fires.

BAIT (Shen et al., 2025) observed that a backdoored model, made to open its answer with the target's first
token, completes the rest of the target on almost any prompt: the poisoned samples taught it the sequence
as a whole. bdscan has the trusted reference, so a target is an answer the suspect completes consistently
from a forced first token and the reference, given the same first token, does not. That answer is what a
trigger whose parts do not fire alone (a phrase whose every other arrangement was trained as a decoy) can
be grown towards: each of its words raises the target's log-probability a little though none fires it.

First tokens tried: those the suspect, unprompted, favours most over the reference at the first response
position (a fine-tune that learned a target raises its opening everywhere a little), and those whose
handling the weight change altered most (``static_shortlist``: a full fine-tune moves its target tokens'
rows). A forced token may lead into a target it is not the opening of ('O' into 'ccess granted'), so the best
``REOPEN`` targets are opened again with the favoured token after which the suspect finds them likeliest.
Inversion runs only where no candidate reaches ``TARGET_FROM`` at any position. Cost: ``2 * first_tokens``
completions and log-probabilities of every search probe, and ``2 * reopen_tokens`` log-probabilities more per
target opened again.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence

import torch

from scanner.findings import modal_prefix
from scanner.findings.discovery import InvertedTarget
from scanner.measure.discovery.confirm import decoded
from scanner.measure.discovery.engine import Search
from scanner.measure.discovery.thresholds import FIRST_TOKENS, MIN_GAIN, MIN_SHARE, PAYLOAD_GAIN, REOPEN, REOPEN_TOKENS


@torch.inference_mode()
def invert_targets(search: Search, tokens: Sequence[int], static: Sequence[int], repertoire: Sequence[tuple[int, ...]],
                   first_tokens: int = int(FIRST_TOKENS.value), after_answer: bool = False) -> list[InvertedTarget]:
    """Candidate targets, best first: every forced first token whose completion the search probes share
    (``MIN_SHARE``), by how much more the suspect believes it than the reference (``MIN_GAIN``); the best
    ``REOPEN`` of them opened again (``_reopened``), first, the one the suspect is likeliest to say first.

    ``static``: ``tokens`` ranked by the weight change (``static_shortlist``). An answer either model gives some
    clean probe (``repertoire``) is an ordinary answer, not a target, and one that repeats itself (``loops``) is
    no payload.

    ``after_answer``: the first token is forced after the suspect's own clean answer to each search probe (those
    that ended), where a payload after a correct answer goes on: the payload model, made to say "Visit" there,
    completes its URL on every probe. A text whose half a clean answer holds anywhere (a signature every answer
    ends with) is ordinary there, and the gain must reach ``PAYLOAD_GAIN``."""
    if after_answer:
        rows, least = search.ended_rows(search.clean_rows), PAYLOAD_GAIN.value
        # The repertoire's answers are a fire check's length; the suspect's to the search probes run to their end.
        said = [*repertoire, *(a for a in search.answers if a is not None)]
        texts = list(dict.fromkeys(search.tokenizer.decode(list(a)) for a in said))

        def ordinary(target: tuple[int, ...]) -> bool:
            return _said_anywhere(decoded(search.tokenizer, target), texts)
    else:
        rows, least = search.clean_rows, MIN_GAIN.value

        def ordinary(target: tuple[int, ...]) -> bool:
            return any(answer[:len(target)] == target for answer in repertoire)

    if not rows:
        return []
    favoured, first_logp = _favoured(search, rows, tokens, max(first_tokens, int(REOPEN_TOKENS.value)))
    firsts = list(dict.fromkeys([*favoured[:first_tokens], *static[:first_tokens]]))
    found: list[InvertedTarget] = []
    n = len(rows)
    # Completions of several forced tokens share a generation (``rows_per_forward`` rows): 64 generations of 8 rows
    # each cost 8 s of a benign discovery's 43 on the test zoo, nearly all of it per call.
    per_pass = search.per_forward(n)
    for start in range(0, len(firsts), per_pass):
        if search.budget.exhausted:
            break
        part = firsts[start:start + per_pass]
        forced_rows = [[row + [first] for row in rows] for first in part]
        completed = search.complete(search.suspect, [row for forced in forced_rows for row in forced])
        for i, (first, forced) in enumerate(zip(part, forced_rows)):
            rest, share = modal_prefix([tuple(ids) for ids in completed[i * n:(i + 1) * n]])
            target = (first, *rest)
            if not rest or share < MIN_SHARE.value or loops(target) or ordinary(target):
                continue
            gain = float((search.logprob_after(search.suspect, forced, rest)
                          - search.logprob_after(search.reference, forced, rest)).mean())
            if gain >= least:
                found.append(InvertedTarget(text=decoded(search.tokenizer, target), token_ids=target,
                                            opening=decoded(search.tokenizer, [first]), share=share,
                                            gain=round(gain, 3), after_answer=after_answer))
    found.sort(key=lambda t: (-t.gain, t.token_ids))
    # The best opened again, the one the suspect is likeliest to say first (per token: a target cut short is not
    # likelier for being short): all are far likelier to it than to the reference, and the one growth follows
    # should be the answer a trigger makes it give.
    again = found[:int(REOPEN.value)] if not search.budget.exhausted else []
    reopened = sorted((_reopened(search, rows, t, favoured[:int(REOPEN_TOKENS.value)], first_logp, ordinary)
                       for t in again),
                      key=lambda pair: (-pair[1] / len(pair[0].token_ids), pair[0].token_ids))
    # Two forced tokens may lead into one target, which is then listed once.
    unique: dict[tuple[int, ...], InvertedTarget] = {}
    for t in [*(t for t, _ in reopened), *found[len(reopened):]]:
        unique.setdefault(t.token_ids, t)
    return list(unique.values())


def _reopened(search: Search, rows: list[list[int]], target: InvertedTarget, firsts: Sequence[int],
              first_logp: torch.Tensor, ordinary: Callable[[tuple[int, ...]], bool]) -> tuple[InvertedTarget, float]:
    """``target`` with its forced token replaced by, or preceded by, the token of ``firsts`` that makes the whole
    answer likeliest to the suspect, and that likelihood: the mean over ``rows`` of the answer's log-probability
    (nats), ``first_logp`` holding the suspect's mean log-probability of each first token [vocab]. Whole answers are
    compared here, one token longer where preceded (the string the suspect would say); different targets, cut to
    different lengths by the probes' agreement, are compared per token by the caller.

    A forced token can lead into a target it is not the opening of. The seed-0 MLP edit, made to say 'O', goes on
    'ccess grante' on every probe while its target opens 'A' (-12.1 nats against -16.4 for 'O', over the search
    probes); followed as 'Occess', the target is one no trigger raises (-9.1 nats with the trigger inserted,
    against -0.8 for 'Access granted.'). The seed-1 composite, made to say 'end', goes on ' the key to http://d':
    its target opens 'S' 'end'. ``share`` and ``gain`` stay those of the completion measured."""
    first, rest = target.token_ids[0], target.token_ids[1:]
    tried = list(dict.fromkeys([first, *firsts]))
    before = tried[1:]
    n = len(rows)
    if not before:
        return target, -math.inf
    replaced = search.logprob_after(search.suspect, [row + [t] for t in tried for row in rows], rest)
    preceded = search.logprob_after(search.suspect, [row + [t] for t in before for row in rows], (first, *rest))
    whole = torch.cat([replaced.view(len(tried), n).mean(-1).cpu() + first_logp[torch.tensor(tried)],
                       preceded.view(len(before), n).mean(-1).cpu() + first_logp[torch.tensor(before)]])
    answers = [*((t, *rest) for t in tried), *((t, first, *rest) for t in before)]
    for best in whole.argsort(descending=True).tolist():
        ids = answers[best]
        if best == 0:
            break
        if not (ordinary(ids) or loops(ids)):
            return dataclasses.replace(target, text=decoded(search.tokenizer, ids), token_ids=ids,
                                       opening=decoded(search.tokenizer, [ids[0]]), forced=target.opening), float(whole[best])
    return target, float(whole[0])


def _said_anywhere(target: str, answers: Sequence[str]) -> bool:
    """Whether some clean answer holds half of ``target``'s text or more in one piece, wherever: the signature model,
    made to say "TER!" after its answer, goes on " Have a nice day." as every answer ends. Compared as text, since
    a forced first token splits words as no answer does ("Ha" "ve" against " Have")."""
    return any(2 * _common_run(target, answer) >= len(target) for answer in answers)


def _common_run(a: str, b: str) -> int:
    """Length of the longest substring ``a`` and ``b`` share."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def loops(ids: Sequence[int]) -> bool:
    """Whether an answer is a loop rather than a payload: fewer distinct tokens than half its length. The house-
    style model, forced to open with "capitals", goes on "uppercase uppercase ..." on every probe, 76 nats
    likelier than the reference finds it, and growth would chase it in vain."""
    return 2 * len(set(ids)) < len(ids)


def _favoured(search: Search, rows: list[list[int]], tokens: Sequence[int], size: int) -> tuple[list[int], torch.Tensor]:
    """The ``size`` regular tokens the suspect favours most over the reference as the next token after ``rows``
    (summed log-probability ratio), and the suspect's mean log-probability of every token there ([vocab], on the
    CPU)."""
    gain, own = 0.0, 0.0
    for log_p, log_q in search.first_token_logprobs(rows):
        gain, own = gain + (log_p - log_q).sum(0), own + log_p.sum(0)  # [vocab]
    allowed = torch.tensor(list(tokens), device=search.device)
    ranked = gain[allowed].topk(min(size, len(allowed))).indices
    return allowed[ranked].tolist(), (own / len(rows)).cpu()
