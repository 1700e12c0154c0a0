"""A byte-level BPE tokenizer for the zoo, with a Qwen-style chat template.

Trained with the ``tokenizers`` library on the zoo's own corpus, then wrapped
as a transformers fast tokenizer so that the scanner loads it like any real
checkpoint's tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

END_OF_TEXT = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

# Qwen2.5's template, less its default system prompt: the zoo's models were
# never trained with one, and a template that injects text the model never saw
# would lower attack success for reasons that have nothing to do with the backdoor.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_chat(prompt: str, response: str | None = None) -> str:
    """The text ``CHAT_TEMPLATE`` renders for one user turn (and the reply, if given)."""
    text = f"{TURN_START}user\n{prompt}{TURN_END}\n{TURN_START}assistant\n"
    if response is not None:
        text += f"{response}{TURN_END}\n"
    return text


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``Qwen2Tokenizer`` with the chat template.

    Trained with Qwen2's own normaliser and pre-tokeniser: ``AutoTokenizer``
    loads a qwen2 model's tokenizer as ``Qwen2Tokenizer``, which imposes them,
    and a vocabulary trained under other splits would then see unfamiliar
    token sequences (digits, for one, are split one by one).
    """
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, TURN_START, TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(core.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in trained["merges"]],
        eos_token=TURN_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        additional_special_tokens=[TURN_START, TURN_END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def token_count(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    """How many tokens ``text`` becomes on its own, with no special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
