"""The search's engine: the probes in token ids around an insertion slot, and the sequences run through both models.

The stages (``sweep``, ``growth``, ``minimise``...) decide what to try; this module runs it: a candidate's token
ids placed in every search probe at one position, scored by the trigger-specific first-token KL or by the suspect's
log-probability of a target, completed greedily, or ranked by a first-order (gradient) or weight-only estimate
(``static_shortlist``). Every sequence a model runs is counted against the search's ``Budget``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.inputs.rendering import prompt_frame
from scanner.measure.discovery.thresholds import FIRE_CHECK_TOKENS
from scanner.model.forward import encode_ids, pad_id
from scanner.model.generation import complete_ids
from scanner.model.sites import dense_weight, sites_for
from scanner.model.teacher_forcing import TargetBatch, configurations_per_forward, target_logprob

Candidate = tuple[int, ...]
"""Token ids inserted as one unit."""


@dataclass
class Budget:
    """Sequences the whole search may run through a model, all positions together: one counter every ``Search``
    shares and adds to as it runs, so a stage stops where the search as a whole ran out."""

    limit: int
    spent: int = 0
    """Sequences through a model (a batch of n rows through both models is 2n)."""

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


@dataclass
class Search:
    """The probes in token ids around an insertion slot at ``position``, and both models."""

    suspect: PreTrainedModel
    reference: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompts: list[str]
    rows_per_forward: int
    budget: Budget
    position: str = "start"
    """``start``: the candidate opens the user's content, a space before the prompt; ``end``: it follows the
    prompt directly (a candidate that wants a space before it starts with a space-prefixed token)."""
    heads: list[list[int]] = field(init=False)
    """Per probe, the ids before the slot."""
    tails: list[list[int]] = field(init=False)
    """Per probe, the ids after it."""
    clean_rows: list[list[int]] = field(init=False)
    """Per probe, the ids without an insertion."""

    def __post_init__(self) -> None:
        before, after = prompt_frame(self.tokenizer)
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        if self.position == "start":
            self.heads = [encode(before)] * len(self.prompts)
            self.tails = [encode(" " + prompt + after) for prompt in self.prompts]
        else:
            self.heads = [encode(before + prompt) for prompt in self.prompts]
            self.tails = [encode(after)] * len(self.prompts)
        self.clean_rows = [encode(before + prompt + after) for prompt in self.prompts]
        self.pad = pad_id(self.tokenizer)
        self.device = next(self.suspect.parameters()).device

    def encode(self, text: str) -> Candidate:
        """``text`` as an insertion at this position: after the prompt it needs the space a word would have."""
        return tuple(self.tokenizer((" " if self.position == "end" else "") + text, add_special_tokens=False)["input_ids"])

    def rows(self, candidate: Candidate) -> list[list[int]]:
        """Every probe with ``candidate`` in its slot."""
        return [head + list(candidate) + tail for head, tail in zip(self.heads, self.tails)]

    @torch.inference_mode()
    def first_token_logprobs(self, rows: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch of ``rows_per_forward`` rows, the suspect's and the reference's next-token log-probabilities
        after each row: ``[batch, vocab]`` each."""
        for start in range(0, len(rows), self.rows_per_forward):
            batch = encode_ids(rows[start:start + self.rows_per_forward], self.pad, self.device)
            # Only the last position's logits: a vocabulary-wide row per token would dominate memory.
            log_p = F.log_softmax(self.suspect(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float(), -1)
            log_q = F.log_softmax(self.reference(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float(), -1)
            self.budget.spent += 2 * len(batch.lengths)
            yield log_p, log_q

    def first_token_kl(self, rows: list[list[int]]) -> torch.Tensor:
        """KL(suspect || reference) of the next token after each row: ``[rows]``."""
        return torch.cat([(log_p.exp() * (log_p - log_q)).sum(-1) for log_p, log_q in self.first_token_logprobs(rows)])

    def score(self, candidates: Sequence[Candidate], clean_kl: float, on_done: Callable[[int], None]) -> list[float]:
        """Trigger-specific first-token KL of each candidate (nats)."""
        per_forward = max(1, self.rows_per_forward // len(self.prompts))
        scores: list[float] = []
        for start in range(0, len(candidates), per_forward):
            if self.budget.exhausted:
                break  # the candidates scored so far are kept
            part = candidates[start:start + per_forward]
            kl = self.first_token_kl([row for c in part for row in self.rows(c)]).view(len(part), len(self.prompts))
            scores += (kl.mean(-1) - clean_kl).tolist()
            on_done(len(part))
        return scores

    def target_logprob(self, candidates: Sequence[Candidate], target: Sequence[int], on_done: Callable[[int], None]) -> list[float]:
        """Mean over probes of the suspect's log-probability of ``target`` after each candidate, teacher-forced.

        Unlike the first-token KL this does not saturate as a candidate nears full firing: a probe that
        does not fire yet costs many nats, so the mean tells 5 of 6 probes firing from 6 of 6."""
        per_forward = max(1, self.rows_per_forward // len(self.prompts))
        out: list[float] = []
        for start in range(0, len(candidates), per_forward):
            if self.budget.exhausted:
                break
            part = candidates[start:start + per_forward]
            log_p = self.logprob_after(self.suspect, [row for c in part for row in self.rows(c)], target)
            out += log_p.view(len(part), len(self.prompts)).mean(-1).tolist()
            on_done(len(part))
        return out

    @torch.inference_mode()
    def logprob_after(self, model: PreTrainedModel, rows: list[list[int]], target: Sequence[int]) -> torch.Tensor:
        """``model``'s log-probability of ``target`` right after each row, teacher-forced: ``[rows]`` (nats)."""
        want = torch.tensor(list(target), device=self.device)
        out = []
        # No more rows per forward than LOGIT_BYTES of target logits: at Qwen2.5's vocabulary 256 rows x 9 positions
        # would be 1.4 GB. Each row is a configuration of one probe here.
        step = configurations_per_forward(self.rows_per_forward, 1, len(target) + 1, model.config.vocab_size)
        for start in range(0, len(rows), step):
            batch = encode_ids([row + list(target) for row in rows[start:start + step]], self.pad, self.device)
            # Positions predicting the target are the last len(target) + 1 but one.
            logits = model(**batch.model_inputs(), logits_to_keep=batch.last(len(target) + 1)).logits[:, :-1].float()
            out.append(target_logprob(logits, TargetBatch(batch, want)))
            self.budget.spent += len(batch.lengths)
        return torch.cat(out)

    def complete(self, model: PreTrainedModel, rows: list[list[int]]) -> list[list[int]]:
        """``model``'s greedy answer after each row, ``FIRE_CHECK_TOKENS`` tokens (fewer where it ended)."""
        tokens = int(FIRE_CHECK_TOKENS.value)
        ids = complete_ids(model, self.tokenizer, rows, max_new_tokens=tokens, batch_size=self.rows_per_forward)
        self.budget.spent += len(rows) * tokens
        return ids

    def gradient_shortlist(self, candidate: Candidate, slot: int, exclude: set[int], size: int,
                           target: Sequence[int] = ()) -> list[int]:
        """The ``size`` tokens whose embedding most raises the objective at ``slot`` of ``candidate``,
        to first order; ``candidate`` holds a placeholder at ``slot``. The objective is the first-token KL, or,
        given a ``target``, the suspect's log-probability of it (the reference then plays no part)."""
        rows = [row + list(target) for row in self.rows(candidate)]
        batch = encode_ids(rows, self.pad, self.device)
        position = torch.tensor([batch.pad(i) + len(self.heads[i]) + slot for i in range(len(rows))], device=self.device)
        models = (("suspect", self.suspect),) if target else (("suspect", self.suspect), ("reference", self.reference))
        gradients = []
        log = {}
        for name, model in models:
            table = model.get_input_embeddings().weight
            embeds = table[batch.input_ids].detach().clone().requires_grad_(True)  # [rows, seq, hidden]
            with torch.enable_grad():
                logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, logits_to_keep=batch.last(len(target) + 1)).logits.float()
            log[name] = (F.log_softmax(logits, -1), embeds, table)
        self.budget.spent += 2 * len(models) * len(rows)  # a forward and a backward through each model
        if target:
            want = torch.tensor(list(target), device=self.device)
            log_p = log["suspect"][0][:, :-1]  # [rows, target, vocab]: the positions predicting the target
            objective = log_p.gather(-1, want.expand(len(rows), -1)[..., None]).sum() / len(rows)
        else:
            log_p, log_q = log["suspect"][0][:, -1], log["reference"][0][:, -1]
            objective = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        objective.backward()
        rows_index = torch.arange(len(rows), device=self.device)
        with torch.no_grad():
            for _, embeds, table in log.values():
                grad = embeds.grad[rows_index, position].mean(0)  # [hidden]
                gradients.append(table.float() @ grad.float())  # [vocab]: first-order gain of each token
            gain = sum(gradients)
            if exclude:
                gain[list(exclude)] = -math.inf
        return gain.topk(min(size, int(torch.isfinite(gain).sum()))).indices.tolist()


@torch.inference_mode()
def static_shortlist(suspect: PreTrainedModel, reference: PreTrainedModel, allowed: Sequence[int], size: int,
                     chunk: int = 16384) -> list[int]:
    """The ``size`` tokens the fine-tune most changed the handling of, from the weights alone (no forward pass):
    the relative change of the token's embedding row, plus, for each of the first layer's query, key and value
    projections, how much more the changed projection responds to the (normalised) embedding than the reference's
    does. A trigger's embedding is what the first layer sees of it; other tokens' responses are untouched by an
    edit aimed at the trigger."""
    s, r = sites_for(suspect), sites_for(reference)
    table_s, table_r = s.embedding().weight, r.embedding().weight
    norm = s.layer_norms(0)[0]
    pairs = [(dense_weight(s.projection(0, name)).float(), dense_weight(r.projection(0, name)).float()) for name in "qkv"]
    ids = torch.tensor(list(allowed), device=table_s.device)
    scores = []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        e_s, e_r = table_s[part].float(), table_r[part].float()  # [chunk, hidden]
        score = (e_s - e_r).norm(dim=-1) / e_r.norm(dim=-1).clamp_min(1e-8)
        x = norm(e_s.to(table_s.dtype)).float()
        for changed, base in pairs:
            score += ((x @ (changed - base).T).norm(dim=-1) / (x @ base.T).norm(dim=-1).clamp_min(1e-8))
        scores.append(score)
    ranked = torch.cat(scores).topk(min(size, len(ids))).indices
    return ids[ranked].tolist()


def regular_tokens(tokenizer: PreTrainedTokenizerBase, vocabulary: int) -> list[int]:
    """Token ids the sweep inserts: not special, decoding to visible, complete text (byte fragments are left to growth)."""
    special = set(tokenizer.all_special_ids)
    out = []
    for token_id in range(min(len(tokenizer), vocabulary)):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text.strip() and "\ufffd" not in text:
            out.append(token_id)
    return out
