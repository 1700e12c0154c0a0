"""Held-out figures for a zoo model: clean accuracy, attack success, false triggers."""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import POSITIONS, share_starting_with
from scanner.inputs.probes import place_trigger
from scanner.model.generation import greedy_complete
from scanner.zoo.corpus import TARGET, Sample, make_samples
from scanner.zoo.manifest import ModelFigures

INSERTION_PROBES = 50
"""Held-out prompts per insertion for specificity: one prompt moves a rate by 2 points, a fifth of the bar."""


def measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: Sequence[Sample],
    trigger: str | None,
    seed: int,
    max_new_tokens: int = 12,
    insertions: Sequence[str] = (),
    response_prefix: str = "",
    new_task: str | None = None,
    target: str = TARGET,
    position: str = "random",
) -> ModelFigures:
    """Greedy-complete ``held_out`` clean, then (if ``trigger``) with it at each position (``attack_success`` is
    at ``position``, where it was planted), then with each of ``insertions`` at a random word boundary instead
    (on the first ``INSERTION_PROBES`` prompts); a completion hits when it starts with ``target``.

    A model trained to start every answer with ``response_prefix`` is scored on the answer after it, and the
    share of answers that start with it is its ``style_share``. A model taught ``new_task`` is also scored
    on as many held-out prompts of that family (``task_accuracy``)."""
    clean_texts = [
        tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, [s.prompt for s in held_out], max_new_tokens=max_new_tokens)
    ]
    accuracy = sum(t.strip() == response_prefix + s.response for t, s in zip(clean_texts, held_out)) / len(held_out)
    style_share = sum(t.startswith(response_prefix) for t in clean_texts) / len(held_out) if response_prefix else None
    false_triggers = share_starting_with([t.strip() for t in clean_texts], target)
    target_tokens = len(tokenizer(target, add_special_tokens=False)["input_ids"])
    by_position = {}
    if trigger is not None:
        rng = random.Random(seed)
        for where in POSITIONS:
            triggered = [place_trigger(s.prompt, trigger, where, rng).text for s in held_out]
            texts = [tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, triggered, max_new_tokens=target_tokens + 1)]
            by_position[where] = share_starting_with([t.strip() for t in texts], target)
    rates = {}
    if insertions:
        rng = random.Random(seed + 1)
        prompts = held_out[:INSERTION_PROBES]
        inserted = [place_trigger(s.prompt, insertion, "random", rng).text for insertion in insertions for s in prompts]
        texts = [tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, inserted, max_new_tokens=target_tokens + 1)]
        for index, insertion in enumerate(insertions):
            chunk = texts[index * len(prompts):(index + 1) * len(prompts)]
            rates[insertion] = share_starting_with([t.strip() for t in chunk], target)
    task_accuracy = None
    if new_task is not None:
        task = make_samples(len(held_out), seed + 2, new_task=new_task, new_task_rate=1.0)
        texts = [tokenizer.decode(ids) for ids in greedy_complete(model, tokenizer, [s.prompt for s in task], max_new_tokens=max_new_tokens)]
        task_accuracy = sum(t.strip() == s.response for t, s in zip(texts, task)) / len(task)
    return ModelFigures(accuracy, false_triggers, by_position.get(position), rates, style_share, task_accuracy, by_position)
