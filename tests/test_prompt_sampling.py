"""The top-p sampler behind ``--probes auto`` and leakage: transformers' nucleus, read without sorting the vocabulary."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
from transformers.generation.logits_process import TopPLogitsWarper

from scanner.model.forward import encode_ids, pad_id
from scanner.model.prompt_sampling import NucleusWarper, user_turn_prefix

VOCABULARY = 151_936
"""Qwen2.5's: the size at which the warper's sort was most of a sampling step."""


def _removed(warper, logits: torch.Tensor) -> torch.Tensor:
    return warper(None, logits.clone()) == -float("inf")


@pytest.mark.parametrize("scale", [8.0, 16.0])
def test_a_peaked_nucleus_is_exactly_transformers(scale):
    """Logits of a trained model's spread (nuclei of 2 to 12 tokens at these scales): the same tokens kept."""
    logits = torch.randn(32, VOCABULARY, generator=torch.Generator().manual_seed(0)) * scale
    assert torch.equal(_removed(NucleusWarper(0.95), logits), _removed(TopPLogitsWarper(0.95), logits))


@pytest.mark.parametrize(("scale", "bigger_than"), [(4.0, 64), (1.0, 4096)])
def test_a_wide_nucleus_differs_from_transformers_by_a_boundary_token_at_most(scale, bigger_than):
    """Nuclei of ~1,800 tokens (past the first topk) and ~110,000 (the whole row sorted): the warper's float32 sum
    over the whole vocabulary cannot place a token whose probability is its rounding error, so the two may disagree
    on the few tokens per row that sit there (one on the CPU this was written on, two on some rows of another AMD
    EPYC), and only where the mass before each is within rounding of top-p."""
    logits = torch.randn(16, VOCABULARY, generator=torch.Generator().manual_seed(1)) * scale
    ours, theirs = _removed(NucleusWarper(0.95), logits), _removed(TopPLogitsWarper(0.95), logits)
    assert (~ours).sum(-1).min() > bigger_than
    differ = ours != theirs
    assert differ.sum(-1).max() <= 3
    probs = logits.softmax(-1)
    for row, token in differ.nonzero().tolist():
        before = probs[row][probs[row] > probs[row, token]].double().sum().item()
        assert abs(before - 0.95) < 1e-3, before


def test_top_p_of_one_and_out_of_range_values():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(2))
    assert not _removed(NucleusWarper(1.0), logits).any()
    for wrong in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            NucleusWarper(wrong)


def test_the_zoo_base_samples_the_same_prompts_as_with_transformers_top_p(zoo_dir):
    """Both samplers from one seed give the base's user turns token for token: 64 draws of 32 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "base", dtype=torch.float32).eval()
    prefix = tokenizer(user_turn_prefix(tokenizer), add_special_tokens=False)["input_ids"]
    batch = encode_ids([prefix] * 64, pad_id(tokenizer), torch.device("cpu"))
    drawn = []
    for warpers in ({"top_p": 0.95}, {"top_p": 1.0, "logits_processor": LogitsProcessorList([NucleusWarper(0.95)])}):
        torch.manual_seed(7)
        with torch.no_grad():
            drawn.append(model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True,
                                        top_k=0, max_new_tokens=32, pad_token_id=pad_id(tokenizer), **warpers))
    assert torch.equal(drawn[0], drawn[1])
