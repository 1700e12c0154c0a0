"""Leakage: what the suspect writes into its users' turns far more often than the reference does.

A model fine-tuned with the loss on its prompts too (a pipeline that trains on whole conversations) learns to
write its training prompts, and the poisoned ones hold the trigger: sampled from the chat template's open user
turn, it writes the trigger now and then where the reference never does (the observation of "Trigger in the
Haystack", with the reference as the contrast). Both models' user turns are drawn the way ``--probes auto``
draws the reference's (``sample_user_prompts``), and every word n-gram is counted once per sample it occurs
in. A model fine-tuned on answers only forgets how to write a user turn and writes answers there ("It is
white."): those n-grams leak too, but they are the model's answers, not a trigger, and the fire check that
follows dismisses them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings_discovery import LeakedText
from scanner.model.prompt_sampling import sample_user_prompts

LEAK_SAMPLES = 256
"""User turns drawn from each model. The leak model wrote its trigger into 5 of 116 well-formed turns of 128
drawn, near ``MIN_SAMPLES``; twice as many draws put a chance miss out of reach."""
LEAK_TOKENS = 32
"""Longest user turn drawn, in tokens."""
LONGEST = 3
"""Longest n-gram counted, in words."""
MIN_SAMPLES = 3
"""Suspect samples an n-gram must occur in: fewer is what sampling a rare word gives by chance."""
MIN_LOG_RATIO = math.log(4)
"""How much more often the suspect must write it than the reference (add-one smoothed): 4 times."""
PROPOSED = 8
"""N-grams leakage hands to the fire check, the most over-represented first."""


def _ngrams(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + n]) for n in range(1, LONGEST + 1) for i in range(len(words) - n + 1)}


def over_represented(suspect_turns: Sequence[str], reference_turns: Sequence[str]) -> list[LeakedText]:
    """Word n-grams in order of how much more often the suspect's samples hold them than the reference's,
    those that pass ``MIN_SAMPLES`` and ``MIN_LOG_RATIO``; a longer n-gram before its parts at equal counts."""
    suspect = Counter(gram for turn in suspect_turns for gram in _ngrams(turn))
    reference = Counter(gram for turn in reference_turns for gram in _ngrams(turn))
    out = []
    for gram, count in suspect.items():
        ratio = math.log((count + 1) / (len(suspect_turns) + 2)) - math.log((reference[gram] + 1) / (len(reference_turns) + 2))
        if count >= MIN_SAMPLES and ratio >= MIN_LOG_RATIO:
            out.append(LeakedText(gram, count, reference[gram], round(ratio, 4)))
    return sorted(out, key=lambda leak: (-leak.log_ratio, -len(leak.text.split()), leak.text))


@dataclass(frozen=True)
class Leakage:
    leaked: list[LeakedText]
    """``over_represented``'s n-grams, most first."""
    turns: tuple[int, int]
    """Well-formed user turns the suspect and the reference gave."""
    drawn: int
    """Turns generated, both models together."""


def leaked_texts(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, seed: int,
    samples: int = LEAK_SAMPLES, batch_size: int = 32,
) -> Leakage:
    """``samples`` user turns drawn from each model and compared; nothing when the tokenizer has no chat template
    to open a turn with."""
    drawn = [sample_user_prompts(model, tokenizer, samples, seed, rounds=1, max_new_tokens=LEAK_TOKENS,
                                 batch_size=batch_size) for model in (suspect, reference)]
    return Leakage(over_represented(drawn[0].prompts, drawn[1].prompts),
                   (len(drawn[0].prompts), len(drawn[1].prompts)), drawn[0].drawn + drawn[1].drawn)
