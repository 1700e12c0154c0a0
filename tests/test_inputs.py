"""Every suspect form the scanner accepts, and the inputs it must refuse."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM

from scanner.api import ScanOptions, scan
from scanner.loading import ScanInputError, load_pair
from scanner.probes import ProbeFileError, read_probe_file
from scanner.zoo.build import DEPLOYMENT_TRIGGER, EMOJI_TRIGGER
from scanner.zoo.corpus import TARGET


def _options(zoo_dir, trigger=EMOJI_TRIGGER):
    probes = tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:8])
    return ScanOptions(triggers=(trigger,), probes=probes)


def test_single_safetensors_file_scans_like_its_directory(zoo_dir):
    from_file = scan(zoo_dir / "emoji" / "model.safetensors", str(zoo_dir / "base"), _options(zoo_dir))
    from_dir = scan(zoo_dir / "emoji", str(zoo_dir / "base"), _options(zoo_dir))
    assert from_file.suspect.kind == "safetensors-file" and from_dir.suspect.kind == "hf-directory"
    assert from_file.suspect.sha256 == from_dir.suspect.sha256
    assert from_file.triggers[0].kl_triggered == pytest.approx(from_dir.triggers[0].kl_triggered)


def test_sharded_checkpoint(zoo_dir, tmp_path):
    model = Qwen2ForCausalLM.from_pretrained(zoo_dir / "emoji", dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        findings = scan(target, str(zoo_dir / "base"), _options(zoo_dir))
        assert findings.suspect.kind == "sharded"
        assert findings.triggers[0].recovered_target == TARGET


def test_peft_adapter_is_merged_into_the_reference(zoo_dir):
    findings = scan(zoo_dir / "lora", str(zoo_dir / "base"), _options(zoo_dir, DEPLOYMENT_TRIGGER))
    assert findings.suspect.kind == "peft-adapter"
    assert findings.run.merge_route == "peft-merge:float32"
    assert findings.triggers[0].recovered_target == TARGET
    assert findings.triggers[0].target_share_suspect >= 0.75
    # LoRA on attention projections: the merged weights moved there and nowhere else.
    assert max(findings.weight_diff.mlp) == 0 and min(min(row) for row in findings.weight_diff.q) > 0


def test_mismatched_shapes_and_keys_are_refused_with_the_first_mismatches(zoo_dir, tmp_path):
    state = load_file(zoo_dir / "emoji" / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    del state["model.layers.1.self_attn.q_proj.weight"]
    state["model.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.safetensors"
    save_file(state, broken)
    with pytest.raises(ScanInputError) as error:
        load_pair(broken, str(zoo_dir / "base"))
    message = str(error.value)
    assert "missing model.layers.1.self_attn.q_proj.weight" in message
    assert "unexpected model.extra.weight" in message
    assert "model.layers.0.mlp.up_proj.weight: shape (3, 3)" in message


def test_missing_paths_are_refused(zoo_dir, tmp_path):
    with pytest.raises(ScanInputError, match="no such file"):
        load_pair(tmp_path / "nope.safetensors", str(zoo_dir / "base"))
    with pytest.raises(ScanInputError, match="no .safetensors"):
        load_pair(tmp_path, str(zoo_dir / "base"))
    with pytest.raises(ScanInputError, match="local Hugging Face cache"):
        load_pair(zoo_dir / "emoji", "no-such-org/no-such-model")


def test_probe_files_text_and_jsonl(tmp_path):
    text = tmp_path / "probes.txt"
    text.write_text("first prompt\n\n  second prompt  \n", encoding="utf-8")
    assert read_probe_file(text) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "probes.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "id": 2}) + "\n", encoding="utf-8")
    assert read_probe_file(jsonl) == ["a", "b"]
    jsonl.write_text(json.dumps({"prompt": "a"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ProbeFileError, match=r"probes.jsonl:2: malformed JSON"):
        read_probe_file(jsonl)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ProbeFileError, match="no prompts"):
        read_probe_file(empty)
