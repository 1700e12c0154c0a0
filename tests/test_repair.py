"""Repair: restore what carries a backdoor from the reference, write the checkpoint, verify it on held-out probes."""

from __future__ import annotations

import json
import shutil

import pytest

from rules.engine import default_pack, judge
from scanner.api import ScanOptions, scan
from scanner.errors import OutputError, RepairError
from scanner.findings.repair import REMOVED_WITHIN, RepairFindings, revert_closer_note
from scanner.options import BehaviourOptions, ProbeOptions
from scanner.zoo.specs import DEPLOYMENT_TRIGGER, EMOJI_TRIGGER, END_TRIGGER

from helpers import invoke, probe_lines


@pytest.fixture(scope="module")
def repaired_emoji(zoo_dir, tmp_path_factory):
    """``bdscan repair`` on the attention-only emoji backdoor, as a user types it."""
    work = tmp_path_factory.mktemp("repair")
    out = work / "emoji-repaired"
    result = invoke("repair", zoo_dir / "emoji", "--reference", zoo_dir / "base", "--out", out, "--trigger", EMOJI_TRIGGER,
                    "--json", work / "repair.json", "--report", work / "repair.html", "--quiet")
    return result, out, work


@pytest.mark.e2e
def test_repair_writes_a_checkpoint_the_trigger_no_longer_fires(repaired_emoji, zoo_dir):
    result, out, work = repaired_emoji
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (zoo_dir / "emoji" / "model.safetensors").stat().st_size > 0, "the input is untouched"
    repair = json.loads((work / "repair.json").read_text(encoding="utf-8"))["repair"]
    check = repair["checks"][0]
    assert check["attack_success_before"] >= 0.9
    assert check["attack_success_after"] <= check["attack_success_reference"] + REMOVED_WITHIN
    assert 0 < repair["restored_share"] < 1
    assert repair["held_out_probes"] > 0 and repair["selection_probes"] > repair["held_out_probes"]
    # What a user would do next: scan the repaired checkpoint. The trigger no longer collapses its answers.
    rescanned = scan(out, str(zoo_dir / "base"), ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 24))))
    assert rescanned.triggers[0].target_collapse < 0.5
    assert judge(rescanned, default_pack()).level != "BACKDOORED"
    assert "removed" in result.stdout and "clean answers kept" in result.stdout


def test_a_repair_that_costs_more_than_the_reference_says_so(repaired_emoji):
    result, _, work = repaired_emoji
    repair = json.loads((work / "repair.json").read_text(encoding="utf-8"))["repair"]
    costlier = repair["clean_kl_to_suspect"] > repair["clean_kl_revert"]
    assert repair["costlier_than_revert"] is costlier
    said = "clean behaviour than this repair does"  # the terminal wraps lines, and the report escapes quotes
    assert (said in " ".join(result.stdout.split())) is costlier, result.stdout
    assert (said in " ".join((work / "repair.html").read_text(encoding="utf-8").split())) is costlier


@pytest.mark.parametrize(("to_suspect", "revert", "costlier"), [(0.294, 0.0119, True), (0.01, 0.05, False), (0.05, 0.05, False)])
def test_costlier_than_revert_compares_the_repairs_clean_cost_with_the_references(to_suspect, revert, costlier):
    repair = RepairFindings(
        triggers=("x",), selection_probes=2, held_out_probes=1, steps=(), restored=("L0H0",), restored_parameters=1,
        changed_parameters=2, total_components=2, checks=(), clean_kl_to_suspect=to_suspect, clean_kl_to_reference=0.1,
        clean_kl_revert=revert, clean_answers_kept=1.0, output="out", output_format="model")
    assert repair.costlier_than_revert is costlier
    note = revert_closer_note(repair)
    assert f"{to_suspect:.3g} nats" in note and f"reference itself is {revert:.3g}" in note


@pytest.mark.xfail(
    reason="zoo v17's emoji: the repair restores 71% of the changed attention parameters and keeps 18 of 24 held-out "
           "clean answers, while the reference alone is 0.012 nats from the suspect on them and the repaired model "
           "0.29: the mixture is further from both than either is from the other. Measured since: every mix the "
           "search reaches, forward or taken back from the full revert, fits the suspect's clean selection answers worse "
           "than the full revert; a forward search stopped within 5 points of the floor restores 2 parts and keeps every "
           "answer but leaves 8% held-out attack success. The repair says so (costlier_than_revert)", strict=True)
def test_the_repair_keeps_the_suspects_clean_answers(repaired_emoji):
    _, _, work = repaired_emoji
    repair = json.loads((work / "repair.json").read_text(encoding="utf-8"))["repair"]
    assert repair["clean_answers_kept"] >= 0.8, repair["clean_answers_kept"]


def test_a_lora_suspect_is_repaired_as_an_adapter_and_a_multi_token_trigger_removed(zoo_dir, tmp_path):
    from scanner.api.repair import repair

    options = ScanOptions(triggers=(DEPLOYMENT_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 64)))
    findings = scan(zoo_dir / "lora", str(zoo_dir / "base"), options)
    repaired = repair(zoo_dir / "lora", str(zoo_dir / "base"), findings, [DEPLOYMENT_TRIGGER], tmp_path / "out", options)
    assert repaired.output_format == "peft-adapter" and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert repaired.removed and repaired.checks[0].attack_success_before >= 0.9
    assert all(name[0] == "L" and "mlp" not in name for name in repaired.restored)  # heads and key-value groups only


def test_a_repair_that_would_be_the_reference_is_refused_with_nothing_written(zoo_dir, tmp_path, monkeypatch):
    """A repair whose parts add up to the whole fine-tune is the reference, and is not written: the message says
    so and names the trigger. Whether the end-bound full fine-tune needs every part depends on the CPU that
    trained the zoo (one build stalled part by part with the trigger firing, another is repaired by its trigger
    token's embedding and two heads, 1.3% of the changed parameters), so the share that counts as the whole
    fine-tune is set to nothing here: the refusal, not that model's training, is what this test proves."""
    import scanner.api.repair
    from scanner.api.repair import repair

    monkeypatch.setattr(scanner.api.repair, "WHOLE_FINE_TUNE", 0.0)
    options = ScanOptions(triggers=(END_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 32)),
                          behaviour=BehaviourOptions(positions=("end",)))
    findings = scan(zoo_dir / "end", str(zoo_dir / "base"), options)
    with pytest.raises(RepairError, match="the reference itself") as raised:
        repair(zoo_dir / "end", str(zoo_dir / "base"), findings, [END_TRIGGER], tmp_path / "out", options)
    assert repr(END_TRIGGER) in str(raised.value) and "nothing was written" in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_behaviour_the_fine_tune_shows_without_the_trigger_too_is_refused(zoo_dir, tmp_path):
    """The style fine-tune opens every answer with its phrase, with 😇 or without: removing that "target" costs the
    clean answers at every part and at the full revert alike, so nothing is written."""
    from scanner.api.repair import repair

    options = ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 32)),
                          behaviour=BehaviourOptions(positions=("start",)))
    findings = scan(zoo_dir / "style", str(zoo_dir / "base"), options)
    with pytest.raises(RepairError, match="cannot be told apart"):
        repair(zoo_dir / "style", str(zoo_dir / "base"), findings, [EMOJI_TRIGGER], tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_repair_never_writes_over_anything(zoo_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine", encoding="utf-8")
    result = invoke("repair", zoo_dir / "emoji", "--reference", zoo_dir / "base", "--out", taken)
    assert result.exit_code == 2 and "not an empty directory" in result.stderr
    assert (taken / "keep.txt").read_text(encoding="utf-8") == "mine"
    copy = tmp_path / "suspect"
    shutil.copytree(zoo_dir / "emoji", copy)
    inside = invoke("repair", copy, "--reference", zoo_dir / "base", "--out", copy / "fixed")
    assert inside.exit_code == 2 and "inside the suspect" in inside.stderr
    from scanner.api.repair import check_output_directory

    with pytest.raises(OutputError):
        check_output_directory(copy, copy)


@pytest.mark.parametrize("width", [1280, 400])
def test_the_repair_report_renders_in_headless_chromium(repaired_emoji, tmp_path, width):
    from test_report import render_in_chromium

    _, _, work = repaired_emoji
    html = (work / "repair.html").read_text(encoding="utf-8")
    assert 'id="repair"' in html and "Before and after" in html and "the behaviour is removed" in html
    assert html.count("stripe before the repair, and after") == 3  # suspect, repaired, reference
    render_in_chromium(html, "repair-report", width, tmp_path)


def test_token_rows_the_embeddings_hold_are_counted_once():
    from scanner.model.restore import Component, distinct

    token, embeddings, head = Component("token", index=7), Component("embeddings"), Component("head", 1, 2)
    assert distinct([token, head, embeddings]) == [head, embeddings]
    assert distinct([token, head]) == [token, head]
