"""Attacker-controlled inputs: never run their code, never crash on them, refuse with one clear line."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from scanner.api import ScanOptions, scan
from scanner.errors import BdscanError, InputError, ProbeFileError
from scanner.inputs.checks import check_safetensors
from scanner.inputs.loading import load_pair
from scanner.inputs.probes import read_probe_file
from scanner.options import ProbeOptions

from helpers import invoke


class _PlantsMarker:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickles_are_refused_and_never_unpickled(zoo_dir, tmp_path, suffix):
    marker = tmp_path / "PWNED"
    evil = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"weight": _PlantsMarker(marker)}, evil)  # a zip archive with a pickle inside
    else:
        evil.write_bytes(pickle.dumps({"weight": _PlantsMarker(marker)}))
    refused = invoke(evil, "--reference", zoo_dir / "base")
    assert refused.exit_code == 2 and "pickle" in refused.stderr and "safetensors" in refused.stderr
    with pytest.raises(InputError, match=r"weights_only=True\) refused it"):
        load_pair(evil, str(zoo_dir / "base"), allow_pickle=True)
    assert not marker.exists()


def test_a_safe_pickle_loads_with_allow_pickle(zoo_dir, tmp_path):
    from safetensors.torch import load_file

    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(load_file(zoo_dir / "emoji" / "model.safetensors"), checkpoint)
    with pytest.raises(InputError, match="pickle-based"):
        load_pair(checkpoint, str(zoo_dir / "base"))
    pair = load_pair(checkpoint, str(zoo_dir / "base"), allow_pickle=True)
    assert pair.suspect_info.kind == "pickle"


def test_custom_code_is_refused_naming_the_field(zoo_dir, tmp_path):
    marker = tmp_path / "PWNED"
    for role in ("suspect", "reference"):
        model_dir = tmp_path / role
        shutil.copytree(zoo_dir / "emoji", model_dir)
        (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n", encoding="utf-8")
        config = json.loads((model_dir / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM", "AutoConfig": "evil.EvilConfig"}
        (model_dir / "config.json").write_text(json.dumps(config))
    for suspect, reference in ((tmp_path / "suspect", zoo_dir / "base"), (zoo_dir / "emoji", tmp_path / "reference")):
        result = invoke(suspect, "--reference", reference)
        assert result.exit_code == 2 and "'auto_map'" in result.stderr, result.stderr
    tokenizer_dir = tmp_path / "tokenizer"
    shutil.copytree(zoo_dir / "emoji", tokenizer_dir)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "EvilTokenizer"
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="'tokenizer_class' names 'EvilTokenizer'"):
        load_pair(tokenizer_dir, str(zoo_dir / "base"))
    assert not marker.exists()


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _broken_inputs(zoo_dir: Path, tmp: Path) -> list[tuple[str, Path, str]]:
    """(case, suspect path, the error it must produce)."""
    weights = (zoo_dir / "emoji" / "model.safetensors").read_bytes()
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "truncated.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp / "tiny.safetensors").write_bytes(b"\x01\x02")
    (tmp / "json.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    (tmp / "no-weights").mkdir()
    (tmp / "no-weights" / "config.json").write_text("{}")
    return [
        ("missing path", tmp / "absent.safetensors", "no such file or directory"),
        ("directory without weights", tmp / "no-weights", "no .safetensors weights"),
        ("empty file", tmp / "empty.safetensors", "empty file"),
        ("shorter than a header", tmp / "tiny.safetensors", "truncated"),
        ("truncated", tmp / "truncated.safetensors", "point past the end"),
        ("offsets past the end", _header_file(tmp / "offsets.safetensors",
                                             {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
         "point past the end"),
        ("wrong dtype", _header_file(tmp / "dtype.safetensors",
                                     {"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "unknown dtype"),
        ("absurd shape", _header_file(tmp / "shape.safetensors",
                                      {"w": {"dtype": "F32", "shape": [-3, 2], "data_offsets": [0, 8]}}, b"\0" * 8), "absurd shape"),
        ("bytes do not fit shape", _header_file(tmp / "size.safetensors",
                                                {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
         "do not hold shape"),
        ("header not JSON", tmp / "json.safetensors", "corrupt safetensors header"),
    ]


def test_broken_checkpoints_each_give_their_error(zoo_dir, tmp_path):
    for _case, path, expected in _broken_inputs(zoo_dir, tmp_path):
        with pytest.raises(InputError, match=expected):
            load_pair(path, str(zoo_dir / "base"))
    result = invoke(tmp_path / "truncated.safetensors", "--reference", zoo_dir / "base")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_adapter_for_another_base_is_refused(zoo_dir, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(zoo_dir / "lora", adapter)
    from safetensors.torch import load_file

    tensors = {k: torch.zeros(v.shape[0] + 3, v.shape[1]) if "lora_B" in k else v
               for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(InputError, match="was made for 'base', not for this reference") as refused:
        load_pair(adapter, str(zoo_dir / "base"))
    # Which module, and both shapes: what peft's own "Error(s) in loading state_dict for PeftModel:" left out.
    assert "self_attn.k_proj has 32 outputs in the reference, 35 in lora_B" in str(refused.value)
    assert "hidden_size 64" in str(refused.value)


def test_bad_probe_files_and_empty_triggers(zoo_dir, tmp_path):
    binary = tmp_path / "probes.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(ProbeFileError, match="binary"):
        read_probe_file(binary)
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--probes", binary)
    assert result.exit_code == 2 and "binary" in result.stderr
    with pytest.raises(InputError, match="empty or whitespace"):
        scan(zoo_dir / "emoji", str(zoo_dir / "base"), ScanOptions(triggers=("",), probes=ProbeOptions(given=("Opposite of hot?",))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_safetensors_headers_refuse_cleanly(tmp_path, blob):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    try:
        check_safetensors(path)
    except InputError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=5), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "I8", "X"]),
    "shape": st.lists(st.integers(-2, 5), max_size=3),
    "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3),
}), max_size=3), st.binary(max_size=40))
def test_fuzzed_structured_headers_refuse_cleanly(tmp_path, header, data):
    path = _header_file(tmp_path / "structured.safetensors", header, data)
    try:
        check_safetensors(path)
    except InputError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.sampled_from([".txt", ".jsonl"]))
def test_fuzzed_probe_files_read_or_refuse_cleanly(tmp_path, blob, suffix):
    path = tmp_path / f"probes{suffix}"
    path.write_bytes(blob)
    try:
        prompts = read_probe_file(path)
    except ProbeFileError:
        return
    assert prompts and all(isinstance(p, str) and p for p in prompts)


def test_same_inputs_and_seed_give_byte_identical_findings_apart_from_timings(zoo_dir):
    probes = tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:8])
    options = ScanOptions(triggers=("\N{SMILING FACE WITH HALO}", "cf"), probes=ProbeOptions(given=probes), seed=3)
    documents = []
    for _ in range(2):
        document = json.loads(scan(zoo_dir / "emoji", str(zoo_dir / "base"), options).to_json())
        document["run"]["timings"] = {}
        documents.append(json.dumps(document, ensure_ascii=False).encode())
    assert documents[0] == documents[1]


def test_too_little_memory_is_refused_before_loading(zoo_dir, monkeypatch):
    import scanner.inputs.loading

    monkeypatch.setattr(scanner.inputs.loading, "available_bytes", lambda device: 10 * 1024 * 1024)
    with pytest.raises(BdscanError, match=r"needs about .* GiB .* try --dtype bfloat16"):
        load_pair(zoo_dir / "emoji", str(zoo_dir / "base"))


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    import os

    from scanner.files import write_text_atomic

    target = tmp_path / "report.html"
    target.write_text("the previous, complete report", encoding="utf-8")

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "<html>half a new report")
    assert target.read_text(encoding="utf-8") == "the previous, complete report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
