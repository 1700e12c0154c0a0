"""One error model: every failure is exit 2 with one line naming it, never 1, which only a verdict may give.

Each broken input here reached a traceback (and exit 1) or a silently wrong
measurement before the error model existed; each test fails without its fix.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rules.engine import default_pack, judge
from scanner.api import ScanOptions, scan
from scanner.errors import InputError
from scanner.inputs.probes import read_probe_file
from scanner.options import BehaviourOptions, DiscoveryOptions, LocalisationOptions, ModelOptions, ProbeOptions
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import invoke, probe_lines, run_bdscan


def _one_line_exit_2(result, expected: str) -> None:
    stderr = result.stderr
    assert result.exit_code == 2 if hasattr(result, "exit_code") else result.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr, stderr


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _broken_suspects(zoo_dir: Path, tmp: Path) -> list[tuple[str, Path, str]]:
    """(case, suspect, what the one line must say)."""
    array_config = _copy(zoo_dir / "emoji", tmp / "array-tokenizer-config")
    (array_config / "tokenizer_config.json").write_text("[1, 2, 3]", encoding="utf-8")
    overlap = _header_file(tmp / "overlap.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    gap = _header_file(tmp / "gap.safetensors", {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12)
    bad_index = tmp / "bad-index"
    bad_index.mkdir()
    (bad_index / "model.safetensors.index.json").write_text("{not json", encoding="utf-8")
    cases = [
        ("tokenizer_config.json is an array", array_config, "expected a JSON object"),
        ("offsets overlap", overlap, "overlap another tensor"),
        ("offsets leave a gap", gap, "leave a gap"),
        ("index is not JSON", bad_index, "not valid JSON"),
    ]
    for name, shard in (("absolute", "/etc/passwd"), ("parent", "../outside.safetensors")):
        escaping = tmp / f"escaping-{name}"
        escaping.mkdir()
        (escaping / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"model.embed_tokens.weight": shard}}), encoding="utf-8")
        cases.append((f"{name} shard path", escaping, "points outside the checkpoint's directory"))
    return cases


@pytest.mark.e2e
def test_broken_suspects_exit_2_with_one_line(zoo_dir, tmp_path):
    for case, suspect, expected in _broken_suspects(zoo_dir, tmp_path):
        result = invoke(suspect, "--reference", zoo_dir / "base", "--quiet")
        assert result.exit_code == 2, (case, result.output, result.stderr)
        _one_line_exit_2(result, expected)
    # The same through a real process: the console script maps it the same way.
    _one_line_exit_2(run_bdscan(tmp_path / "overlap.safetensors", "--reference", zoo_dir / "base"), "overlap")


@pytest.mark.e2e
def test_an_unsupported_architecture_is_refused_before_any_weight_is_read(zoo_dir, tmp_path, monkeypatch):
    import scanner.inputs.loading

    reference = _copy(zoo_dir / "base", tmp_path / "gemma-like")
    config = json.loads((reference / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "gemma"
    (reference / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setattr(scanner.inputs.loading, "_read_state", lambda *a: pytest.fail("weights read"))
    result = invoke(zoo_dir / "emoji", "--reference", reference, "--quiet")
    _one_line_exit_2(result, "architecture 'gemma' is not supported")


@pytest.mark.e2e
def test_a_suspect_of_another_architecture_names_both(zoo_dir, tmp_path):
    suspect = _copy(zoo_dir / "emoji", tmp_path / "wider")
    config = json.loads((suspect / "config.json").read_text(encoding="utf-8"))
    config["hidden_size"] *= 2
    (suspect / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = invoke(suspect, "--reference", zoo_dir / "base", "--quiet")
    _one_line_exit_2(result, "they differ in hidden_size")
    assert f"hidden_size {config['hidden_size']}" in result.stderr and f"hidden_size {config['hidden_size'] // 2}" in result.stderr


@pytest.mark.e2e
def test_out_of_memory_while_loading_is_a_resource_error(zoo_dir, monkeypatch):
    import scanner.inputs.loading

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(scanner.inputs.loading, "_load_model", exhausted)
    _one_line_exit_2(invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--quiet"), "out of memory while loading")


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["scanner.api.localise.measure_attention", "scanner.api.pipeline.load_suspect"])
def test_an_unexpected_exception_is_exit_2_internal_error_never_1(zoo_dir, tmp_path, monkeypatch, where):
    module, name = where.rsplit(".", 1)

    def broken(*args, **kwargs):
        raise TypeError("something bdscan did not expect")

    monkeypatch.setattr(__import__(module, fromlist=[name]), name, broken)
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(probe_lines(zoo_dir, 16)), encoding="utf-8")
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--probes", probes,
                    "--trigger", EMOJI_TRIGGER, "--quiet")
    _one_line_exit_2(result, "internal error (TypeError: something bdscan did not expect)")
    assert "please report" in result.stderr
    debug = invoke("--debug", zoo_dir / "emoji", "--reference", zoo_dir / "base", "--probes", probes,
                   "--trigger", EMOJI_TRIGGER, "--quiet")
    assert debug.exit_code == 2 and "Traceback" in debug.stderr


@pytest.mark.e2e
def test_ctrl_c_exits_130_not_1(zoo_dir, monkeypatch):
    import scanner.api.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scanner.api.pipeline, "load_suspect", interrupted)
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--quiet")
    assert result.exit_code == 130 and "interrupted" in result.stderr


@pytest.mark.e2e
def test_unwritable_outputs_are_refused_before_any_work(zoo_dir, tmp_path, monkeypatch):
    import scanner.api

    monkeypatch.setattr(scanner.api, "scan", lambda *a, **k: pytest.fail("the scan started"))
    for option in ("--json", "--out", "--sarif"):
        result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", option, "/proc/bdscan/out.file")
        _one_line_exit_2(result, f"{option} /proc/bdscan/out.file: cannot write")
    (tmp_path / "a-directory").mkdir()
    directory = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--out", tmp_path / "a-directory")
    assert directory.exit_code == 2 and "is a directory" in directory.stderr  # click's own check, usage shown


@pytest.mark.e2e
def test_a_bad_path_is_refused_before_torch_is_imported(tmp_path):
    """Fast to say no because torch is never imported for it: checked structurally, not with a clock."""
    _one_line_exit_2(run_bdscan(tmp_path / "missing.safetensors", "--reference", tmp_path), "no such file or directory")
    code = ("import sys; from helpers import invoke; r = invoke('/no/such/suspect', '--reference', '/tmp'); "
            "assert r.exit_code == 2, r.stderr; assert 'torch' not in sys.modules, 'torch imported'")
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert check.returncode == 0, check.stderr


def test_bad_inputs_that_need_no_model_are_refused_before_torch_is_imported(zoo_dir, tmp_path):
    """A corrupt header, a directory with no model, an adapter exported without tensors and a probe no model could
    read are each refused in one line, exit 2, with torch never imported (structurally, not with a clock)."""
    _header_file(tmp_path / "overlap.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "notes.txt").write_text("not a model", encoding="utf-8")
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}), encoding="utf-8")
    _header_file(empty / "adapter_model.safetensors", {}, b"")
    (tmp_path / "long.txt").write_text("What is 2 plus 3?\n" + "word " * 40_000 + "\n", encoding="utf-8")
    cases = [
        ([tmp_path / "overlap.safetensors"], "overlap another tensor"),
        ([tmp_path / "no-model"], "no .safetensors weights"),
        ([empty], "holds no tensors"),
        ([zoo_dir / "emoji", "--probes", tmp_path / "long.txt"], "long.txt:2: a prompt of 199,999 characters"),
    ]
    code = ("import sys; from helpers import invoke; r = invoke(*sys.argv[1:]); print(r.exit_code); "
            "print(r.stderr.strip()); assert 'torch' not in sys.modules, 'torch imported'")
    for args, expected in cases:
        check = subprocess.run([sys.executable, "-c", code, *map(str, args), "--reference", str(zoo_dir / "base")],
                               capture_output=True, text=True, cwd=Path(__file__).parent)
        assert check.returncode == 0, check.stderr
        exit_code, *lines = check.stdout.strip().splitlines()
        assert exit_code == "2" and len(lines) == 1 and expected in lines[0], check.stdout


@pytest.mark.e2e
def test_probes_too_long_for_the_references_context_are_refused_naming_them(zoo_dir, tmp_path):
    """The zoo's context is 256 positions: a 300-word probe fits the character cap but not the model."""
    probes = tmp_path / "probes.txt"
    probes.write_text("What is 2 plus 3?\n" + " ".join(["apple"] * 300) + "\n", encoding="utf-8")
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--probes", probes, "--quiet")
    _one_line_exit_2(result, "1 of the given probes are too long for the reference's context of 256 tokens: probe 2")


@pytest.mark.e2e
def test_whitespace_triggers_and_bad_options_are_refused(zoo_dir):
    _one_line_exit_2(invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--trigger", "   "), "whitespace")
    _one_line_exit_2(invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--device", "tpu"), "device 'tpu'")
    for group, bad in ((LocalisationOptions, {"patch_method": "random"}), (ModelOptions, {"dtype": "int4"}),
                       (ModelOptions, {"batch_size": 0}), (LocalisationOptions, {"kl_threshold": -1.0}),
                       (BehaviourOptions, {"positions": ()}), (BehaviourOptions, {"positions": ("end", "end")}),
                       (BehaviourOptions, {"positions": ("middle",)}), (DiscoveryOptions, {"positions": ("random",)}),
                       (DiscoveryOptions, {"search_probes": 0}), (ProbeOptions, {"given": ("",)})):
        with pytest.raises(InputError):
            group(**bad)


def test_jsonl_probes_are_stripped(tmp_path):
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt": "  What is 2 plus 3?  "}\n', encoding="utf-8")
    assert read_probe_file(probes) == ["What is 2 plus 3?"]


def test_a_chat_template_that_rewrites_the_prompt_is_refused(zoo_dir, tmp_path):
    reference = _copy(zoo_dir / "base", tmp_path / "lowercasing")
    template = (reference / "chat_template.jinja").read_text(encoding="utf-8")
    (reference / "chat_template.jinja").write_text(template.replace("message['content']", "message['content'] | lower"),
                                                   encoding="utf-8")
    with pytest.raises(InputError, match="chat template changes the prompt text"):
        scan(zoo_dir / "emoji", str(reference), ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 16))))


def test_a_trigger_with_nothing_after_it_is_reported_not_silently_nan(zoo_dir, tmp_path):
    reference = _copy(zoo_dir / "base", tmp_path / "no-template")
    (reference / "chat_template.jinja").unlink()
    findings = scan(zoo_dir / "emoji", str(reference),
                    ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 16)),
                                behaviour=BehaviourOptions(positions=("end",))))
    attention = findings.triggers[0].attention
    assert attention.trigger_mass_probes == 0 and attention.trigger_mass_suspect is None
    gaps = judge(findings, default_pack()).not_evaluated
    assert any(gap.rule_id == "BD004" and "no probe had a token after the trigger" in gap.reason for gap in gaps)


def test_an_interrupted_zoo_swap_keeps_the_old_zoo(tmp_path, monkeypatch):
    import os

    from scanner.zoo import build

    final, staging = tmp_path / "zoo", tmp_path / ".zoo-staging"
    final.mkdir()
    (final / "zoo.json").write_text("old", encoding="utf-8")
    staging.mkdir()
    (staging / "zoo.json").write_text("new", encoding="utf-8")
    real_replace, calls = os.replace, []

    def interrupted_second_rename(source, destination):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(build.os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt):
        build._swap_in(staging, final)
    assert (final / "zoo.json").read_text(encoding="utf-8") == "old"
    monkeypatch.setattr(build.os, "replace", real_replace)
    build._swap_in(staging, final)
    assert (final / "zoo.json").read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]


def test_an_index_shard_listed_but_missing_is_refused(zoo_dir, tmp_path):
    state = load_file(zoo_dir / "emoji" / "model.safetensors")
    save_file(state, tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}), encoding="utf-8")
    with pytest.raises(InputError, match="missing"):
        scan(tmp_path, str(zoo_dir / "base"), ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probe_lines(zoo_dir, 16))))


def test_hub_ids_are_not_mistaken_for_missing_paths(tmp_path):
    from scanner.cli.scan import check_paths

    suspect = tmp_path / "suspect.safetensors"
    _header_file(suspect, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    for hub_id in ("Qwen/Qwen2.5-3B-Instruct", "gpt2", "org/model.v1"):
        check_paths(suspect, hub_id)  # looked up in the cache later, not refused here
    for path in ("./missing-model", "/no/such/model", "a/b/c"):
        with pytest.raises(InputError, match="no such directory"):
            check_paths(suspect, path)


def test_a_failed_position_screen_is_a_skipped_stage_and_every_position_is_measured(zoo_dir, monkeypatch):
    """The catalogue's position screen only saves work: where it fails, the scan measures every catalogue trigger at
    every position and records the screen as skipped with why, not as an error (BD009 would call the evidence
    incomplete, and nothing is missing)."""
    import scanner.api.pipeline
    from scanner.errors import MeasurementError

    def broken(*args, **kwargs):
        raise MeasurementError("the first-token forward failed")

    monkeypatch.setattr(scanner.api.pipeline, "first_token_kls", broken)
    findings = scan(zoo_dir / "emoji", str(zoo_dir / "base"),
                    ScanOptions(probes=ProbeOptions(given=tuple(probe_lines(zoo_dir, 8))),
                                discovery=DiscoveryOptions(enabled=False), localisation=LocalisationOptions(top=0)))
    screen = next(s for s in findings.stages if s.name == "behaviour_screen")
    assert screen.status == "skipped" and "the first-token forward failed" in screen.detail
    assert "every catalogue trigger was measured at every position" in screen.detail
    assert all(len(t.by_position) == 3 for t in findings.triggers) and len(findings.triggers) == 7
    assert not any(s.status == "error" for s in findings.stages)
    assert "BD009" not in {r.rule_id for r in judge(findings, default_pack()).fired}
