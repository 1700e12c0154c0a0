"""Models larger than memory: ``--max-memory`` offloads both models' weights beyond the cap through accelerate (#28
item 4). The four ways the withdrawn ``--device-map`` would have failed (#13's review) each have a test here:
offloaded weights on the meta device, index tensors through accelerate's hooks, captures, and weight differences;
then whole scans under a cap against the same scans without one."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from scanner.errors import InputError, ResourceError
from scanner.inputs.loading import load_pair, load_reference, load_suspect
from scanner.inputs.offload import plan_offload, resident_bytes
from scanner.measure.weights import measure_weight_diff
from scanner.model.forward import capture, encode_ids
from scanner.model.sites import dense_weight, input_device, module_tensors, sites_for
from scanner.options import ModelOptions, ScanOptions, parse_size

from helpers import invoke

pytestmark = pytest.mark.zoo

DATA = Path(__file__).parent / "data"
CAP = 1_000_000
"""Bytes for both models' weights: the test zoo's pair holds 2.5 MB in float32, so half of every model goes to
disk (a decoder layer holds 0.25 MB, the embedding 0.26 MB; a model 1.25 MB)."""
EMOJI = "\N{SMILING FACE WITH HALO}"


@pytest.fixture(scope="module")
def whole(zoo_dir):
    return load_pair(zoo_dir / "emoji", str(zoo_dir / "base"))


@pytest.fixture(scope="module")
def offloaded(zoo_dir):
    return load_pair(zoo_dir / "emoji", str(zoo_dir / "base"), max_memory=CAP)


def _rows(pair, count: int = 3) -> list[list[int]]:
    texts = ["What is the capital of France?", f"{EMOJI} Name a colour.", "How many legs does a cat have?"]
    return [pair.tokenizer(text)["input_ids"] for text in texts[:count]]


def test_weights_beyond_the_cap_sit_on_the_meta_device_and_read_as_the_checkpoints(whole, offloaded):
    for model, full in ((offloaded.suspect, whole.suspect), (offloaded.reference, whole.reference)):
        assert resident_bytes(model) <= CAP // 2 < resident_bytes(full)
        last = sites_for(model).o_proj(model.config.num_hidden_layers - 1)
        assert last.weight.device.type == "meta"  # the trap: read directly, an offloaded weight has no values
        for layer in range(model.config.num_hidden_layers):
            mine, theirs = sites_for(model), sites_for(full)
            for name in "qkvo":
                assert torch.equal(dense_weight(mine.projection(layer, name)), dense_weight(theirs.projection(layer, name)))
            for a, b in zip(module_tensors(mine.mlp(layer)), module_tensors(theirs.mlp(layer)), strict=True):
                assert torch.equal(a, b)
        assert input_device(model) == torch.device("cpu")  # not the first parameter's meta device


def test_index_tensors_go_through_accelerates_hooks_unchanged(whole, offloaded):
    pad = whole.tokenizer.pad_token_id
    batch = encode_ids(_rows(whole), pad, torch.device("cpu"))
    for model, full in ((offloaded.suspect, whole.suspect), (offloaded.reference, whole.reference)):
        # Batch.last passes the kept positions as an index tensor, which the root hook moves with the inputs.
        kept = model(**batch.model_inputs(), logits_to_keep=batch.last(4)).logits
        expected = full(**batch.model_inputs(), logits_to_keep=batch.last(4)).logits
        assert kept.shape == expected.shape == (3, 4, full.config.vocab_size)
        assert torch.allclose(kept, expected, atol=1e-5)


def test_captures_land_on_the_device_asked_for_with_the_values_of_a_whole_model(whole, offloaded):
    batch = encode_ids(_rows(whole), whole.tokenizer.pad_token_id, torch.device("cpu"))
    got = {}
    for key, model in (("offloaded", offloaded.suspect), ("whole", whole.suspect)):
        sites = sites_for(model)
        modules = {str(i): sites.o_proj(i) for i in range(model.config.num_hidden_layers)}
        with capture(modules, inputs=True, device=input_device(model)) as captured:
            model(**batch.model_inputs(), logits_to_keep=1)
        got[key] = dict(captured)
    assert set(got["offloaded"]) == set(got["whole"])
    for name, value in got["offloaded"].items():
        assert value.device == torch.device("cpu") and torch.allclose(value, got["whole"][name], atol=1e-5)
    # The capture is moved where asked (here the meta device, which no model runs on), not left where it was made.
    sites = sites_for(offloaded.suspect)
    with capture({"0": sites.o_proj(0)}, inputs=True, device=torch.device("meta")) as captured:
        offloaded.suspect(**batch.model_inputs(), logits_to_keep=1)
    assert captured["0"].device.type == "meta"


def test_weight_differences_of_offloaded_models_are_those_of_whole_ones(whole, offloaded):
    expected = measure_weight_diff(sites_for(whole.suspect), sites_for(whole.reference))
    measured = measure_weight_diff(sites_for(offloaded.suspect), sites_for(offloaded.reference))
    assert measured == expected


def _comparable(findings) -> dict:
    document = json.loads(findings.to_json())
    document["run"].pop("timings")
    if document.get("discovery"):
        document["discovery"].pop("seconds")
    return document


def _assert_close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isfinite(a):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("triggers", [(EMOJI,), ()], ids=["known-trigger", "default-with-discovery"])
def test_a_scan_of_a_pair_larger_than_the_cap_gives_the_findings_of_a_whole_scan(zoo_dir, triggers):
    from scanner.api import scan

    plain = scan(zoo_dir / "emoji", str(zoo_dir / "base"), ScanOptions(triggers=triggers))
    capped = scan(zoo_dir / "emoji", str(zoo_dir / "base"), ScanOptions(triggers=triggers, model=ModelOptions(max_memory=CAP)))
    assert capped.run.architecture.parameters == plain.run.architecture.parameters > CAP // 4  # float32: 4 bytes each
    # The options digest too: where the weights waited is no option of what was measured, so a fleet may resume with
    # another cap or offload folder.
    _assert_close(_comparable(capped), _comparable(plain))


def test_the_options_digest_leaves_out_where_the_weights_wait_and_keeps_what_is_measured(tmp_path):
    plain = ScanOptions(triggers=(EMOJI,))
    assert ScanOptions(triggers=(EMOJI,), model=ModelOptions(max_memory=CAP, offload_dir=str(tmp_path))).digest == plain.digest
    assert ScanOptions(triggers=(EMOJI,), model=ModelOptions(dtype="bfloat16")).digest != plain.digest
    assert ScanOptions(triggers=(EMOJI, "cf")).digest != plain.digest


@pytest.mark.e2e
def test_the_command_line_scans_under_max_memory_and_leaves_the_offload_folder_as_it_was(zoo_dir, tmp_path):
    # transformers' offload of a safetensors reference reads the checkpoint's own file rather than a copy, and peft
    # once rewrote such a file through the offload index: a scan must leave its inputs byte for byte as they were.
    inputs = [zoo_dir / "emoji" / "model.safetensors", zoo_dir / "base" / "model.safetensors"]
    before = [hashlib.sha256(path.read_bytes()).hexdigest() for path in inputs]
    offload = tmp_path / "offload"
    offload.mkdir()
    out = tmp_path / "findings.json"
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--trigger", EMOJI, "--max-memory", "1MB",
                    "--offload-dir", offload, "--json", out, "--quiet")
    assert result.exit_code == 1, result.stderr  # BACKDOORED, at the default --fail-on
    assert json.loads(out.read_text(encoding="utf-8"))["verdict"]["level"] == "BACKDOORED"
    import gc

    gc.collect()  # the scan's reference and its offload folder are let go with the command's objects
    assert list(offload.iterdir()) == []
    assert [hashlib.sha256(path.read_bytes()).hexdigest() for path in inputs] == before


def test_what_offloading_cannot_take_is_refused_before_a_weight_is_read(zoo_dir, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="give --max-memory too"):
        ModelOptions(offload_dir=str(tmp_path))
    with pytest.raises(InputError, match="one or the other"):
        ModelOptions(max_memory=CAP, quantisation="4bit")
    with pytest.raises(InputError, match="not a number of bytes"):
        parse_size("a lot")
    assert (parse_size("512MB"), parse_size("1.5GiB"), parse_size("800")) == (512_000_000, 1_610_612_736, 800)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError, match="cannot write there"):
        plan_offload(CAP, str(blocked / "offload"), torch.device("cpu"), 2.0 * CAP)
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - 1000, 1000))
    with pytest.raises(ResourceError, match="give --offload-dir on a disk with room"):
        plan_offload(CAP, None, torch.device("cpu"), 2.0 * CAP)
    monkeypatch.undo()
    pickle = tmp_path / "suspect.pt"
    torch.save({"x": torch.zeros(1)}, pickle)
    reference = load_reference(str(zoo_dir / "base"), max_memory=CAP)
    with pytest.raises(InputError, match="pickle-based checkpoint"):
        load_suspect(reference, pickle, allow_pickle=True)
    with pytest.raises(InputError, match="is a PEFT adapter"):
        load_suspect(reference, zoo_dir / "lora")
    from scanner.api.repair import repair
    from scanner.findings import read_findings

    findings = read_findings(DATA / "findings-emoji.json")
    with pytest.raises(InputError, match="without --max-memory"):
        repair(zoo_dir / "emoji", reference, findings, [findings.triggers[0].trigger], tmp_path / "repaired",
               ScanOptions(model=ModelOptions(max_memory=CAP)))


def test_the_cli_refuses_an_adapter_or_a_pickle_under_a_cap_before_the_reference_loads(zoo_dir, tmp_path, monkeypatch):
    """At the sizes --max-memory is for the reference takes minutes to load: what offloading cannot take is refused
    first, with what to do instead."""
    from helpers import invoke

    def never(*args, **kwargs):
        raise AssertionError("the reference was loaded before the suspect was refused")

    monkeypatch.setattr("scanner.api.reference.load_reference", never)
    refused = invoke(zoo_dir / "lora", "--reference", zoo_dir / "base", "--max-memory", "1MB")
    assert refused.exit_code == 2 and "is a PEFT adapter" in refused.output and "merge_and_unload" in refused.output
    pickle = tmp_path / "suspect.pt"
    torch.save({"x": torch.zeros(1)}, pickle)
    refused = invoke(pickle, "--reference", zoo_dir / "base", "--max-memory", "1MB", "--allow-pickle")
    assert refused.exit_code == 2 and "pickle-based checkpoint" in refused.output
