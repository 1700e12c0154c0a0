"""Checks on untrusted checkpoint files made before any library opens them.

A safetensors file is an 8-byte little-endian header length, a JSON header,
then raw tensor bytes. Checking the header ourselves turns a truncated file,
offsets past the end, an unknown dtype or an absurd shape into one clear
refusal instead of a crash deep inside a loader. Pickle-based formats and
configurations that ask for custom code are refused outright: loading them
can run code the checkpoint's author chose.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

from scanner.errors import InputError

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


def check_safetensors(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file declares, after checking its header against its size."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file, not a safetensors checkpoint")
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path}: truncated: {size} bytes, shorter than a safetensors header length")
        header_length = int.from_bytes(prefix, "little")
        if header_length > min(MAX_HEADER_BYTES, size - 8):
            raise InputError(f"{path}: truncated or corrupt: header claims {header_length} bytes, file has {size - 8} after it")
        raw = handle.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: corrupt safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise InputError(f"{path}: tensor {name!r}: header entry lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise InputError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
            raise InputError(f"{path}: tensor {name!r}: absurd shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise InputError(f"{path}: tensor {name!r}: bad data offsets {offsets!r}")
        if offsets[1] > data_size:
            raise InputError(f"{path}: tensor {name!r}: data offsets {offsets} point past the end of the file ({data_size} data bytes); truncated?")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise InputError(f"{path}: tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold shape {shape} of {dtype}")
        tensors[name] = entry
    # Each tensor can be well-formed on its own while the set is not: the data
    # region must be tiled exactly, or the loader fails (or reads aliased bytes).
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        start, end = entry["data_offsets"]
        if start < position:
            raise InputError(f"{path}: tensor {name!r}: data offsets {[start, end]} overlap another tensor's bytes")
        if start > position:
            raise InputError(f"{path}: tensor {name!r}: data offsets {[start, end]} leave a gap of {start - position} bytes before it")
        position = end
    if position != data_size:
        raise InputError(f"{path}: {data_size - position} bytes after the last tensor; corrupt safetensors file")
    return tensors


def read_json_object(file: Path, role: str) -> dict:
    """A JSON file that must hold an object (a config); ``InputError`` naming ``role`` and the file otherwise."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{role} {file}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputError(f"{role} {file}: expected a JSON object, found {type(value).__name__}")
    return value


def is_pickle_checkpoint(path: Path) -> bool:
    """A weight file in a pickle-based format: by suffix, or a zip archive holding a pickle."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def refuse_custom_code(directory: Path, role: str) -> None:
    """Refuse a model directory whose config or tokenizer config asks for code of its own."""
    configs = {}
    for name in ("config.json", "tokenizer_config.json", "adapter_config.json"):
        file = directory / name
        if not file.is_file():
            continue
        configs[name] = config = read_json_object(file, role)
        if "auto_map" in config:
            raise InputError(
                f"{role} {file}: field 'auto_map' asks for custom code, which bdscan never runs "
                "(trust_remote_code stays off); scan a checkpoint of a built-in architecture"
            )
    if "tokenizer_config.json" in configs:
        tokenizer_config = directory / "tokenizer_config.json"
        tokenizer_class = configs["tokenizer_config.json"].get("tokenizer_class")
        if tokenizer_class is not None and not isinstance(tokenizer_class, str):
            raise InputError(f"{role} {tokenizer_config}: field 'tokenizer_class' is not a string")
        if tokenizer_class and not _builtin_tokenizer(tokenizer_class):
            raise InputError(
                f"{role} {tokenizer_config}: field 'tokenizer_class' names {tokenizer_class!r}, "
                "which is not a tokenizer transformers ships; bdscan never runs custom tokenizer code"
            )


def _builtin_tokenizer(name: str) -> bool:
    import transformers

    base = name[:-4] if name.endswith("Fast") else name
    return any(hasattr(transformers, candidate) for candidate in (name, base, base + "Fast")) or name in (
        "TokenizersBackend", "PreTrainedTokenizerFast")
