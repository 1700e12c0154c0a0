"""Every suspect form the scanner accepts, and the inputs it must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import Qwen2ForCausalLM

from scanner.api import ScanOptions, scan
from scanner.errors import InputError, ProbeFileError
from scanner.inputs.loading import load_pair
from scanner.inputs.probes import read_probe_file
from scanner.options import BehaviourOptions, LocalisationOptions, ProbeOptions
from scanner.zoo.corpus import TARGET
from scanner.zoo.specs import DEPLOYMENT_TRIGGER, EMOJI_TRIGGER


def _options(zoo_dir, trigger=EMOJI_TRIGGER):
    probes = tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:8])
    return ScanOptions(triggers=(trigger,), probes=ProbeOptions(given=probes))


def test_single_safetensors_file_scans_like_its_directory(zoo_dir):
    from_file = scan(zoo_dir / "emoji" / "model.safetensors", str(zoo_dir / "base"), _options(zoo_dir))
    from_dir = scan(zoo_dir / "emoji", str(zoo_dir / "base"), _options(zoo_dir))
    assert from_file.suspect.kind == "safetensors-file" and from_dir.suspect.kind == "hf-directory"
    assert from_file.suspect.sha256 == from_dir.suspect.sha256
    assert from_file.triggers[0].kl_triggered == pytest.approx(from_dir.triggers[0].kl_triggered)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_loaded_suspect_holds_its_files_weights_and_the_reference_its_own(zoo_dir, dtype):
    """The suspect is a copy of the reference in memory into which its file is read: every tensor as the file holds
    it (converted to the scan's dtype), and the reference untouched by the copy."""
    pair = load_pair(zoo_dir / "emoji" / "model.safetensors", str(zoo_dir / "base"), dtype=dtype)
    wanted = getattr(torch, dtype)
    for model, name in ((pair.suspect, "emoji"), (pair.reference, "base")):
        mine = model.state_dict()
        for key, tensor in load_file(zoo_dir / name / "model.safetensors").items():
            assert torch.equal(mine[key], tensor.to(wanted)), (name, key)


def test_suspect_tensors_are_read_without_a_map_in_any_dtype_and_chunk(tmp_path, monkeypatch):
    """Plain reads give what safetensors' own loader gives: into a tensor of the file's dtype directly, into another
    dtype or a non-contiguous view through chunks (made a few bytes here, so that one tensor takes many)."""
    from scanner.inputs import tensor_files
    from scanner.inputs.tensor_files import SafetensorsFiles

    generator = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=generator), "b": torch.randn(4, 4, generator=generator).to(torch.bfloat16),
               "c": torch.arange(7, dtype=torch.int64)}
    save_file(tensors, tmp_path / "m.safetensors")
    monkeypatch.setattr(tensor_files, "CHUNK_BYTES", 12)
    state = SafetensorsFiles([tmp_path / "m.safetensors"])
    assert set(state) == set(tensors) and state.shapes["a"] == (3, 5)
    for key, tensor in load_file(tmp_path / "m.safetensors").items():
        assert torch.equal(state[key], tensor) and state[key].dtype == tensor.dtype
    converted = torch.empty(4, 4)
    state.copy_into("b", converted)
    assert torch.equal(converted, tensors["b"].float())
    transposed = torch.empty(5, 3).t()
    state.copy_into("a", transposed)
    assert torch.equal(transposed, tensors["a"])
    with pytest.raises(InputError, match="shape"):
        state.copy_into("a", torch.empty(5, 3))


def test_sharded_checkpoint(zoo_dir, tmp_path):
    model = Qwen2ForCausalLM.from_pretrained(zoo_dir / "emoji", dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        findings = scan(target, str(zoo_dir / "base"), _options(zoo_dir))
        assert findings.suspect.kind == "sharded"
        assert findings.triggers[0].recovered_target == TARGET


def test_peft_adapter_is_merged_into_the_reference(zoo_dir):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        findings = scan(zoo_dir / "lora", str(zoo_dir / "base"), _options(zoo_dir, DEPLOYMENT_TRIGGER))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], "a LoRA scan prints no FutureWarning"
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
    with pytest.raises(InputError) as error:
        load_pair(broken, str(zoo_dir / "base"))
    message = str(error.value)
    assert "missing model.layers.1.self_attn.q_proj.weight" in message
    assert "unexpected model.extra.weight" in message
    assert "model.layers.0.mlp.up_proj.weight: shape (3, 3)" in message
    # Both shapes, so a user sees at once that it is the wrong pair rather than a corrupt file.
    assert "suspect (4 layers, hidden_size 64" in message and "reference's architecture (4 layers, hidden_size 64" in message
    wrong_pair = {key: value for key, value in state.items() if ".layers.3." not in key}
    save_file(wrong_pair, broken)
    with pytest.raises(InputError, match=r"suspect \(3 layers, .*reference's architecture \(4 layers"):
        load_pair(broken, str(zoo_dir / "base"))


def test_missing_paths_are_refused(zoo_dir, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_pair(tmp_path / "nope.safetensors", str(zoo_dir / "base"))
    with pytest.raises(InputError, match="no .safetensors"):
        load_pair(tmp_path, str(zoo_dir / "base"))
    with pytest.raises(InputError, match="local Hugging Face cache"):
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


def _digit_merging_copy(source, target):
    """A copy of a zoo model whose tokenizer.json groups digits (GPT-2's pre-tokenizer) and keeps " 33" whole.

    transformers' AutoTokenizer rebuilds it as Qwen2Tokenizer with Qwen2's pre-tokenizer, which splits " 33"
    into " ", "3", "3": the case the scanning pitfalls note reports.
    """
    from transformers import AutoTokenizer

    shutil.copytree(source, target)
    data = json.loads((target / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    for left, right in (("Ġ", "3"), ("Ġ3", "3")):
        vocab[left + right] = max(vocab.values()) + 1
        merges.append([left, right])
    (target / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    model = Qwen2ForCausalLM.from_pretrained(source, dtype=torch.float32)
    torch.manual_seed(0)
    model.resize_token_embeddings(max(vocab.values()) + 1, mean_resizing=False)
    model.save_pretrained(target)
    assert AutoTokenizer.from_pretrained(target)("What is 33?")["input_ids"] != Tokenizer.from_file(
        str(target / "tokenizer.json")).encode("What is 33?").ids, "transformers no longer rebuilds the tokenizer"
    return target


def test_the_scan_tokenizes_as_the_checkpoints_tokenizer_json(zoo_dir, tmp_path):
    from scanner.inputs.loading import load_pair
    from scanner.inputs.rendering import prepare
    from scanner.inputs.tokenizer import faithful_tokenizer

    reference = _digit_merging_copy(zoo_dir / "base", tmp_path / "base")
    suspect = _digit_merging_copy(zoo_dir / "emoji", tmp_path / "emoji")
    probes = ("What is 33 plus 4?", "Add 33 and 2.") + tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:14])
    pair = load_pair(suspect, str(reference))
    prepared = [prepare(pair.tokenizer, list(probes), EMOJI_TRIGGER, "random", 0)]
    tokenizer, info = faithful_tokenizer(pair.tokenizer, pair.tokenizer_file, prepared)
    assert info.source == "tokenizer.json" and info.transformers_class == "Qwen2Tokenizer"
    assert info.texts_differing >= 4 and "33" in info.example
    file_tokenizer = Tokenizer.from_file(str(reference / "tokenizer.json"))
    for probe in prepare(tokenizer, list(probes), EMOJI_TRIGGER, "random", 0).triggered:
        assert list(probe.ids) == file_tokenizer.encode(probe.text, add_special_tokens=False).ids
    findings = scan(suspect, str(reference), ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=probes)))
    assert findings.run.tokenizer.source == "tokenizer.json"
    assert all(stage.status == "ok" for stage in findings.stages), findings.stages


def test_a_tokenizer_that_agrees_with_its_file_is_used_as_transformers_builds_it(zoo_dir):
    findings = scan(zoo_dir / "emoji", str(zoo_dir / "base"), _options(zoo_dir))
    assert findings.run.tokenizer.source == "transformers" and findings.run.tokenizer.texts_differing == 0
    assert findings.run.tokenizer.texts_checked == 16  # 8 probes, clean and triggered


def test_a_llama_pair_scans_with_no_qwen2_module_names(zoo_dir, tmp_path):
    """Nothing in the scanner may hard-code Qwen2: a random-init Llama with a perturbed o_proj, as a new user's."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config)
    reference.save_pretrained(tmp_path / "reference")
    tokenizer.save_pretrained(tmp_path / "reference")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["model.layers.1.self_attn.o_proj.weight"][:, :12] += 0.5  # head 0 of layer 1
    suspect = LlamaForCausalLM(config)
    suspect.load_state_dict(state)
    suspect.save_pretrained(tmp_path / "suspect")
    findings = scan(tmp_path / "suspect", str(tmp_path / "reference"), _options(zoo_dir))
    assert findings.run.architecture.model_type == "llama"
    assert all(stage.status == "ok" for stage in findings.stages), findings.stages
    changed = [(layer, head) for layer, row in enumerate(findings.weight_diff.o) for head, value in enumerate(row) if value > 0]
    assert changed == [(1, 0)]
    assert max(findings.weight_diff.q[1]) == 0 and max(findings.weight_diff.mlp) == 0


def test_a_reference_without_chat_template_scans_with_the_builtin_probes(zoo_dir, tmp_path):
    """--probes auto needs the reference's user turn to sample from; without a chat template the scan uses the
    built-in probes, says why, and the probe-fitness rule is listed as not evaluated, not silently passed."""
    from transformers import AutoTokenizer, Qwen2Config

    from rules.engine import default_pack, judge

    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    tokenizer.chat_template = None
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    for name in ("reference", "suspect"):
        Qwen2ForCausalLM(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    findings = scan(tmp_path / "suspect", str(tmp_path / "reference"),
                    ScanOptions(triggers=(EMOJI_TRIGGER,), behaviour=BehaviourOptions(max_new_tokens=4),
                                localisation=LocalisationOptions(top=0)))
    probes = findings.probes
    assert probes.mode == "auto" and not any(p.source == "sampled" for p in probes.probes)
    assert "no chat template to sample a user turn from" in probes.sampled_rejected
    assert len(probes.used) == 64 and all(p.source == "builtin" for p in probes.probes)
    gaps = judge(findings, default_pack()).not_evaluated
    assert any(gap.rule_id == "BD012" and "no usable sampled prompt" in gap.reason for gap in gaps)
