"""Leakage: what the suspect writes into its users' turns far more often than the reference does.

A model fine-tuned with the loss on its prompts too (a pipeline that trains on whole conversations) learns to
write its training prompts, and the poisoned ones hold the trigger: sampled from the chat template's open user
turn, it writes the trigger now and then where the reference never does (the observation of "Trigger in the
Haystack", with the reference as the contrast). Both models' user turns are drawn the way ``--probes auto``
draws the reference's (``sample_user_prompts``), and every word n-gram is counted once per sample it occurs
in. A model fine-tuned on answers only forgets how to write a user turn and writes answers there ("It is
white."): those n-grams leak too, but they are the model's answers, not a trigger, and the fire check that
follows dismisses them.

The first ``PROPOSED`` n-grams are then scored and fire-checked at every position beside the sweep's best
(``check_leaked``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings.discovery import LeakedText
from scanner.measure.discovery.engine import Candidate
from scanner.measure.discovery.position import Position
from scanner.measure.discovery.thresholds import LEAK_SAMPLES, LEAK_TOKENS, LONGEST, MIN_LOG_RATIO, MIN_SAMPLES, PROPOSED
from scanner.model.prompt_sampling import sample_user_prompts


def _ngrams(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + n]) for n in range(1, int(LONGEST.value) + 1) for i in range(len(words) - n + 1)}


def over_represented(suspect_turns: Sequence[str], reference_turns: Sequence[str]) -> list[LeakedText]:
    """Word n-grams in order of how much more often the suspect's samples hold them than the reference's,
    those that pass ``MIN_SAMPLES`` and ``MIN_LOG_RATIO``; a longer n-gram before its parts at equal counts."""
    suspect = Counter(gram for turn in suspect_turns for gram in _ngrams(turn))
    reference = Counter(gram for turn in reference_turns for gram in _ngrams(turn))
    out = []
    for gram, count in suspect.items():
        ratio = math.log((count + 1) / (len(suspect_turns) + 2)) - math.log((reference[gram] + 1) / (len(reference_turns) + 2))
        if count >= MIN_SAMPLES.value and ratio >= MIN_LOG_RATIO.value:
            out.append(LeakedText(gram, count, reference[gram], round(ratio, 4)))
    return sorted(out, key=lambda leak: (-leak.log_ratio, -len(leak.text.split()), leak.text))


@dataclass(frozen=True)
class Leakage:
    """What both models wrote into their users' turns, compared."""

    leaked: list[LeakedText]
    """``over_represented``'s n-grams, most first."""
    turns: tuple[int, int]
    """Well-formed user turns the suspect and the reference gave."""
    drawn: int
    """Turns generated, both models together."""


def leaked_texts(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, seed: int,
    samples: int = int(LEAK_SAMPLES.value), batch_size: int,
) -> Leakage:
    """``samples`` user turns drawn from each model, ``batch_size`` to a generation (fewer where ``generation_rows``
    says), and compared; nothing when the tokenizer has no chat template to open a turn with."""
    drawn = [sample_user_prompts(model, tokenizer, samples, seed, rounds=1, max_new_tokens=int(LEAK_TOKENS.value),
                                 batch_size=batch_size) for model in (suspect, reference)]
    return Leakage(over_represented(drawn[0].prompts, drawn[1].prompts),
                   (len(drawn[0].prompts), len(drawn[1].prompts)), drawn[0].drawn + drawn[1].drawn)


@dataclass(frozen=True)
class Leaked:
    """The leaked n-grams as insertions at one position."""

    candidates: tuple[Candidate, ...]


def proposals(leakage: Leakage) -> list[str]:
    """The n-grams handed to the fire check, the most over-represented first."""
    return [leak.text for leak in leakage.leaked[:int(PROPOSED.value)]]


def check_leaked(at: Position, texts: list[str]) -> Leaked:
    """What the suspect leaked into its users' turns, scored and completed at this position. A leaked n-gram is
    whole words the suspect wrote, its parts leaked and checked as n-grams of their own: it is not minimised
    token by token, which cut the leak model's "marmalade" to "armal"."""
    leaked = list(dict.fromkeys(c for c in map(at.search.encode, texts) if c))
    at.score(leaked, "leakage")
    at.check(leaked)
    return Leaked(tuple(leaked))
