"""Where a model's weights go and in what form: one device, at a dtype, or quantised by bitsandbytes.

Quantised scanning (``--load-in-4bit``, ``--load-in-8bit``) loads both models as bitsandbytes would deploy them:
INT4 can suppress a backdoor and INT8 activate one, so a model that ships quantised is scanned quantised, and the
findings record it. bitsandbytes quantises on CUDA only; elsewhere the scan refuses before reading a weight.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from scanner.errors import ResourceError

QUANTISED_BYTES = {"4bit": 0.5, "8bit": 1.0}
"""Bytes per weight of a quantised linear layer (bitsandbytes' scales add about 1%)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def check_quantisation(quantisation: str, device: torch.device) -> None:
    """Refuse quantised loading where bitsandbytes cannot do it, saying what to run instead."""
    if quantisation == "none":
        return
    flag = f"--load-in-{quantisation}"
    if device.type != "cuda":
        raise ResourceError(
            f"{flag} needs a CUDA GPU: bitsandbytes quantises on CUDA only, and this scan runs on {device.type}. "
            "Scan with --device cuda on a GPU machine, or here without quantisation: --dtype bfloat16 halves "
            "float32's memory")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ResourceError(f"{flag} needs bitsandbytes, which is not installed: pip install 'bdscan[cuda]'")


def load_arguments(dtype: torch.dtype, device: torch.device, quantisation: str) -> dict:
    """``from_pretrained`` keyword arguments beyond the eager attention and dtype every load uses: a quantised load
    places the whole model on ``device`` as bitsandbytes quantises it (without a map it would quantise on the CPU)."""
    if quantisation == "none":
        return {}
    from transformers import BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
              if quantisation == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
    return {"quantization_config": config, "device_map": {"": device.index if device.index is not None else 0}}


def weight_bytes(shapes: dict[str, list[int]], dtype_bytes: int, quantisation: str) -> float:
    """Bytes of one model's weights as loaded: ``shapes`` maps tensor names to shapes (a safetensors header).
    Quantisation shrinks the decoder layers' linear weights only; embeddings, norms and the output head keep
    ``dtype``."""
    total = 0.0
    for name, shape in shapes.items():
        count = math.prod(shape)
        quantised = quantisation != "none" and ".layers." in f".{name}" and name.endswith("proj.weight")
        total += count * (QUANTISED_BYTES[quantisation] if quantised else dtype_bytes)
    return total
