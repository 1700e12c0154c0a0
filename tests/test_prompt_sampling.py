"""The top-p sampler behind ``--probes auto`` and leakage: transformers' nucleus, read without sorting the vocabulary."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
from transformers.generation.logits_process import TopPLogitsWarper

from scanner.model.forward import encode_ids, pad_id
from scanner.model.prompt_sampling import NUCLEUS_ROWS, NucleusWarper, user_turn_prefix

VOCABULARY = 151_936
"""Qwen2.5's: the size at which the warper's sort was most of a sampling step."""


def _removed(warper, logits: torch.Tensor) -> torch.Tensor:
    return warper(None, logits.clone()) == -float("inf")


@pytest.mark.parametrize("scale", [8.0, 16.0])
def test_a_peaked_nucleus_is_exactly_transformers(scale):
    """Logits of a trained model's spread (nuclei of 2 to 12 tokens at these scales): the same tokens kept."""
    logits = torch.randn(32, VOCABULARY, generator=torch.Generator().manual_seed(0)) * scale
    assert torch.equal(_removed(NucleusWarper(0.95), logits), _removed(TopPLogitsWarper(0.95), logits))


def _float64_nucleus(logits: torch.Tensor, top_p: float = 0.95) -> torch.Tensor:
    """The kept set by hand: a float64 softmax sorted, each token kept while the mass before it is under top-p."""
    probs = logits.double().softmax(-1)
    ordered, index = probs.sort(-1, descending=True)
    kept = (ordered.cumsum(-1) - ordered) < top_p
    return torch.zeros_like(kept).scatter(-1, index, kept)


@pytest.mark.parametrize(("scale", "bigger_than"), [(4.0, 64), (1.0, 4096), (0.3, 100_000)])
def test_a_wide_nucleus_is_a_float64_softmax_s_but_for_a_boundary_token(scale, bigger_than):
    """Nuclei of ~1,800 tokens (past the first topk), ~110,000 and ~140,000 (read from the histogram): float32
    probabilities cannot place a token whose mass before it is within their rounding of top-p, so this and
    transformers' warper may each disagree with a float64 softmax there, and only there."""
    logits = torch.randn(16, VOCABULARY, generator=torch.Generator().manual_seed(1)) * scale
    kept = ~_removed(NucleusWarper(0.95), logits)
    assert kept.sum(-1).min() > bigger_than
    exact = _float64_nucleus(logits)
    differ = kept != exact
    assert differ.sum(-1).max() <= 1
    probs = logits.double().softmax(-1)
    for row, token in differ.nonzero().tolist():
        before = probs[row][probs[row] > probs[row, token]].sum().item()
        assert abs(before - 0.95) < 1e-5, before
    assert (kept != ~_removed(TopPLogitsWarper(0.95), logits)).sum(-1).max() <= 2


def test_each_row_s_nucleus_is_read_alone():
    """Rows of a batch take different paths (a peaked row the first topk, a flat one the histogram) and are read
    ``NUCLEUS_ROWS`` at a time: each is kept as when it is warped alone, and a token of the crossing bin is kept or
    not by its own mass."""
    generator = torch.Generator().manual_seed(3)
    scales = torch.tensor([16.0, 0.3, 4.0, 1.0, 8.0, 2.0]).repeat(NUCLEUS_ROWS // 6 + 2)[:, None]  # past one read
    logits = torch.randn(len(scales), VOCABULARY, generator=generator) * scales
    together = _removed(NucleusWarper(0.95), logits)
    for row in range(len(logits)):
        assert torch.equal(together[row], _removed(NucleusWarper(0.95), logits[row:row + 1])[0]), row
    assert (together != ~_float64_nucleus(logits)).sum(-1).max() <= 1


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


def test_generations_hold_no_more_rows_than_their_logits_allow(zoo_dir, monkeypatch):
    """``GENERATION_LOGIT_BYTES`` caps the rows of every generation: greedy completions split to 3 rows a
    generation are those of one batch of 7, and sampling draws as many turns in generations of at most 3 rows."""
    from scanner.model import generation
    from scanner.model.generation import complete_ids
    from scanner.model.prompt_sampling import sample_user_prompts

    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "base", dtype=torch.float32).eval()
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in
            ("Add 2 and 3.", "What colour is the sky?", "Name a fruit.", "Spell cat.", "Add 9 and 1.", "Hello.", "Add 1.")]
    whole = complete_ids(model, tokenizer, rows, max_new_tokens=8, batch_size=32)
    sizes: list[int] = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: sizes.append(kw["input_ids"].shape[0]) or generate(**kw))
    monkeypatch.setattr(generation, "GENERATION_LOGIT_BYTES", 3 * 4 * model.config.vocab_size)
    assert complete_ids(model, tokenizer, rows, max_new_tokens=8, batch_size=32) == whole
    assert sizes == [3, 3, 1]
    sizes.clear()
    sampled = sample_user_prompts(model, tokenizer, 8, 0, rounds=1, max_new_tokens=16, batch_size=32)
    assert sampled.drawn == 8 and sizes == [3, 3, 2]


def test_generation_rows_at_qwen_s_vocabulary_and_without_a_vocab_size():
    """69 rows of Qwen2.5's 151,936-token logits fit the cap; a config without ``vocab_size`` is read from the
    embedding table; never fewer than one row."""
    from types import SimpleNamespace

    from scanner.model.generation import GENERATION_LOGIT_BYTES, generation_rows

    qwen = SimpleNamespace(config=SimpleNamespace(vocab_size=151_936))
    assert generation_rows(qwen, 256) == 69 and generation_rows(qwen, 16) == 16
    table = torch.nn.Embedding(GENERATION_LOGIT_BYTES // 4 // 5, 2)
    bare = SimpleNamespace(config=SimpleNamespace(), get_input_embeddings=lambda: table)
    assert generation_rows(bare, 256) == 5
    huge = SimpleNamespace(config=SimpleNamespace(vocab_size=GENERATION_LOGIT_BYTES))
    assert generation_rows(huge, 256) == 1
