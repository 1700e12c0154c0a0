"""Probes rendered for one trigger: token ids, where the trigger sits, what the suspect answered.

Trigger positions come from token offsets in the rendered text (the chat
template may add text of its own), never from searching token ids.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from scanner.errors import InputError
from scanner.inputs.probes import PlacedTrigger, place_trigger


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The exact text a model sees for one user turn: its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


PROMPT_SENTINEL = "\ue000bdscan\ue001"
"""Private-use text no real prompt holds: rendered in a prompt's place to find where the template puts it."""


def prompt_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The rendered text before and after the user's content of a one-turn prompt (``render_prompt``'s frame),
    so that token ids can be placed between them; ``InputError`` when the template does not copy content verbatim."""
    before, found, after = render_prompt(tokenizer, PROMPT_SENTINEL).partition(PROMPT_SENTINEL)
    if not found:
        raise InputError("the tokenizer's chat template changes the prompt text, so bdscan cannot place token ids in "
                         "a prompt; use a checkpoint whose template copies the user turn verbatim")
    return before, after


@dataclass(frozen=True)
class RenderedProbe:
    prompt: str
    """The raw user prompt (clean, or with the trigger placed)."""
    text: str
    """What the model sees: ``prompt`` through the chat template."""
    ids: tuple[int, ...]
    trigger_positions: tuple[int, ...]
    """Indices into ``ids`` of the tokens overlapping the trigger (empty for clean probes)."""


def render(tokenizer: PreTrainedTokenizerBase, prompt: str, placed: PlacedTrigger | None = None) -> RenderedProbe:
    text = render_prompt(tokenizer, prompt)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    positions: tuple[int, ...] = ()
    if placed is not None:
        # The user's content is copied verbatim by the template; take its last
        # occurrence in case a system prompt happens to quote it.
        content_start = text.rfind(prompt)
        if content_start < 0:
            raise InputError(
                f"the tokenizer's chat template changes the prompt text (probe {prompt[:60]!r} is not in what it renders), "
                "so the trigger cannot be located; use probes without leading or trailing whitespace, or a checkpoint "
                "whose template copies the user turn verbatim"
            )
        start, end = content_start + placed.start, content_start + placed.end
        positions = tuple(
            index for index, (token_start, token_end) in enumerate(encoding["offset_mapping"])
            if token_start < end and token_end > start
        )
    return RenderedProbe(prompt, text, tuple(encoding["input_ids"]), positions)


@dataclass(frozen=True)
class TriggerProbes:
    """Each probe clean and triggered, index-aligned."""

    trigger: str
    clean: tuple[RenderedProbe, ...]
    triggered: tuple[RenderedProbe, ...]


def prepare(tokenizer: PreTrainedTokenizerBase, prompts: list[str], trigger: str, position: str, seed: int) -> TriggerProbes:
    """Render ``prompts`` clean and with ``trigger`` placed at ``position`` (seeded per trigger)."""
    rng = random.Random(f"{seed}:{trigger}")
    clean, triggered = [], []
    for prompt in prompts:
        placed = place_trigger(prompt, trigger, position, rng)
        clean.append(render(tokenizer, prompt))
        triggered.append(render(tokenizer, placed.text, placed))
    return TriggerProbes(trigger, tuple(clean), tuple(triggered))
