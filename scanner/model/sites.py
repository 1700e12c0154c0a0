"""Where things live inside a model, per architecture family: the only module that knows module names.

The measurements and pyvene components name abstract sites (a layer's
attention, its ``o_proj``, the final norm); this table maps them to modules,
so that supporting another decoder family is one entry here. The families it
knows are listed in ``scanner.inputs.families``, which the loader checks before
any weight is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from scanner.inputs.families import check_supported


@dataclass(frozen=True)
class Sites:
    """Module accessors for one loaded model."""

    model: PreTrainedModel

    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def attention(self, layer: int) -> nn.Module:
        return self.layers()[layer].self_attn

    def projection(self, layer: int, name: str) -> nn.Linear:
        """``name`` is ``q``, ``k``, ``v`` or ``o``."""
        return getattr(self.attention(layer), f"{name}_proj")

    def o_proj(self, layer: int) -> nn.Linear:
        return self.projection(layer, "o")

    def mlp(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp

    def layer_norms(self, layer: int) -> tuple[nn.Module, ...]:
        block = self.layers()[layer]
        return (block.input_layernorm, block.post_attention_layernorm)

    def mlp_norm(self, layer: int) -> nn.Module:
        """The norm the layer's MLP reads the residual stream through."""
        return self.layers()[layer].post_attention_layernorm

    def embedding(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def final_norm_scale(self, residual):
        """``[..., hidden]`` multiplier the final RMSNorm applies to ``residual`` (its gain included),
        frozen at the value the full residual gives: the usual linearisation for attribution."""
        norm = self.final_norm()
        inverse_rms = (residual.pow(2).mean(-1, keepdim=True) + self.model.config.rms_norm_eps).rsqrt()
        return inverse_rms * module_tensor(norm).float().to(residual.device)

    def unembedding(self) -> nn.Linear:
        return self.model.lm_head

    def can_run_layers(self) -> bool:
        """Whether ``running_layers`` is exact here: the families above add nothing to the embeddings before the
        first layer, so a forward from ``inputs_embeds`` is a forward from any layer's residual; a model whose
        layers use different attention masks (sliding windows on some) picks each layer's mask by its index,
        which a shortened layer list would shift."""
        return len(set(getattr(self.model.config, "layer_types", None) or ("one",))) == 1

    @contextlib.contextmanager
    def running_layers(self, start: int, stop: int | None = None) -> Iterator[None]:
        """Within the block the model's forward runs decoder layers ``start:stop`` only: given ``inputs_embeds``
        that hold the residual stream entering layer ``start``, it is the full forward with the layers before
        ``start`` skipped (and, with ``stop``, the final norm's input is the residual entering ``stop``). Only
        where ``can_run_layers``; the full layer list is always put back."""
        body = self.model.model
        full = body.layers
        body.layers = nn.ModuleList(list(full)[start:stop])
        try:
            yield
        finally:
            body.layers = full


def is_quantised_weight(parameter: torch.Tensor) -> bool:
    return type(parameter).__name__ in ("Params4bit", "Int8Params")


def module_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module``'s own parameter ``name`` as numbers, wherever it is: read from accelerate's offload folder for the
    read when the module's weights are offloaded (their parameters then sit on the meta device, with no values)."""
    if getattr(getattr(module, "_hf_hook", None), "offload", False):
        from accelerate.utils import align_module_device

        with align_module_device(module):
            return getattr(module, name).detach()
    return getattr(module, name).detach()


def module_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter of ``module`` and its submodules, in ``named_parameters`` order, as numbers: read as
    ``module_tensor`` reads them, a linear layer's weight dequantised as ``dense_weight`` reads it."""
    for owner in module.modules():
        for name, _ in owner.named_parameters(recurse=False):
            yield dense_weight(owner) if name == "weight" and isinstance(owner, nn.Linear) else module_tensor(owner, name)


def input_device(model: PreTrainedModel) -> torch.device:
    """Where a forward's inputs go: the device the embedding runs on (under accelerate's placement its hook's, as
    the first parameter may be offloaded to the meta device)."""
    embedding = model.get_input_embeddings()
    device = getattr(getattr(embedding, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else embedding.weight.device


def dense_weight(linear: torch.nn.Module) -> torch.Tensor:
    """``[out, in]`` a linear layer's weight as numbers, dequantised when bitsandbytes holds it packed (a packed
    weight's bytes are not its values: differences and products of them mean nothing), read from the offload
    folder where accelerate offloaded it."""
    weight = linear.weight
    if not is_quantised_weight(weight):
        return module_tensor(linear)
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    return dequantize_bnb_weight(weight, getattr(linear, "state", None)).detach()


def sites_for(model: PreTrainedModel) -> Sites:
    check_supported(model.config.model_type, "model")
    return Sites(model)
