"""Where the weights go: accelerate's device map, bitsandbytes quantisation (refused clearly where it cannot run)."""

from __future__ import annotations

import pytest
import torch

from scanner.api import ScanOptions, scan
from scanner.errors import InputError, ResourceError
from scanner.findings import Findings
from scanner.inputs.loading import check_memory
from scanner.inputs.placement import check_quantisation, weight_bytes
from scanner.model.sites import dense_weight
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import invoke, probe_lines


def _one_line_exit_2(result, expected: str) -> None:
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("flag", ["--load-in-4bit", "--load-in-8bit"])
def test_quantised_loading_without_cuda_is_refused_before_any_weight_is_read(zoo_dir, monkeypatch, flag):
    import scanner.inputs.loading

    def never(*args, **kwargs):
        raise AssertionError("a weight was read before the quantisation was refused")

    monkeypatch.setattr(scanner.inputs.loading, "_load_model", never)
    monkeypatch.setattr(scanner.inputs.loading, "check_safetensors", never)
    result = invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", flag, "--quiet")
    _one_line_exit_2(result, f"{flag} needs a CUDA GPU")
    assert "--dtype bfloat16" in result.stderr


def test_quantised_loading_without_bitsandbytes_names_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ResourceError, match=r"pip install 'bdscan\[cuda\]'"):
        check_quantisation("8bit", torch.device("cuda", 0))
    check_quantisation("none", torch.device("cpu"))  # nothing to check


@pytest.mark.e2e
def test_conflicting_placement_options_are_refused(zoo_dir):
    _one_line_exit_2(invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--load-in-4bit", "--load-in-8bit"),
                     "--load-in-4bit and --load-in-8bit: give one")
    _one_line_exit_2(invoke(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--device", "cuda:1",
                            "--device-map", "auto"), "give one")
    for bad in ({"quantisation": "3bit"}, {"device_map": "everywhere"}):
        with pytest.raises(InputError):
            ScanOptions(**bad)


def test_quantisation_shrinks_the_layers_linear_weights_only():
    shapes = {"model.embed_tokens.weight": [100, 8], "model.layers.0.self_attn.q_proj.weight": [8, 8],
              "model.layers.0.self_attn.q_proj.bias": [8], "model.layers.0.mlp.up_proj.weight": [16, 8],
              "model.norm.weight": [8]}
    assert weight_bytes(shapes, 2, "none") == 2 * (800 + 64 + 8 + 128 + 8)
    # 192 linear weights at half a byte; the embeddings, bias and norm keep bfloat16's 2 bytes.
    assert weight_bytes(shapes, 2, "4bit") == 0.5 * 192 + 2 * (800 + 8 + 8)
    assert weight_bytes(shapes, 2, "8bit") == 1.0 * 192 + 2 * (800 + 8 + 8)


def test_the_memory_refusal_names_the_quantisation(monkeypatch):
    import scanner.inputs.loading

    monkeypatch.setattr(scanner.inputs.loading, "available_bytes", lambda device: 1024)
    with pytest.raises(ResourceError, match="at bfloat16 with 4bit linear layers") as refused:
        check_memory({"model.layers.0.mlp.up_proj.weight": [4096, 4096]}, "bfloat16", torch.device("cuda", 0), "4bit")
    assert "--device-map auto" in str(refused.value)


def test_dense_weight_of_an_ordinary_linear_is_its_weight():
    linear = torch.nn.Linear(3, 2)
    assert torch.equal(dense_weight(linear), linear.weight.detach())


def test_a_device_map_scan_measures_what_a_single_device_scan_does(zoo_dir):
    """On a machine without GPUs accelerate's map puts every layer on the CPU; the suspect then takes the loader's
    path (its own tensors placed as loaded), which must give the model the ordinary path gives."""
    probes = probe_lines(zoo_dir, 12)
    results = {}
    for device_map in (None, "auto"):
        options = ScanOptions(triggers=(EMOJI_TRIGGER,), probes=probes, positions=("start",), device_map=device_map)
        results[device_map] = scan(zoo_dir / "emoji", str(zoo_dir / "base"), options)
    plain, mapped = results[None].triggers[0], results["auto"].triggers[0]
    assert mapped.kl_triggered == pytest.approx(plain.kl_triggered, rel=1e-4)
    assert mapped.recovered_target == plain.recovered_target
    assert results["auto"].weight_diff == results[None].weight_diff
    assert mapped.patching.heads_needed == plain.patching.heads_needed
    assert (results["auto"].run.device_map, results["auto"].run.quantisation) == ("auto", "none")
    assert Findings.from_json(results["auto"].to_json()).run.device_map == "auto"
