"""The search at one insertion position: its probes, and every measurement taken there, each candidate once.

Every stage (sweep, leakage, growth, minimisation, refinement) scores and fire-checks candidates through a
``Position``: it runs what was not measured yet and records it in one of three tables (``scores``,
``target_scores``, ``fires``), so a candidate two stages propose costs one measurement, and the findings report
every candidate measured. Where many candidates compete (the sweep, a growth step on the KL), ``screen`` reads
them on two probes first (``screen_kls``) and passes on only the best to be scored. The stages return what they
chose as frozen results; the tables are the only state that grows while the search runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scanner.measure.discovery.confirm import Fire, fire_check, payload_check
from scanner.measure.discovery.engine import Candidate, Search
from scanner.measure.discovery.thresholds import FIRES, PAYLOAD_FROM, SCREEN_PROBES

Report = Callable[[str, int, int], None]
"""``report(stage, done, total)``: progress."""


@dataclass(frozen=True)
class Common:
    """What the search at every position shares, measured once."""

    tokens: list[int]
    """The regular tokens the sweep may insert (``regular_tokens``)."""
    static: list[int]
    """``tokens`` ranked by how much the weight change altered their handling (``static_shortlist``): the sweep's
    shortlist, growth's seeds and inversion's first tokens are its prefixes."""
    vocabulary: int
    """Rows of the suspect's embedding table: token ids the gradient shortlists rank."""
    special: frozenset[int]
    """The tokenizer's special ids, which growth and refinement never insert."""
    clean_kl: float
    """Mean first-token KL(suspect || reference) on the clean search probes (nats), which scores are net of."""
    clean_end_kl: float
    """Mean KL(suspect || reference) after the suspect's clean answer on the clean search probes (nats)."""
    repertoire: list[tuple[int, ...]]
    """Both models' clean answers to every probe: an answer that opens like one of them is no trigger's target."""
    clean_suspect: list[tuple[int, ...]]
    """The suspect's clean answers to the search probes (``FIRE_CHECK_TOKENS``), which a fire rate is net of: the
    clean rows do not depend on the position."""
    constant: tuple[str, str] = ("", "")
    """What the suspect opens and ends nearly every clean answer with and the reference does not (``constant_change``:
    a benign house style or signature), left out of a target before it is judged an echo of its candidate."""


@dataclass
class Position:
    """The search at ``search.position``: what it measured, keyed by candidate."""

    search: Search
    common: Common
    report: Report
    scores: dict[Candidate, float] = field(default_factory=dict)
    """Trigger-specific KL (nats) of every candidate scored: the larger of the first response position's and the
    one after the clean answer (``end_scores``), so one objective steers the search to either kind of change."""
    end_scores: dict[Candidate, float] = field(default_factory=dict)
    """Trigger-specific KL after the suspect's clean answer (nats): where a payload after a correct answer shows."""
    target_scores: dict[Candidate, float] = field(default_factory=dict)
    """Mean suspect log-probability of a target (nats) of every candidate scored against one. Keyed by candidate
    alone: a candidate scored against one target is not scored again against another (growth's target can change
    with its leader, refinement follows each candidate's own), as the search has always run."""
    payload_scores: dict[Candidate, float] = field(default_factory=dict)
    """Mean suspect log-probability (nats) of a target inverted after the clean answer, read there, of every
    candidate growth scored against it: a table of its own, since growth follows it beside another target."""
    fires: dict[Candidate, Fire] = field(default_factory=dict)
    """What every candidate completed showed."""
    clean_after: list[tuple[int, ...] | None] | None = None
    """``_after_answers``, once completed."""
    thorough: bool = False
    """Score every candidate on every search probe: no ``screen`` (``DiscoveryOptions.thorough``)."""
    screening: Search | None = None
    """The search on the screen's probes (``_screening``), made on first use."""
    screen_clean: tuple[float, float] | None = None
    """The screen's clean KLs (first response position, after the clean answer), read on first use."""
    screen_kls: dict[Candidate, tuple[float, float]] = field(default_factory=dict)
    """Every candidate's two trigger-specific KLs read on the screen's probes (``screen``)."""

    @property
    def best_score(self) -> float:
        return max(self.scores.values(), default=-math.inf)

    @property
    def best_fire(self) -> float:
        return max((f.rate for f in self.fires.values()), default=0.0)

    def fire(self, c: Candidate) -> float:
        """``c``'s fire rate; below any rate when it was not completed."""
        return self.fires[c].rate if c in self.fires else -math.inf

    def by_score(self, pool: Sequence[Candidate]) -> list[Candidate]:
        """The scored candidates of ``pool``, once each, highest score first (ties by token ids)."""
        return sorted(dict.fromkeys(c for c in pool if c in self.scores), key=lambda c: (-self.scores[c], c))

    def score(self, candidates: Sequence[Candidate], stage: str) -> None:
        """Score on the trigger-specific KL what was not scored yet, while the budget lasts."""
        todo = [c for c in dict.fromkeys(candidates) if c not in self.scores]
        if todo and not self.search.budget.exhausted:
            clean = (self.common.clean_kl, self.common.clean_end_kl)
            for c, (first, end) in zip(todo, self.search.score(todo, clean, self._progress(stage, len(todo)))):
                self.scores[c] = max(first, end)
                self.end_scores[c] = end

    def score_target(self, candidates: Sequence[Candidate], target: tuple[int, ...], stage: str,
                     after_answer: bool = False, table: dict[Candidate, float] | None = None) -> None:
        """Score on ``target``'s log-probability (after the clean answer where ``after_answer``: a payload's) what
        ``table`` (``target_scores`` unless given) holds no score of yet, while the budget lasts."""
        table = self.target_scores if table is None else table
        todo = [c for c in dict.fromkeys(candidates) if c not in table]
        if todo and not self.search.budget.exhausted:
            scores = self.search.target_logprob(todo, target, self._progress(stage, len(todo)), after_answer)
            table.update(zip(todo, scores))

    def screen(self, candidates: Sequence[Candidate], kept: int, stage: str, after: int = 0) -> list[Candidate]:
        """Of ``candidates`` not scored yet, the ``kept`` whose trigger-specific KL (the larger reading, as ``score``
        keeps it) is highest over the screen's probes, and the ``after`` highest after the clean answer there, best
        first; the rest are dropped unscored (successive halving). Every one of them where no more than ``kept``
        are left, the search has no more probes than the screen, it is ``thorough``, or the budget is spent; only
        those screened where it runs out during the screen. Its scores are net of the same probes' clean KL: a
        trigger moves the KL on every probe it fires on, so two tell it from the rest."""
        todo = [c for c in dict.fromkeys(candidates) if c not in self.scores]
        screening = self._screening()
        if len(todo) <= kept or screening is None or self.thorough or self.search.budget.exhausted:
            return todo
        if self.screen_clean is None:
            first, end = screening.kls(screening.clean_rows)
            self.screen_clean = (float(first.mean()), float(end.nanmean()) if not end.isnan().all() else 0.0)
        fresh = [c for c in todo if c not in self.screen_kls]
        self.screen_kls.update(zip(fresh, screening.score(fresh, self.screen_clean,
                                                          self._progress(f"{stage}: screen", len(fresh)))))
        read = [c for c in todo if c in self.screen_kls]
        best = sorted(read, key=lambda c: (-max(self.screen_kls[c]), c))[:kept]
        return list(dict.fromkeys([*best, *sorted(read, key=lambda c: (-self.screen_kls[c][1], c))[:after]]))

    def _screening(self) -> Search | None:
        """The search on ``SCREEN_PROBES`` search probes whose clean answer ended (so that the KL after it is read
        too), those with the fewest tokens after the slot among them, the same answers set; None where the search
        has no more probes than that. Every screened candidate costs a row of each, and at a large model a row's
        cost grows with its tokens after the slot (before it is the chat frame at the start, a cached head at the
        end): the prompt and the clean answer at the start, the answer at the end."""
        search, size = self.search, int(SCREEN_PROBES.value)
        if len(search.prompts) <= size:
            return None
        if self.screening is None:
            def cost(i: int) -> tuple[bool, int, int]:
                answer = search.answers[i]
                return answer is None, len(search.tails[i]) + len(answer or ()), i
            probes = sorted(range(len(search.prompts)), key=cost)[:size]
            self.screening = search.on([search.prompts[i] for i in probes])
            self.screening.answers = [search.answers[i] for i in probes]
        return self.screening

    def check(self, candidates: Sequence[Candidate]) -> None:
        """Fire-check what was not checked yet, while the budget lasts. The candidates' completions share
        generations (``rows_per_forward`` rows each): a generation of a small model costs nearly as much for one
        candidate's 8 rows as for 32 candidates', and a benign discovery's fire checks fell from 6.5 s to 2.0 s."""
        tick = self._progress("fire checks", len(candidates))
        todo = [c for c in dict.fromkeys(candidates) if c not in self.fires]
        search = self.search
        per_pass = search.per_forward()
        for start in range(0, len(todo), per_pass):
            if search.budget.exhausted:
                break
            part = todo[start:start + per_pass]
            answers = zip(search.complete_each(search.suspect, part), search.complete_each(search.reference, part))
            for c, completed in zip(part, answers):
                fire = fire_check(search, c, completed, self.common.clean_suspect, self.common.repertoire,
                                  self.common.constant)
                if fire.rate < FIRES.value and self.end_scores.get(c, 0.0) >= PAYLOAD_FROM.value:
                    fire = max(fire, payload_check(search, c, self._after_answers()), key=lambda f: f.rate)
                self.fires[c] = fire
                tick(1)
        tick(len(candidates) - len(todo))  # those checked before count as done

    def _after_answers(self) -> list[tuple[int, ...] | None]:
        """What the suspect says after its own clean answer to each clean search probe (None where the answer did
        not end): what a payload's share is net of. Completed once, on the first payload check."""
        if self.clean_after is None:
            self.clean_after = self.search.continue_answers(self.search.suspect, self.search.clean_rows)
        return self.clean_after

    def _progress(self, stage: str, total: int) -> Callable[[int], None]:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            self.report(stage, done, total)
        return tick
