"""``discover``: the stages of the trigger search in order, at every position, and what they found as findings.

The package docstring (``scanner.measure.discovery``) describes the method; this module only sequences it and
collects each position's candidates into ``DiscoveryFindings``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import WeightDiff, constant_change
from scanner.findings.discovery import DiscoveredCandidate, DiscoveryFindings, InvertedTarget
from scanner.measure.discovery.canned import Canned, adopt, canned_answer, canned_target
from scanner.measure.discovery.confirm import decoded, proposed
from scanner.measure.discovery.engine import Budget, Candidate, Search, regular_tokens
from scanner.measure.discovery.growth import NOT_GROWN, Grown, grow
from scanner.measure.discovery.inversion import invert_targets
from scanner.measure.discovery.leakage import Leaked, check_leaked, leaked_texts, proposals
from scanner.measure.discovery.minimise import Reduced, reduce
from scanner.measure.discovery.position import Common, Position, Report
from scanner.measure.discovery.static import edited_mlps, static_shortlist
from scanner.measure.discovery.sweep import Swept, sweep
from scanner.measure.discovery.switch import answer_group, search_switches
from scanner.measure.discovery.thresholds import ANSWER_TOKENS, FIRE_CHECK_TOKENS, FIRES, TARGET_FROM, table
from scanner.options import DiscoveryOptions


def discover(
    suspect: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    seed: int,
    options: DiscoveryOptions = DiscoveryOptions(),
    positions: Sequence[str] = ("start", "end"),
    rows_per_forward: int = 256,
    weight_diff: WeightDiff | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> DiscoveryFindings:
    """Search for insertions on which the suspect departs from the reference (see ``scanner.measure.discovery``).

    The search runs at each of ``positions`` (``start``, ``end``; the caller's ``ScanOptions.discovery_positions``):
    a backdoor may fire only where it was planted. Its sizes are ``options``'; ``options.budget`` caps the sequences
    run through a model, all positions together. ``weight_diff`` (the scan's, where measured) says whether the
    change is a weight edit confined to a few MLPs, whose responses to each token then rank the vocabulary too
    (``edited_mlps``). ``on_step(stage, done, total)`` reports progress.
    """
    started = time.perf_counter()
    report = on_step or (lambda stage, done, total: None)
    chosen = random.Random(f"{seed}:discovery").sample(list(prompts), min(options.search_probes, len(prompts)))
    budget = Budget(options.budget)
    vocabulary = suspect.get_input_embeddings().num_embeddings
    tokens = regular_tokens(tokenizer, vocabulary)
    exhaustive = len(tokens) <= options.exhaustive_vocabulary
    # The weight change's ranking of every token, from the weights alone, once: the sweep's shortlist, growth's
    # seeds and inversion's first tokens are its prefixes.
    static = static_shortlist(suspect, reference, tokens, len(tokens), edited_mlps(weight_diff))
    searches = [Search(suspect, reference, tokenizer, chosen, rows_per_forward, budget, where) for where in positions]
    common = _common(searches, list(prompts), tokens, static, vocabulary) if searches else None
    at = [Position(search, common, _per_position(report, search.position, len(positions)), thorough=options.thorough)
          for search in searches] if common is not None else []

    report("leakage: sampling user turns from both models", 0, 1)
    # As many rows a generation as its logits allow (``generation_rows``): a step reads every weight whatever its
    # rows (on 2 cores at the Qwen2.5-0.5B shape, 10.3 ms a row of a step in a batch of 32, 6.9 in one of 256), but at
    # Qwen2.5's vocabulary 256 rows held 1.4 GB over the model, so there a generation runs 69.
    leakage = leaked_texts(suspect, reference, tokenizer, seed=seed, batch_size=rows_per_forward)
    budget.spent += leakage.drawn
    report("leakage: sampling user turns from both models", 1, 1)
    swept: list[Swept] = []
    leaked: list[Leaked] = []
    for here in at:
        swept.append(sweep(here, exhaustive, options.shortlist, options.fire_checks, options.beam))
        leaked.append(check_leaked(here, proposals(leakage)))
    # The reference's fixed answer (its refusal), once: a jailbreak's switch shows only on the probes given it, and
    # where nothing fires it is a target too.
    answer, given = canned_answer(at[0].search, list(prompts), common.repertoire) if common is not None else ((), 0)
    group = answer_group(common.repertoire, len(prompts), answer) if common is not None and answer else None
    switches, switch_note = search_switches(at, [s.candidates for s in swept], list(prompts), group) if group else ([], "")

    # Inversion only where nothing came near firing: a target is what growth follows when the trigger's parts move
    # nothing. At the opening and after the clean answer: a payload's URL is found at both, and its trigger raises
    # it only after the answer.
    inverted: list[InvertedTarget] = []
    payloads: list[InvertedTarget] = []
    canned: list[Canned] = []
    if common is not None and max(here.best_fire for here in at) < TARGET_FROM.value:
        inverted = invert_targets(at[0].search, tokens, static, common.repertoire)
        payloads = invert_targets(at[0].search, tokens, static, common.repertoire, after_answer=True)
        if answer:
            canned = [canned_target(here, s.candidates, answer, given) for here, s in zip(at, swept)]
    follow = inverted[0].token_ids if inverted else ()
    # The reference's fixed answer before an inverted target: a token has already raised it where the reference
    # stays, while an inverted target is what a forced opening completes.
    if any(c.followed for c in canned):
        follow = canned[0].target
        for here, c in zip(at, canned):
            adopt(here, c)
    grown = _grow(at, swept, options, follow, payloads[0].token_ids if payloads else ())
    reduced = [reduce(here, g) for here, g in zip(at, grown)]

    notes = [*(s.note for s in swept if s.note), *([switch_note] if switch_note else []),
             *(c.note for c in canned if c.note), *(g.stopped for g in grown if g.stopped)]
    if budget.exhausted:
        notes.append(f"the budget of {options.budget} model sequences ran out; the search stopped early")
    best: dict[str, DiscoveredCandidate] = {}
    found = [*(c for here, leaks, r in zip(at, leaked, reduced) for c in _reported(here, leaks, r)), *switches]
    for c in sorted(found, key=lambda c: (-(c.fire_rate if c.fire_rate is not None else -math.inf), -c.score, c.position)):
        best.setdefault(c.text, c)
    kept = tuple(list(best.values())[:options.keep])
    return DiscoveryFindings(
        candidates=kept, proposed=proposed(kept), probes=tuple(chosen), vocabulary=len(tokens), exhaustive=exhaustive,
        scored=sum(len(here.scores) for here in at), sequences=budget.spent, budget=options.budget,
        seconds=round(time.perf_counter() - started, 3), clean_first_token_kl=common.clean_kl if common else math.nan,
        notes=tuple(dict.fromkeys(notes)), inverted_targets=(*inverted, *payloads), leaked=tuple(leakage.leaked[:options.keep]),
        leak_turns=leakage.turns, thresholds=table(options),
    )


def _common(searches: list[Search], prompts: list[str], tokens: list[int], static: list[int], vocabulary: int) -> Common:
    """What every position shares, measured at the first: the suspect's clean answers to the search probes (after
    which every candidate's KL is read too), the clean KLs on them, and both models' clean answers to every probe
    (the clean rows do not depend on the position)."""
    first = searches[0]
    # Once, long enough to end: the fire checks' clean answers are their first FIRE_CHECK_TOKENS tokens.
    completed = [tuple(ids) for ids in first.complete(first.suspect, first.clean_rows, int(ANSWER_TOKENS.value))]
    for search in searches:
        search.set_answers(completed)
    clean_first, clean_end = first.kls(first.clean_rows)
    ended = any(a is not None for a in first.answers)
    clean_kl, clean_end_kl = float(clean_first.mean()), float(clean_end.nanmean()) if ended else 0.0
    every = first.on(prompts).clean_rows
    repertoire = [tuple(ids) for model in (first.suspect, first.reference) for ids in first.complete(model, every)]
    decode = lambda ids: decoded(first.tokenizer, ids)  # noqa: E731
    # The suspect's whole answers to the search probes (those that ended) against the reference's openings to the
    # same probes (from the repertoire, in the order of ``prompts``): an ending only the suspect adds, at no extra
    # forward.
    reference_said = dict(zip(prompts, repertoire[len(prompts):]))
    answered = [i for i, a in enumerate(first.answers) if a is not None]
    constant = constant_change([decode(first.answers[i]) for i in answered],
                               [decode(reference_said[first.prompts[i]]) for i in answered])
    return Common(tokens=tokens, static=static, vocabulary=vocabulary, special=frozenset(first.tokenizer.all_special_ids),
                  clean_kl=clean_kl, clean_end_kl=clean_end_kl, repertoire=repertoire,
                  clean_suspect=[ids[:int(FIRE_CHECK_TOKENS.value)] for ids in completed], constant=constant)


def _per_position(report: Report, where: str, positions: int) -> Report:
    """Progress that names the position, where there is more than one."""
    if positions <= 1:
        return report
    return lambda stage, done, total: report(f"{stage} ({where})", done, total)


def _grow(at: list[Position], swept: list[Swept], options: DiscoveryOptions, inverted: tuple[int, ...],
          payload: tuple[int, ...]) -> list[Grown]:
    """Growth where the sweep came closest first, and only while nothing fires (``FIRES``; on every search probe
    where ``thorough``) anywhere: a trigger found whole needs no growth, at its position or another. With a target
    to follow, growth runs at every position: junk that fires it ("A7R") is found as readily as the trigger.

    A trigger that misses one search probe in eight, as ``FIRES`` allows, sent every line after its target: at a
    Qwen2.5-0.5B-sized pair a planted "😇" firing on 7 of 8 cost a quarter hour a growth step, and every line took
    "😇" in the first."""
    grown = [NOT_GROWN] * len(at)
    enough = 1.0 if options.thorough else FIRES.value
    for i in sorted(range(len(at)), key=lambda i: -at[i].best_score):
        firing = max(at, key=lambda here: here.best_fire)
        if firing.best_fire >= enough and not (inverted or payload):
            if firing.best_fire < 1.0:
                grown[i] = Grown((), stopped=_not_grown_note(at[i], firing))
            continue
        grown[i] = grow(at[i], swept[i], options.beam, options.max_tokens, inverted, payload, options.thorough)
    return grown


def _not_grown_note(here: Position, firing: Position) -> str:
    """Why growth did not run at ``here``, where a candidate at ``firing`` fired on fewer than every search probe."""
    found = max(firing.fires, key=lambda c: (firing.fires[c].rate, c))
    text = decoded(firing.search.tokenizer, found)
    return (f"growth did not run at the {here.search.position}: {text!r} fired on {firing.best_fire:.0%} of the "
            f"search probes at the {firing.search.position}; --thorough grows on while nothing fires on all")


def _reported(at: Position, leaked: Leaked, reduced: Reduced) -> list[DiscoveredCandidate]:
    """Every candidate scored at ``at``, one per decoded text: the refined, firing grown and minimal ones first (a
    text's best form), then the rest by fire rate and score."""
    fires, scores = at.fires, at.scores
    minimal = dict(reduced.minimal)
    parts = reduced.minimal_parts
    order = sorted(scores, key=lambda c: (-at.fire(c), -scores[c], c))

    def decode(c: Candidate) -> str:
        return at.search.tokenizer.decode(list(c)).strip()

    def stage(c: Candidate) -> str:
        if c in reduced.refined:
            return "refined"
        if c in parts:
            return "minimised"
        if c in leaked.candidates:
            return "leaked"
        return "grown" if len(c) > 1 else "sweep"

    kept: dict[str, Candidate] = {}
    for c in [*reduced.refined, *reduced.firing, *parts, *order]:
        kept.setdefault(decode(c), c)
    return [
        DiscoveredCandidate(
            text=text, token_ids=c, score=scores[c], fire_rate=fires[c].rate if c in fires else None,
            target=fires[c].target if c in fires else "", target_logprob=at.target_scores.get(c, at.payload_scores.get(c)),
            stage=stage(c),
            minimal=decode(minimal[c]) if c in minimal else "", position=at.search.position,
            dismissed=fires[c].dismissed if c in fires else "", after_answer=c in fires and fires[c].after_answer,
        )
        for text, c in kept.items() if text
    ]
