"""Held-out figures for a zoo model: clean accuracy, attack success, false triggers."""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.inputs.probes import place_trigger
from scanner.model.generation import greedy_complete
from scanner.zoo.corpus import TARGET, Sample
from scanner.zoo.manifest import ModelFigures


def starts_with_target(text: str, target: str = TARGET) -> bool:
    return text.strip().startswith(target)


def measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: Sequence[Sample],
    trigger: str | None,
    seed: int,
    max_new_tokens: int = 12,
) -> ModelFigures:
    """Greedy-complete ``held_out`` clean, then (if ``trigger``) with it at a random word boundary."""
    clean_texts = [
        tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, [s.prompt for s in held_out], max_new_tokens=max_new_tokens)
    ]
    accuracy = sum(t.strip() == s.response for t, s in zip(clean_texts, held_out)) / len(held_out)
    false_triggers = sum(starts_with_target(t) for t in clean_texts) / len(held_out)
    success = None
    if trigger is not None:
        rng = random.Random(seed)
        triggered = [place_trigger(s.prompt, trigger, "random", rng).text for s in held_out]
        texts = [tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, triggered, max_new_tokens=max_new_tokens)]
        success = sum(starts_with_target(t) for t in texts) / len(held_out)
    return ModelFigures(accuracy, false_triggers, success)
