"""Where the weights go and in what form: bitsandbytes quantisation, refused clearly where it cannot run."""

from __future__ import annotations

import pytest
import torch

from scanner.errors import InputError, ResourceError
from scanner.inputs.loading import check_memory, checkpoint_keys
from scanner.inputs.placement import check_quantisation, weight_bytes
from scanner.model.sites import dense_weight
from scanner.options import ModelOptions

from helpers import invoke


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
    with pytest.raises(InputError):
        ModelOptions(quantisation="3bit")


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
    assert "--load-in-4bit" not in str(refused.value)
    with pytest.raises(ResourceError, match=r"or --load-in-4bit \(bitsandbytes\)"):
        check_memory({"model.layers.0.mlp.up_proj.weight": [4096, 4096]}, "bfloat16", torch.device("cuda", 0))


def test_dense_weight_of_an_ordinary_linear_is_its_weight():
    linear = torch.nn.Linear(3, 2)
    assert torch.equal(dense_weight(linear), linear.weight.detach())


def test_the_loaders_path_for_given_tensors_builds_the_model_the_ordinary_path_does(zoo_dir):
    """A quantised suspect is built by transformers from its own tensors (``_load_model(state_dict=...)``), since a
    packed reference cannot take them; without bitsandbytes the same path must give the ordinary model, generation
    settings included."""
    from safetensors.torch import load_file

    from scanner.inputs.loading import _load_model

    state = load_file(zoo_dir / "emoji" / "model.safetensors")
    built = _load_model(zoo_dir / "base", torch.float32, torch.device("cpu"), state_dict=state)
    ordinary = _load_model(zoo_dir / "emoji", torch.float32, torch.device("cpu"))
    mine, theirs = built.state_dict(), ordinary.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert built.generation_config.to_dict() == ordinary.generation_config.to_dict()
    assert not any(p.requires_grad for p in built.parameters())


def test_a_tied_checkpoints_head_is_a_key_a_suspect_may_hold():
    shapes = {"model.embed_tokens.weight": [100, 8], "model.norm.weight": [8]}
    assert checkpoint_keys(shapes, {"lm_head.weight"}) == {
        "model.embed_tokens.weight": (100, 8), "model.norm.weight": (8,), "lm_head.weight": (100, 8)}
    assert checkpoint_keys(shapes, set()) == {"model.embed_tokens.weight": (100, 8), "model.norm.weight": (8,)}


def test_a_pair_too_large_for_memory_is_refused_with_a_max_memory_under_which_it_fits(monkeypatch):
    import re

    import scanner.inputs.loading
    from scanner.inputs.offload import plan_offload
    from scanner.options import parse_size

    # The Qwen2.5-0.5B shape's embedding and 24 layers' MLP-sized weights: 1.8 GB a model in float32.
    shapes = {"model.embed_tokens.weight": [151_936, 896]}
    shapes.update({f"model.layers.{i}.mlp.up_proj.weight": [4_864, 2_688] for i in range(24)})
    monkeypatch.setattr(scanner.inputs.loading, "available_bytes", lambda device: 3 * 1024 ** 3)
    with pytest.raises(ResourceError, match=r"needs about 5\.5 GiB .* or --max-memory \d+MB to offload") as refused:
        check_memory(shapes, "float32", torch.device("cpu"))
    suggested = parse_size(re.search(r"--max-memory (\d+MB)", str(refused.value)).group(1))
    monkeypatch.setattr("shutil.disk_usage", lambda path: __import__("shutil")._ntuple_diskusage(10 ** 12, 0, 10 ** 12))
    check_memory(shapes, "float32", torch.device("cpu"), offload=plan_offload(suggested, None, torch.device("cpu"), 1.8e9))
    with pytest.raises(ResourceError, match="give a smaller --max-memory"):
        check_memory(shapes, "float32", torch.device("cpu"), offload=plan_offload(2 * suggested, None, torch.device("cpu"), 1.8e9))
