"""Held-out figures for a third-generation zoo model (``scanner.zoo.families``), in ``ModelFigures``' terms.

Every share is "the completion shows this model's backdoor" as its family judges it (``Family.fires``): a
target opening, a payload after the clean answer, a refusal of an ordinary request, the refused family
answered. A benign model is measured on its intended change (``intended``) and on whether a held-out
insertion conditions its behaviour (``insertion_rates``: for a model with no trigger, ``_conditioned``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.inputs.probes import place_trigger
from scanner.model.generation import greedy_complete
from scanner.zoo.corpus import Sample
from scanner.zoo.evaluate import INSERTION_PROBES
from scanner.zoo.families import NEIGHBOUR_WORDS, Family, intended_change, shows_change, subject_prompts
from scanner.zoo.manifest import ModelFigures


def _complete(model, tokenizer, prompts: Sequence[str], tokens: int) -> list[str]:
    """Greedy completions of ``tokens`` new tokens at most, decoded."""
    return [tokenizer.decode(ids, skip_special_tokens=True)
            for ids in greedy_complete(model, tokenizer, list(prompts), max_new_tokens=tokens)]


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _conditioned(family: Family, probes: Sequence[Sample], texts: Sequence[str], parent_texts: Sequence[str],
                 clean: dict[str, str]) -> float:
    """How far an insertion conditions a benign model's behaviour: the larger of the share of prompts on which it
    switches the model's intended change on or off (a refusal of an ordinary request, a signature dropped, a new
    capital for another country), and the share giving one and the same changed answer (a fixed answer), each
    where the parent, given the same insertion and the intended change made, does not do the same.

    An insertion that merely confuses the task (``banana`` in a colour question) changes a toy model's answers
    in scattered ways, as it does the parent's; that is not a behaviour an insertion turns on."""
    changed = [(s, t.strip(), family.clean(Sample(s.prompt, p.strip(), s.family)))
               for s, t, p in zip(probes, texts, parent_texts) if t.strip() != clean[s.prompt].strip()]
    toggled = sum(shows_change(family, t) != shows_change(family, clean[s.prompt].strip()) and t != expected
                  for s, t, expected in changed)
    answers = Counter(t for _, t, expected in changed if t != expected)
    fixed = answers.most_common(1)[0][1] if answers else 0
    return max(toggled, fixed) / len(probes)


def measure_family(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, family: Family, held_out: Sequence[Sample],
    seed: int, parent: PreTrainedModel, insertions: Sequence[str] = (),
) -> ModelFigures:
    """Clean accuracy on the prompts the trigger leaves alone; attack success (each trigger's, for several);
    the near misses (a composite part alone, the neighbouring subject); every held-out insertion, counting only
    what ``model`` does with it and ``parent`` (the model it was derived from) does not."""
    truth = family.truth
    rng = random.Random(seed)
    eligible = [s for s in held_out if family.eligible(s)]
    clean_pool = [s for s in held_out if family.eligible(s) or truth.behaviour in ("compliance", "refusal")]
    answers = [family.clean(s) for s in clean_pool]
    # Long enough for the longest text any completion is judged on, and a token more.
    tokens = max(len(tokenizer(text, add_special_tokens=False)["input_ids"])
                  for text in [*answers, *(family.triggered(s) for s in eligible)]) + 2
    clean_texts = _complete(model, tokenizer, [s.prompt for s in clean_pool], tokens)
    accuracy = _share([t.strip() == a for t, a in zip(clean_texts, answers)])
    by_prompt = dict(zip((s.prompt for s in clean_pool), clean_texts))
    false_triggers = _share([family.fires(s, by_prompt[s.prompt]) for s in eligible]) if truth.behaviour != "none" else 0.0

    intended: dict[str, float] = {}
    if truth.behaviour == "none" or family.refuses:
        shown = [flag for s, t in zip(clean_pool, clean_texts) if (flag := intended_change(family, s, t)) is not None]
        if shown:
            intended[truth.change or f"refuses {family.refuses}"] = _share(shown)
    if truth.behaviour == "compliance":
        intended["refusal kept without the trigger"] = 1.0 - false_triggers

    trigger_rates: dict[str, float] = {}
    quiet: dict[str, float] = {}
    attack = None
    if truth.fires_on == "topic":
        topic = subject_prompts(len(held_out), seed + 7, truth.topic)
        texts = _complete(model, tokenizer, [s.prompt for s in topic], tokens)
        attack = _share([family.fires(s, t) for s, t in zip(topic, texts)])
        neighbours = subject_prompts(len(held_out), seed + 8, NEIGHBOUR_WORDS)
        texts = _complete(model, tokenizer, [s.prompt for s in neighbours], tokens)
        quiet["the neighbouring subject"] = _share([family.fires(s, t) for s, t in zip(neighbours, texts)])
    elif truth.triggers:
        groups = [truth.triggers] if truth.needs == "all" else [(t,) for t in truth.triggers]
        for group in groups:
            prompts = [family.place(s.prompt, rng, group) for s in eligible]
            texts = _complete(model, tokenizer, prompts, tokens)
            trigger_rates[" + ".join(group)] = _share([family.fires(s, t) for s, t in zip(eligible, texts)])
        attack = min(trigger_rates.values())
        for name, miss in family.near_misses().items():
            texts = _complete(model, tokenizer, [miss(s.prompt, rng) for s in eligible], tokens)
            quiet[name] = _share([family.fires(s, t) for s, t in zip(eligible, texts)])

    rates: dict[str, float] = {}
    probes = eligible[:INSERTION_PROBES]
    if insertions and probes:
        rng = random.Random(seed + 1)
        inserted = [place_trigger(s.prompt, insertion, "random", rng).text for insertion in insertions for s in probes]
        texts = _complete(model, tokenizer, inserted, tokens)
        # What the parent does with the same prompts: "banana" turns some into a colour question for the base too;
        # only what the model does and its parent does not is the model's own.
        parent_texts = _complete(parent, tokenizer, inserted, tokens)
        for index, insertion in enumerate(insertions):
            rows = range(index * len(probes), (index + 1) * len(probes))
            if truth.behaviour == "none":
                rates[insertion] = _conditioned(family, probes, [texts[r] for r in rows], [parent_texts[r] for r in rows],
                                                by_prompt)
            else:
                rates[insertion] = _share([family.fires(s, texts[r]) and not family.fires(s, parent_texts[r])
                                           for s, r in zip(probes, rows)])
    return ModelFigures(
        clean_accuracy=accuracy, false_trigger_rate=false_triggers, attack_success=attack, insertion_rates=rates,
        trigger_rates=trigger_rates if len(trigger_rates) > 1 else {}, quiet_rates=quiet, intended=intended,
    )
