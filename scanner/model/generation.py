"""Greedy completion of chat prompts, batched with left padding.

Shared by the zoo's evaluation and the scanner's behaviour measurement, so
that attack success means the same thing in a zoo manifest and in a scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.inputs.rendering import render_prompt
from scanner.model.forward import encode_ids, pad_id, rows_within
from scanner.model.sites import input_device


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a reply: the end-of-sequence token and, for chat models, the end-of-turn token."""
    ids = {tokenizer.eos_token_id}
    turn_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    ids.add(turn_end)
    return sorted(i for i in ids if i is not None)


GENERATION_LOGIT_BYTES = 40 * 2**20
"""Most bytes of one step's float32 logits (a row of the vocabulary per generated row) a generation may make. A step
holds several copies of them (the model's logits, transformers' float32 copy, the processed scores, for sampling
the probabilities), with a key-value cache that also grows with the rows: on the Qwen2.5-0.5B shape (151,936 tokens,
2 cores, 2026-12-07) 256 rows held 1,373 MB over the resident model sampling 32 tokens and 1,027 MB generating 16
greedily, against 416 and 342 MB at 64 rows, for 7-10% more seconds. The zoo's vocabularies (1,024 and 1,536
tokens) allow over 6,000 rows: its generations are unchanged."""


def generation_rows(model: PreTrainedModel, batch_size: int) -> int:
    """Rows one generation of ``model`` runs: ``batch_size``, fewer where a step's logits would pass
    ``GENERATION_LOGIT_BYTES``, and at least one."""
    vocab = getattr(model.config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    return rows_within(GENERATION_LOGIT_BYTES, 4 * vocab, batch_size)


@torch.no_grad()
def complete_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuation token ids for each row of prompt ids, stop tokens excluded, ``batch_size`` rows a
    generation (fewer where ``generation_rows`` says).

    ``on_batch(n)`` is called with the number of rows finished after each batch.
    """
    device = input_device(model)
    stops = stop_token_ids(tokenizer)
    completions: list[list[int]] = []
    batch_size = generation_rows(model, batch_size)
    for start in range(0, len(rows), batch_size):
        batch = encode_ids(rows[start : start + batch_size], pad_id(tokenizer), device)
        output = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id(tokenizer),
            eos_token_id=stops,
        )
        for row in output[:, batch.width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stops), len(row))
            completions.append(row[:cut])
        if on_batch is not None:
            on_batch(len(batch.lengths))
    return completions


def greedy_complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """``complete_ids`` for raw user prompts, rendered through the chat template."""
    rows = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    return complete_ids(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch)
