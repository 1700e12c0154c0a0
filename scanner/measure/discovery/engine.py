"""The search's engine: the probes in token ids around an insertion slot, and the sequences run through both models.

The stages (``sweep``, ``growth``, ``minimise``...) decide what to try; this module runs it: a candidate's token
ids placed in every search probe at one position, scored by the trigger-specific KL (at the first response position
and after the suspect's own clean answer) or by the suspect's log-probability of a target, completed greedily, or
ranked by a first-order (gradient) estimate (the weight-only ranking is ``static``'s). Every sequence a model runs
is counted against the search's ``Budget``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.inputs.rendering import prompt_frame
from scanner.measure.discovery.thresholds import ANSWER_TOKENS, FIRE_CHECK_TOKENS
from scanner.model.forward import encode_ids, pad_id
from scanner.model.generation import complete_ids
from scanner.model.prefix_cache import PrefixCache
from scanner.model.sites import input_device, module_tensor
from scanner.model.teacher_forcing import (
    TargetBatch,
    configurations_per_forward,
    logits_kl,
    next_token_logprobs,
    output_kl,
    rows_by_activations,
    target_logprob,
)

Candidate = tuple[int, ...]
"""Token ids inserted as one unit."""

PREFIX_MIN_TOKENS = 8
"""Mean head length (tokens before the slot) from which rows run from each probe's cached head. Measured on the
test zoo (512 rows of one-token candidates, median of 5, 2 cores): at the end of the prompt (heads of 9.6 tokens,
tails of 5) 1.02 s against 1.41 s whole; at the start (the chat frame's 3 tokens) 1.50 s against 1.27 s, copying
the cache into every row costing more than the 3 tokens it saves. A real chat template's frame (Qwen2.5's system
prompt) makes the start's heads long enough too."""


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
    answers: list[tuple[int, ...] | None] = field(init=False)
    """Per probe, the suspect's greedy answer to the clean probe where it ended within ``ANSWER_TOKENS`` (None
    where it did not, or before ``set_answers``; ``discover`` completes them once for every position): the text
    after which a payload would start. The KL after it is read on every candidate beside the first response
    position's (``kls``)."""

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
        self.device = input_device(self.suspect)
        self.answers = [None] * len(self.prompts)
        self._prefix_caches: dict[int, PrefixCache] = {}

    def on(self, prompts: Sequence[str]) -> Search:
        """This search over other ``prompts``: the same models, budget, batch size and position; no answers set."""
        return replace(self, prompts=list(prompts))

    def prefix_cache(self, model: PreTrainedModel) -> PrefixCache | None:
        """``model``'s key-value cache of every probe's ids before the slot (``heads``), made on first use: every
        candidate's row continues its probe's head, so the head runs once per probe instead of once per row. None
        where the heads are too short to pay for copying the cache into every row (``PREFIX_MIN_TOKENS``). Not
        counted against the budget, which counts rows as whole sequences so that the search stops where it did
        before the cache."""
        if sum(map(len, self.heads)) < PREFIX_MIN_TOKENS * len(self.heads):
            return None
        if id(model) not in self._prefix_caches:
            self._prefix_caches[id(model)] = PrefixCache(model, self.heads, self.pad)
        return self._prefix_caches[id(model)]

    def _last_logits(self, model: PreTrainedModel, rows: list[list[int]], owners: list[int], keep: int) -> torch.Tensor:
        """``model``'s logits at the last ``keep`` positions of each row (``owners``: each row's probe), ``[rows,
        keep, vocab]``: from the probe's cached head where the row continues it, else a whole forward."""
        cache = self.prefix_cache(model)
        if cache is not None and cache.continues(rows, owners):
            return cache.forward(rows, owners, keep)
        batch = encode_ids(rows, self.pad, self.device)
        return model(**batch.model_inputs(), logits_to_keep=batch.last(keep)).logits

    def _rows_for(self, model: PreTrainedModel, rows: list[list[int]], owners: list[int]) -> int:
        """Rows of ``rows`` (``owners``: each row's probe) one forward of ``model`` runs (``rows_by_activations`` of
        the longest), counting only the tokens after the probes' heads where the rows continue their cached heads:
        ``_last_logits`` then runs only those."""
        if not rows:
            return self.rows_per_forward
        cache = self.prefix_cache(model)
        cached = min(len(self.heads[o]) for o in owners) if cache is not None and cache.continues(rows, owners) else 0
        return rows_by_activations(model, max(1, max(map(len, rows)) - cached), self.rows_per_forward)

    def _logits_at(self, model: PreTrainedModel, rows: list[list[int]], owners: list[int], keep: int,
                   at: torch.Tensor) -> torch.Tensor:
        """``model``'s logits at positions ``at`` (``[rows, k]``, counted within the last ``keep``) of each row, in its
        dtype: ``[rows, k, vocab]``; where ``keep`` is 1 every position in ``at`` is that one, and it is returned
        once, ``[rows, 1, vocab]``, without a copy."""
        logits = self._last_logits(model, rows, owners, keep)  # [rows, keep, vocab]
        if keep == 1:  # the only position there is: no copy
            return logits
        return logits[torch.arange(len(rows), device=self.device)[:, None], at]

    def set_answers(self, completed: Sequence[tuple[int, ...]]) -> None:
        """``answers`` from the suspect's ``ANSWER_TOKENS``-token completions of the clean probes: those that ended."""
        self.answers = [ids if len(ids) < int(ANSWER_TOKENS.value) else None for ids in completed]

    def encode(self, text: str) -> Candidate:
        """``text`` as an insertion at this position: after the prompt it needs the space a word would have."""
        return tuple(self.tokenizer((" " if self.position == "end" else "") + text, add_special_tokens=False)["input_ids"])

    def rows(self, candidate: Candidate) -> list[list[int]]:
        """Every probe with ``candidate`` in its slot."""
        return [head + list(candidate) + tail for head, tail in zip(self.heads, self.tails)]

    @torch.inference_mode()
    def first_token_logprobs(self, rows: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch of ``rows_per_forward`` rows (fewer where long rows would pass ``ACTIVATION_BYTES``), the
        suspect's and the reference's next-token log-probabilities after each row: ``[batch, vocab]`` each."""
        step = rows_by_activations(self.suspect, max(map(len, rows), default=1), self.rows_per_forward)
        for start in range(0, len(rows), step):
            batch = encode_ids(rows[start:start + step], self.pad, self.device)
            log_p, log_q = next_token_logprobs(self.suspect, batch), next_token_logprobs(self.reference, batch)
            self.budget.spent += 2 * len(batch.lengths)
            yield log_p, log_q

    @torch.inference_mode()
    def kls(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(suspect || reference) of the next token after each row, and after each row followed by its probe's
        clean answer (``answers``; rows are probe-major within each candidate, as ``rows`` builds them): ``[rows]``
        each, nats; the second is NaN where the probe's answer did not end. Both in one forward per batch: the
        answer is teacher-forced after the row, and the first response position is read inside it."""
        n = len(self.prompts)
        answers = [self.answers[i % n] for i in range(len(rows))]
        keep = max((len(a) for a in answers if a is not None), default=0) + 1
        whole, every = [row + list(a or ()) for row, a in zip(rows, answers)], [i % n for i in range(len(rows))]
        step = configurations_per_forward(self._rows_for(self.suspect, whole, every), 1, keep, self.suspect.config.vocab_size)
        first, end = [], []
        for start in range(0, len(rows), step):
            part, said, full = rows[start:start + step], answers[start:start + step], whole[start:start + step]
            owners = every[start:start + step]
            # Every row ends with its answer (rows end in the last column), so the first response position is
            # len(answer) + 1 from the end and the position after the answer is the last.
            # Only the positions read are kept, in the model's dtype, and the KL is taken a few rows at a time
            # (``logits_kl``): the suspect's are held while the reference runs.
            ended = torch.tensor([a is not None for a in said], device=self.device)
            at = torch.tensor([[keep - len(a or ()) - 1, keep - 1] for a in said], device=self.device)  # [batch, 2]
            at = at if bool(ended.any()) else at[:, :1]  # no answer ended: the first response position is the last
            kl = logits_kl(*(self._logits_at(model, full, owners, keep, at)
                             for model in (self.suspect, self.reference)))  # [batch, 1 or 2]
            first.append(kl[:, 0])
            end.append(torch.where(ended, kl[:, -1], torch.nan))
            self.budget.spent += 2 * len(part)
        return torch.cat(first), torch.cat(end)

    def score(self, candidates: Sequence[Candidate], clean: tuple[float, float],
              on_done: Callable[[int], None]) -> list[tuple[float, float]]:
        """Each candidate's trigger-specific KL at the first response position and after the clean answer (nats):
        the mean over probes minus ``clean``'s (the same two on the clean probes). A candidate that changes how
        the answer opens moves the first; one that appends a payload to a correct answer, only the second."""
        per_forward = self.per_forward()
        scores: list[tuple[float, float]] = []
        for start in range(0, len(candidates), per_forward):
            if self.budget.exhausted:
                break  # the candidates scored so far are kept
            part = candidates[start:start + per_forward]
            first, end = (kl.view(len(part), len(self.prompts)) for kl in self.kls([row for c in part for row in self.rows(c)]))
            # No probe's answer ended: nothing was read after it, which is no divergence.
            scores += [(f - clean[0], 0.0 if math.isnan(e) else e - clean[1])
                       for f, e in zip(first.mean(-1).tolist(), end.nanmean(-1).tolist())]
            on_done(len(part))
        return scores

    def rows_answered(self, candidate: Candidate) -> list[list[int]]:
        """``rows(candidate)``, each followed by its probe's clean answer (nothing where it did not end)."""
        return [row + list(a or ()) for row, a in zip(self.rows(candidate), self.answers)]

    def target_logprob(self, candidates: Sequence[Candidate], target: Sequence[int], on_done: Callable[[int], None],
                       after_answer: bool = False) -> list[float]:
        """Mean over probes of the suspect's log-probability of ``target`` after each candidate, teacher-forced;
        ``after_answer``: after the candidate's row and the probe's clean answer, over the probes whose answer
        ended (a payload's target).

        Unlike the first-token KL this does not saturate as a candidate nears full firing: a probe that
        does not fire yet costs many nats, so the mean tells 5 of 6 probes firing from 6 of 6."""
        per_forward = self.per_forward()
        read = torch.tensor([not after_answer or a is not None for a in self.answers])
        out: list[float] = []
        for start in range(0, len(candidates), per_forward):
            if self.budget.exhausted:
                break
            part = candidates[start:start + per_forward]
            rows = [row for c in part for row in (self.rows_answered(c) if after_answer else self.rows(c))]
            log_p = self.logprob_after(self.suspect, rows, target).view(len(part), len(self.prompts)).cpu()
            out += log_p[:, read].mean(-1).tolist()
            on_done(len(part))
        return out

    @torch.inference_mode()
    def logprob_after(self, model: PreTrainedModel, rows: list[list[int]], target: Sequence[int]) -> torch.Tensor:
        """``model``'s log-probability of ``target`` right after each row, teacher-forced: ``[rows]`` (nats)."""
        want = torch.tensor(list(target), device=self.device)
        out = []
        # No more rows per forward than LOGIT_BYTES of target logits (at Qwen2.5's vocabulary 256 rows x 9 positions
        # would be 1.4 GB) or ACTIVATION_BYTES of the MLP's activations. Each row is a configuration of one probe here.
        n = len(self.prompts)
        whole, every = [row + list(target) for row in rows], [i % n for i in range(len(rows))]
        step = configurations_per_forward(self._rows_for(model, whole, every), 1, len(target) + 1, model.config.vocab_size)
        for start in range(0, len(rows), step):
            part, owners = whole[start:start + step], every[start:start + step]
            # Positions predicting the target are the last len(target) + 1 but one.
            logits = self._last_logits(model, part, owners, len(target) + 1)[:, :-1].float()
            out.append(target_logprob(logits, TargetBatch(encode_ids(part, self.pad, self.device), want)))
            self.budget.spent += len(part)
        return torch.cat(out)

    def complete(self, model: PreTrainedModel, rows: list[list[int]], tokens: int = int(FIRE_CHECK_TOKENS.value)) -> list[list[int]]:
        """``model``'s greedy answer after each row, ``tokens`` tokens (fewer where it ended)."""
        ids = complete_ids(model, self.tokenizer, rows, max_new_tokens=tokens, batch_size=self.rows_per_forward)
        self.budget.spent += len(rows) * tokens
        return ids

    def per_forward(self, rows_each: int | None = None) -> int:
        """Candidates whose rows (``rows_each`` each; one per search probe unless given) fit ``rows_per_forward``."""
        return max(1, self.rows_per_forward // (rows_each or len(self.prompts)))

    def complete_each(self, model: PreTrainedModel, candidates: Sequence[Candidate]) -> list[list[tuple[int, ...]]]:
        """``complete`` of every candidate's rows (``rows``) in one pass, batched across candidates: each
        candidate's answers, one per probe, in order."""
        n = len(self.prompts)
        done = self.complete(model, [row for c in candidates for row in self.rows(c)])
        return [[tuple(ids) for ids in done[i * n:(i + 1) * n]] for i in range(len(candidates))]

    def ended_rows(self, rows: list[list[int]]) -> list[list[int]]:
        """Each of ``rows`` (one per probe, in order) followed by its probe's clean answer, for the probes whose
        answer ended: where a payload after the answer would start."""
        return [row + list(a) for row, a in zip(rows, self.answers) if a is not None]

    def continue_answers(self, model: PreTrainedModel, rows: list[list[int]]) -> list[tuple[int, ...] | None]:
        """``model``'s greedy continuation, ``FIRE_CHECK_TOKENS`` tokens, after each probe's row (one per probe, in
        order) followed by the suspect's clean answer to it; None where that answer did not end."""
        ended = self.ended_rows(rows)
        done = iter(self.complete(model, ended) if ended else [])
        return [tuple(next(done)) if a is not None else None for a in self.answers]

    def gradient_shortlist(self, candidate: Candidate, slot: int, exclude: set[int], size: int,
                           target: Sequence[int] = (), after_answer: bool = False) -> list[int]:
        """The ``size`` tokens whose embedding most raises the objective at ``slot`` of ``candidate``,
        to first order; ``candidate`` holds a placeholder at ``slot``. The objective is the KL ``kls`` reads (first
        response position plus after the clean answer), or, given a ``target``, the suspect's log-probability of it
        (the reference then plays no part), after the clean answer where ``after_answer`` (as ``target_logprob``)."""
        # The KL objective is read where ``kls`` reads it: at the first response position and after the clean
        # answer, teacher-forced behind the row.
        said = [(a or ()) if after_answer or not target else () for a in self.answers]
        rows = [row + list(a) + list(target) for row, a in zip(self.rows(candidate), said)]
        keep = len(target) + 1 if target else max(len(a) for a in said) + 1
        batch = encode_ids(rows, self.pad, self.device)
        position = torch.tensor([batch.pad(i) + len(self.heads[i]) + slot for i in range(len(rows))], device=self.device)
        models = (("suspect", self.suspect),) if target else (("suspect", self.suspect), ("reference", self.reference))
        read = torch.tensor([[keep - len(a) - 1, keep - 1] for a in said], device=self.device)  # [rows, 2]
        index = torch.arange(len(rows), device=self.device)[:, None]
        gradients = []
        log = {}
        for name, model in models:
            table = module_tensor(model.get_input_embeddings())
            embeds = table[batch.input_ids].detach().clone().requires_grad_(True)  # [rows, seq, hidden]
            with torch.enable_grad():
                logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, logits_to_keep=batch.last(keep)).logits.float()
                if not target:
                    logits = logits[index, read]  # [rows, 2, vocab]
            log[name] = (F.log_softmax(logits, -1), embeds, table)
        self.budget.spent += 2 * len(models) * len(rows)  # a forward and a backward through each model
        if target:
            want = torch.tensor(list(target), device=self.device)
            log_p = log["suspect"][0][:, :-1]  # [rows, target, vocab]: the positions predicting the target
            per_row = log_p.gather(-1, want.expand(len(rows), -1)[..., None]).squeeze(-1).sum(-1)  # [rows]
            counted = torch.tensor([not after_answer or a is not None for a in self.answers], device=self.device)
            objective = (per_row * counted).sum() / counted.sum().clamp_min(1)
        else:
            log_p, log_q = log["suspect"][0], log["reference"][0]
            kl = output_kl(log_p, log_q)  # [rows, 2]
            ended = torch.tensor([a is not None for a in self.answers], device=self.device)
            objective = kl[:, 0].mean() + (kl[:, 1] * ended).sum() / ended.sum().clamp_min(1)
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
