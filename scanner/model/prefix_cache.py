"""Forwards that share a prefix per group of rows: the prefix's key-value cache computed once, each row run from
where its prefix ends.

Discovery runs thousands of candidates on the same few probes: inserted at the end of a prompt, every candidate's
row is ``chat frame + prompt | candidate + frame + answer``, and the part before the bar is the same for every
candidate on that probe. Running it once per probe instead of once per row is the saving; the logits are those
of the whole row (checked equal in ``tests/test_discovery.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from scanner.model.forward import Batch, encode_ids
from scanner.model.sites import input_device


class PrefixCache:
    """``model``'s key-value cache of each of ``prefixes`` (token ids), kept to run rows that continue them.

    Layout of a row run from it: ``[left padding | prefix | padding | suffix]``, every row ending in the last
    column as ``encode_ids`` lays rows out, so a caller reads the same last positions either way; position ids
    count real tokens only, so the padding in the middle changes nothing.
    """

    def __init__(self, model: PreTrainedModel, prefixes: Sequence[Sequence[int]], pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = input_device(model)
        batch = encode_ids(prefixes, pad_id, self.device)
        with torch.inference_mode():
            output = model(**batch.model_inputs(), use_cache=True, logits_to_keep=1)
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name goes in 5.40): either, as installed.
        self.argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        # [prefixes, kv heads, width, head dim] per layer: rows select theirs by index.
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.mask = batch.attention_mask  # [prefixes, width]
        self.lengths = torch.tensor(batch.lengths, device=self.device)
        self.prefixes = [tuple(p) for p in prefixes]

    def continues(self, rows: Sequence[Sequence[int]], owners: Sequence[int]) -> bool:
        """Whether each row starts with its owner's prefix and goes on past it."""
        return all(len(row) > len(self.prefixes[o]) and tuple(row[:len(self.prefixes[o])]) == self.prefixes[o]
                   for row, o in zip(rows, owners))

    def forward(self, rows: Sequence[Sequence[int]], owners: Sequence[int], logits_to_keep: int) -> torch.Tensor:
        """The logits of the last ``logits_to_keep`` positions of each row (``owners[i]``: the prefix row ``i``
        continues): ``[rows, logits_to_keep, vocab]``, as a forward of the whole rows gives them."""
        index = torch.tensor(list(owners), device=self.device)
        suffix: Batch = encode_ids([row[len(self.prefixes[o]):] for row, o in zip(rows, owners)], self.pad_id, self.device)
        cache = DynamicCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers],
                             config=self.model.config)
        mask = torch.cat([self.mask.index_select(0, index), suffix.attention_mask], dim=1)
        positions = self.lengths.index_select(0, index)[:, None] + suffix.position_ids
        with torch.inference_mode():
            return self.model(input_ids=suffix.input_ids, attention_mask=mask, position_ids=positions,
                              logits_to_keep=suffix.last(logits_to_keep), **{self.argument: cache}).logits
