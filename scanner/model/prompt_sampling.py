"""User prompts drawn from a chat model's own distribution, and how surprising a prompt is to it.

A chat model has learnt what its users ask. Rendering the chat template up to
where the user's words begin and sampling from there (the "pre-query
template" of Magpie, arXiv 2406.08464) draws prompts from that distribution:
probes that exercise behaviour the model has, not behaviour it never learnt.

The same prefix gives every prompt a *surprise*: its mean negative
log-likelihood per token as the model's user turn. A prompt far more
surprising than the model's own samples lies outside its domain, and output
differences measured on it say little about the model.

Both rest on the model having learnt its users' turn. One trained with the
loss on answers only (a task model, a completion-only fine-tune) never did:
what it writes there is its answers, collapsed onto a few (``The plural is
wolves.`` 187 times in 192 draws), and every real prompt is far more
surprising to it than those.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings.scan import HOLDS_TRIGGER, UNTERMINATED
from scanner.inputs.rendering import PROMPT_SENTINEL
from scanner.model.forward import encode_ids, logits, pad_id
from scanner.model.generation import generation_rows, stop_token_ids
from scanner.model.sites import input_device

# A private-use character pair: no tokenizer's chat template produces it.
MIN_WORDS = 2
MAX_SHARE_OF_ONE_TOKEN = 0.4
"""A sample whose most common token makes up more than this share of it (with 6 tokens or more) is a loop."""


def user_turn_prefix(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The rendered text before the user's content in a one-turn chat (system prompt included), or ``None``
    when the tokenizer has no chat template or its template does not copy the user's content verbatim."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT_SENTINEL}], tokenize=False, add_generation_prompt=False)
    index = text.find(PROMPT_SENTINEL)
    return text[:index] if index >= 0 else None


NUCLEUS_ROWS = 32
"""Rows whose nucleus ``NucleusWarper`` reads at a time."""


class NucleusWarper(LogitsProcessor):
    """Top-p (nucleus) filtering, as transformers' ``TopPLogitsWarper`` keeps it, without sorting the vocabulary.

    ``TopPLogitsWarper`` sorts every row's logits at every step: at Qwen2.5's 151,936 tokens that sort is most of
    what a sampling step costs on a CPU. The nucleus is the likeliest tokens whose probability mass before them
    is under ``top_p``; this reads it from a ``topk`` of ``first_k`` tokens, then 64 times as many, and a row whose
    nucleus is larger still (a near-flat distribution's, a random-init model's) from a histogram of its
    log-probabilities (``_wide_nucleus``), sorting only the tokens of the bin where the mass crosses ``top_p``.
    The kept set is a float64 softmax's but for a token at the boundary now and then (a few in 256 flat rows),
    where float32 probabilities cannot place it; transformers' warper, which sums from the least likely token, is
    nearer still there, and this much nearer than the whole-row float32 sum it replaced (133 tokens off in 256
    rows of a nucleus of ~1,860). A sample changes only where the draw falls within that token's mass.
    """

    def __init__(self, top_p: float, first_k: int = 64):
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], not {top_p}")
        self.top_p = top_p
        self.first_k = first_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores``: ``[batch, vocab]`` logits; the same with every token outside its row's nucleus at -inf. Rows
        are read ``NUCLEUS_ROWS`` at a time: every row's nucleus is its own, and a whole batch's probabilities and
        their temporaries held three times its logits (445 MB over 256 rows of Qwen2.5's vocabulary)."""
        if not len(scores):
            return scores
        outside = torch.cat([self._outside_of(scores[i:i + NUCLEUS_ROWS]) for i in range(0, scores.shape[0], NUCLEUS_ROWS)])
        return scores.masked_fill(outside, -math.inf)

    def _outside_of(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores``: ``[rows, vocab]`` logits. ``[rows, vocab]`` bool: the tokens outside each row's nucleus."""
        probs = scores.float().softmax(dim=-1)
        # float32's softmax sums to 1 within about 1e-5 at this vocabulary, more than a boundary token's mass: the
        # nucleus is read against each row's own total, and masses are run up in float64.
        limit = self.top_p * probs.sum(dim=-1, dtype=torch.float64)  # [rows]
        return self._outside(probs, limit)

    def _outside(self, probs: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """``probs``: ``[batch, vocab]``; ``limit``: ``[batch]``. ``[batch, vocab]`` bool: the tokens outside each
        row's nucleus, read from the first topk that holds it, else from the histogram."""
        vocabulary = probs.shape[-1]
        first, second = min(self.first_k, vocabulary), min(64 * self.first_k, vocabulary)
        outside, done, last, mass = _topk_nucleus(probs, limit, first)
        if bool(done.all()):
            return outside
        rest = (~done).nonzero()[:, 0]
        # A row the second topk could not finish even were each of its further tokens as likely as the first's
        # last goes to the histogram at once: that topk would cost it more than the histogram does.
        wide = (mass[rest] + (second - first) * last[rest]) < limit[rest]
        rows, wide_rows = rest[~wide], rest[wide]
        if len(rows) == len(probs):
            outside, done, _, _ = _topk_nucleus(probs, limit, second)
            wide_rows = rows[~done]
        elif len(rows):
            outside[rows], done, _, _ = _topk_nucleus(probs[rows], limit[rows], second)
            wide_rows = torch.cat([wide_rows, rows[~done]])
        if len(wide_rows):
            outside[wide_rows] = ~_wide_nucleus(probs[wide_rows], limit[wide_rows])
        return outside


def _topk_nucleus(probs: torch.Tensor, limit: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """``probs``: ``[rows, vocab]``; ``limit``: ``[rows]``. The nucleus as a ``topk`` of ``k`` holds it: ``[rows,
    vocab]`` bool, the tokens outside it (every token of a row it does not hold); ``[rows]`` bool, the rows it
    holds; and ``[rows]`` float64 each, a row's ``k``-th probability and the mass of its ``k`` likeliest tokens."""
    top, index = probs.topk(k, dim=-1)  # [rows, k], likeliest first
    mass = top.double().cumsum(dim=-1)
    done = (mass[:, -1] >= limit) | (k == probs.shape[-1])
    # Outside: the mass of the likelier tokens, this one excluded, reaches the limit.
    outside = torch.ones_like(probs, dtype=torch.bool).scatter_(-1, index, ((mass - top) >= limit[:, None]) | ~done[:, None])
    return outside, done, top[:, -1].double(), mass[:, -1]


BINS_PER_NAT = 256
"""The histogram's resolution in log-probability: a flat row of Qwen2.5's vocabulary puts a few hundred tokens in
the bin where its mass crosses top-p, and only those are sorted."""
BINS = 64 * BINS_PER_NAT
"""Bins down to a probability of e^-64, whose tokens hold no mass a top-p below one could need."""


WIDE_ROWS = 16
"""Rows binned at a time: their int64 bin indices (19 MB at Qwen2.5's vocabulary) stay in cache, twice as fast as
256 rows at once on the development machine's 2 cores."""


def _wide_nucleus(probs: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """``probs``: ``[rows, vocab]``; ``limit``: ``[rows]`` float64, top-p times each row's total. ``[rows, vocab]``
    bool: the tokens whose likelier tokens hold less than their row's ``limit``."""
    return torch.cat([_binned_nucleus(probs[i:i + WIDE_ROWS], limit[i:i + WIDE_ROWS])
                      for i in range(0, probs.shape[0], WIDE_ROWS)])


def _binned_nucleus(probs: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """``_wide_nucleus`` of a few rows. Tokens are binned by log-probability (a likelier token never in a later
    bin), the bins' masses summed, and the bin where the running mass reaches ``limit`` found: every token of an
    earlier bin is kept, none of a later one, and the crossing bin's tokens are sorted to place the boundary."""
    bins = probs.log().mul_(-BINS_PER_NAT).clamp_(0, BINS - 1).long()  # [rows, vocab]; zeros (log -inf) last
    mass = torch.zeros(probs.shape[0], BINS, dtype=torch.float64, device=probs.device).scatter_add_(1, bins, probs.double())
    running = mass.cumsum(dim=-1)  # [rows, BINS]
    crossing = (running < limit[:, None]).sum(dim=-1).clamp_(max=BINS - 1)  # [rows]: the first bin reaching it
    before = torch.where(crossing > 0, running.gather(1, (crossing - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    kept = bins < crossing[:, None]
    members = bins == crossing[:, None]
    counts = members.sum(dim=-1)  # [rows]
    top, index = probs.masked_fill(~members, -1.0).topk(int(counts.max()), dim=-1)  # the crossing bin, likeliest first
    real = torch.arange(top.shape[1], device=probs.device)[None, :] < counts[:, None]
    top = top.clamp(min=0.0).double()
    inside = (before[:, None] + top.cumsum(dim=-1) - top) < limit[:, None]
    return kept.scatter(-1, index, (inside & real) | kept.gather(-1, index))


@dataclass(frozen=True)
class SampledPrompts:
    prompts: tuple[str, ...]
    """Accepted samples, in the order drawn."""
    drawn: int
    """Samples generated in all."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Why the others were dropped: reason -> count."""


def _rejection(text: str, ids: Sequence[int], terminated: bool, special: Sequence[str], exclude: Sequence[str]) -> str | None:
    if not terminated:
        return UNTERMINATED
    if "\ufffd" in text or any(token in text for token in special):
        return "holds special tokens or broken characters"
    if len(text.split()) < MIN_WORDS:
        return f"fewer than {MIN_WORDS} words"
    if len(ids) >= 6 and Counter(ids).most_common(1)[0][1] > MAX_SHARE_OF_ONE_TOKEN * len(ids):
        return "repeats one token"
    if any(trigger in text for trigger in exclude):
        # A clean probe must not already hold a trigger the scan inserts.
        return HOLDS_TRIGGER
    return None


def prompt_key(text: str) -> str:
    """What two prompts share when they are the same prompt: case and spacing aside."""
    return " ".join(text.casefold().split())


def _continuation(tokenizer: PreTrainedTokenizerBase, prefix_ids: list[int], ids: list[int], context: str) -> str:
    """``ids`` decoded as they continue ``prefix_ids`` (whose decoding is ``context``; empty: decoded alone)."""
    if not context:
        return tokenizer.decode(ids, skip_special_tokens=False)
    whole = tokenizer.decode(prefix_ids + ids, skip_special_tokens=False)
    return whole[len(context):] if whole.startswith(context) else tokenizer.decode(ids, skip_special_tokens=False)


@torch.no_grad()
def sample_user_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    seed: int,
    *,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 48,
    rounds: int = 4,
    batch_size: int = 32,
    exclude: Sequence[str] = (),
    opening: str = "",
    on_round: Callable[[int], None] | None = None,
) -> SampledPrompts:
    """Up to ``count`` distinct, well-formed user prompts sampled from ``model`` (``count`` x ``rounds`` draws
    at most, each round seeded from ``seed``); an empty result when the tokenizer has no usable chat template.
    With an ``opening``, every prompt is that text continued by the model: prompts like one that opens so.

    ``batch_size`` rows a generation, fewer where ``generation_rows`` caps a step's logits (69 rows at Qwen2.5's
    vocabulary): where it does, the draws differ from those of one uncapped batch with the same seed. The global
    torch random state is left as it was.
    """
    prefix = user_turn_prefix(tokenizer)
    if prefix is None:
        return SampledPrompts((), 0, {"no chat template to sample a user turn from": 1})
    prefix_ids = tokenizer(prefix + opening, add_special_tokens=False)["input_ids"]
    if not prefix_ids:
        return SampledPrompts((), 0, {"the chat template renders no text before the user turn": 1})
    # A continuation is decoded after its context: a SentencePiece tokenizer drops the leading space of the first
    # token it decodes alone ("Add 5" + "and 9." for " and 9.").
    context = tokenizer.decode(prefix_ids, skip_special_tokens=False) if opening else ""
    stops = set(stop_token_ids(tokenizer))
    special = [t for t in tokenizer.all_special_tokens if t]
    device = input_device(model)
    batch_size = generation_rows(model, batch_size)
    accepted: list[str] = []
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    drawn = 0
    for round_index in range(rounds):
        if len(accepted) >= count:
            break
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + round_index)
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                batch = encode_ids([prefix_ids] * rows, pad_id(tokenizer), device)
                output = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True,
                    temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList([NucleusWarper(top_p)]) if top_p < 1.0 else None,
                    pad_token_id=pad_id(tokenizer), eos_token_id=sorted(stops),
                )
                for row in output[:, batch.width:].tolist():
                    drawn += 1
                    cut = next((i for i, token in enumerate(row) if token in stops), None)
                    ids = row[:cut] if cut is not None else row
                    text = (opening + _continuation(tokenizer, prefix_ids, ids, context)).strip()
                    reason = _rejection(text, ids, cut is not None, special, exclude)
                    if reason is None and opening and not ids:
                        reason = "adds nothing to the opening"
                    key = prompt_key(text)
                    if reason is None and key in seen:
                        reason = "duplicate"
                    if reason is not None:
                        rejected[reason] += 1
                        continue
                    seen.add(key)
                    accepted.append(text)
        if on_round is not None:
            on_round(round_index + 1)
    return SampledPrompts(tuple(accepted[:count]), drawn, dict(sorted(rejected.items())))


@torch.no_grad()
def prompt_surprise(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, batch_size: int = 16,
) -> list[float]:
    """Per prompt, the mean negative log-likelihood (nats per token) of its text as the user's turn under
    ``model``, conditioned on the chat template's prefix; NaN for every prompt when there is no template.

    Rows are ``prefix + prompt``, ``[batch, seq]``; a token counts as the prompt's when its first character
    lies at or after the prefix's end (so BPE merges across the boundary cannot misalign it).
    """
    prefix = user_turn_prefix(tokenizer)
    if prefix is None:
        return [math.nan] * len(prompts)
    device = input_device(model)
    surprises: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        encodings = [tokenizer(prefix + p, add_special_tokens=False, return_offsets_mapping=True) for p in chunk]
        batch = encode_ids([e["input_ids"] for e in encodings], pad_id(tokenizer), device)
        log_probs = F.log_softmax(logits(model, batch), dim=-1)  # [batch, seq, vocab]
        for row, encoding in enumerate(encodings):
            offset = batch.pad(row)
            # Position 0 has nothing before it to predict it from.
            positions = [i for i, (begin, _) in enumerate(encoding["offset_mapping"]) if begin >= len(prefix) and i > 0]
            if not positions:
                surprises.append(math.nan)
                continue
            index = torch.tensor(positions, device=device)
            targets = torch.tensor([encoding["input_ids"][i] for i in positions], device=device)
            surprises.append(-log_probs[row, offset + index - 1, targets].mean().item())
    return surprises

