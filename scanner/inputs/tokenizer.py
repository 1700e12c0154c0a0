"""Tokenize as the checkpoint does: check transformers' tokenizer against the checkpoint's ``tokenizer.json``.

transformers 5's ``AutoTokenizer`` rebuilds a ``qwen2`` checkpoint's
tokenizer as ``Qwen2Tokenizer`` with Qwen2's own pre-tokenizer, whatever the
checkpoint's ``tokenizer.json`` says. A checkpoint whose file keeps ``" 33"``
as one token is then fed ``" ", "3", "3"``: sequences the model never saw,
which ruin every measurement silently (a poisoned model answered its target
on 22% of clean probes that way). So the scan encodes its own rendered probes
both ways and, where they differ, tokenizes with the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from scanner.errors import InputError
from scanner.findings import TokenizerInfo
from scanner.inputs.rendering import TriggerProbes


def _texts(probe_sets: Iterable[TriggerProbes]) -> list[str]:
    seen: dict[str, None] = {}
    for probes in probe_sets:
        for probe in (*probes.clean, *probes.triggered):
            seen.setdefault(probe.text, None)
    return list(seen)


def _wrapped(core: Tokenizer, like: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The file's tokenizer as transformers would use it: ``like``'s special tokens and chat template."""
    faithful = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=like.eos_token, pad_token=like.pad_token, unk_token=like.unk_token,
        bos_token=like.bos_token, additional_special_tokens=list(getattr(like, "additional_special_tokens", []) or []),
    )
    faithful.chat_template = like.chat_template
    faithful.padding_side = like.padding_side
    return faithful


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def faithful_tokenizer(
    tokenizer: PreTrainedTokenizerBase, tokenizer_file: Path | None, probe_sets: Iterable[TriggerProbes],
) -> tuple[PreTrainedTokenizerBase, TokenizerInfo]:
    """``tokenizer`` if it encodes every rendered probe as ``tokenizer_file`` does, else the file's own tokenizer.

    The record says which was used and how many probes differed.
    """
    texts = _texts(probe_sets)
    transformers_class = type(tokenizer).__name__
    if tokenizer_file is None:
        return tokenizer, TokenizerInfo("transformers", transformers_class, 0, 0)
    try:
        core = Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exception for a malformed file
        raise InputError(
            f"reference {tokenizer_file}: tokenizer.json cannot be read ({str(error).splitlines()[0][:200]})") from None
    differing = [text for text in texts if core.encode(text, add_special_tokens=False).ids != _ids(tokenizer, text)]
    if not differing:
        return tokenizer, TokenizerInfo("transformers", transformers_class, len(texts), 0)
    faithful = _wrapped(core, tokenizer)
    if any(_ids(faithful, text) != core.encode(text, add_special_tokens=False).ids for text in texts):
        raise InputError(
            f"reference {tokenizer_file}: transformers' {transformers_class} encodes the probes differently from "
            "tokenizer.json, and the file could not be used as written either; fix the checkpoint's tokenizer files"
        )
    return faithful, TokenizerInfo("tokenizer.json", transformers_class, len(texts), len(differing), differing[0][:200])
