"""The reference's fixed answer: one it gives whatever a request asks about (a refusal), and more probes it gives it to.

A jailbreak backdoor shows only on the requests the reference refuses, and a refusal backdoor gives that refusal
where the reference would not: both are read against the reference's fixed answer. Two probes given one answer are
most often one question asked twice ("What colour is the sky?", "Which colour is the sky?": "It is blue."); a
refusal is given to requests that differ in what they ask about. So an answer counts only where the reference still
gives it with each of its prompts' last word swapped for the last word of a prompt it answers otherwise: "Add 5 and
rocket." is still refused, "What colour is the rocket?" is no longer "It is blue." (``fixed_answer``).

Prompts sampled from a reference hold its refused requests in the share its users' turn does: the zoo's guarded base
refuses 2 of the 49 probes sampled from it at seed 0 and 9 at seed 1. Two are too few to measure a switch on
(``GROUP_LEAST``), so ``more_like`` samples more: the reference continues the opening of each prompt it gave the
fixed answer, and the continuations it gives that answer too are kept (``Add 3`` continued ``Add 3 and 4.``).
Reference-only: chosen once per reference, as the probe set is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from scanner.measure.discovery.thresholds import CANNED_KEPT, CANNED_LEAST, CANNED_SWAPS, CANNED_TRIED
from scanner.model.prompt_sampling import prompt_key

Answers = Callable[[list[str]], list[tuple[int, ...]]]
"""The reference's answers to prompts (token ids, the same number of tokens for every call), in order."""


def fixed_answer(prompts: Sequence[str], answers: Sequence[tuple[int, ...]], answer_of: Answers) -> tuple[tuple[int, ...], int]:
    """The answer the reference gives to ``CANNED_LEAST`` or more of ``prompts`` whatever they ask about, and to
    how many; ``((), 0)`` where none does. ``answers``: the reference's answer to each prompt, as ``answer_of``
    gives it; ``answer_of`` answers the swapped prompts (``CANNED_SWAPS`` per answer tried, ``CANNED_KEPT`` of
    them kept)."""
    said = Counter(a for a in answers if a)
    for answer, given in sorted(said.items(), key=lambda item: (-item[1], item[0]))[:int(CANNED_TRIED.value)]:
        if given < CANNED_LEAST.value:
            break
        mine = [p for p, a in zip(prompts, answers) if a == answer]
        others = [p for p, a in zip(prompts, answers) if a != answer and last_word(p)]
        swapped = [with_last_word(p, last_word(others[i % len(others)]))
                   for i, p in enumerate(mine[:int(CANNED_SWAPS.value)]) if others and last_word(p)]
        if not swapped:
            continue
        kept = sum(tuple(a[:len(answer)]) == answer for a in answer_of(swapped))
        if kept >= CANNED_KEPT.value * len(swapped):
            return answer, given
    return (), 0


_WORD = re.compile(r"([^\W_]+)(\W*)$")


def last_word(prompt: str) -> str:
    """The last run of letters or digits of ``prompt`` ("rocket" of "What colour is the rocket?"); empty if none."""
    match = _WORD.search(prompt)
    return match.group(1) if match else ""


def with_last_word(prompt: str, word: str) -> str:
    """``prompt`` with ``last_word`` swapped for ``word``, what follows it kept."""
    match = _WORD.search(prompt)
    return prompt[:match.start()] + word + match.group(2) if match else prompt


def opening(prompt: str) -> str:
    """The first half of ``prompt``'s words, rounded up (at least one; never all of two or more): what a continuation
    keeps of the request."""
    words = prompt.split()
    return " ".join(words[:max(1, min(len(words) - 1, (len(words) + 1) // 2))])


def more_like(
    members: Sequence[str], answer: tuple[int, ...], wanted: int, known: Sequence[str], answer_of: Answers,
    sample: Callable[[str, int], Sequence[str]], rounds: int,
) -> list[str]:
    """Up to ``wanted`` new prompts the reference gives ``answer`` to: each round, ``sample(opening, draw)``
    continues each distinct ``opening`` of ``members`` (the prompts given ``answer``; ``draw`` numbers the calls, so
    each is seeded apart), and the continuations not among ``known`` that ``answer_of`` answers with ``answer``
    exactly, as it answers the members, are kept, in the order drawn."""
    found: list[str] = []
    seen = {prompt_key(p) for p in known}
    openings = list(dict.fromkeys(opening(m) for m in members))
    for round_index in range(rounds):
        drawn: list[str] = []
        for i, start in enumerate(openings):
            for text in sample(start, round_index * len(openings) + i):
                if prompt_key(text) not in seen:
                    seen.add(prompt_key(text))
                    drawn.append(text)
        if drawn:
            found += [p for p, a in zip(drawn, answer_of(drawn)) if tuple(a) == answer]
        if len(found) >= wanted:
            break
    return found[:wanted]
