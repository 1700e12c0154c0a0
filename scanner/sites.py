"""Where things live inside a model, per architecture family.

The measurements and pyvene components name abstract sites (a layer's
attention, its ``o_proj``, the final norm); this table maps them to modules,
so that supporting another decoder family is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

# Families whose decoder layers follow the Llama layout (self_attn.{q,k,v,o}_proj,
# mlp, input_layernorm, post_attention_layernorm) under model.layers.
LLAMA_LAYOUT = {"qwen2", "llama", "mistral", "qwen3", "gemma", "gemma2", "olmo"}


@dataclass(frozen=True)
class Sites:
    """Module accessors for one loaded model."""

    model: PreTrainedModel

    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def attention(self, layer: int) -> nn.Module:
        return self.layers()[layer].self_attn

    def o_proj(self, layer: int) -> nn.Linear:
        return self.attention(layer).o_proj

    def mlp(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def unembedding(self) -> nn.Linear:
        return self.model.lm_head


def sites_for(model: PreTrainedModel) -> Sites:
    model_type = model.config.model_type
    if model_type not in LLAMA_LAYOUT:
        raise ValueError(
            f"architecture {model_type!r} is not supported yet; supported: {', '.join(sorted(LLAMA_LAYOUT))}"
        )
    return Sites(model)
