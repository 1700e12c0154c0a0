"""The model families bdscan can measure, checked from a checkpoint's ``config.json`` before any weight is read.

Torch-free: the loader refuses an unknown family here; ``scanner.model.sites`` maps each of these families'
modules to the sites measurements read.
"""

from __future__ import annotations

from scanner.errors import UnsupportedArchitectureError

# Families whose decoder layers follow the Llama layout (self_attn.{q,k,v,o}_proj, mlp,
# input_layernorm and post_attention_layernorm as RMSNorm with a plain `weight`) under
# model.layers. Gemma (norm scale 1 + weight) and OLMo (non-parametric LayerNorm) do not,
# and are not claimed.
SUPPORTED = ("llama", "mistral", "qwen2")


def check_supported(model_type: object, where: str) -> None:
    """Refuse a model family bdscan cannot measure, naming it and the families it can."""
    if model_type not in SUPPORTED:
        raise UnsupportedArchitectureError(
            f"{where}: architecture {model_type!r} is not supported; bdscan measures {', '.join(SUPPORTED)} models"
        )
