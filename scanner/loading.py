"""Find and load the reference and the suspect, refusing what does not match.

The suspect is always loaded into a fresh copy of the reference's architecture
(never through its own config), so a suspect can only differ in weights, and a
mismatch is caught here, listed, and refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from scanner.checks import check_safetensors, is_pickle_checkpoint, refuse_custom_code
from scanner.findings import Architecture, InputInfo
from scanner.loading_errors import ScanInputError

PICKLE_ADVICE = (
    "loading a pickle can run code its author chose. Convert it to safetensors first "
    "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')), "
    "or pass --allow-pickle to load it with torch.load(weights_only=True)"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_LISTED_MISMATCHES = 5


@dataclass(frozen=True)
class LoadedPair:
    reference: PreTrainedModel
    suspect: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    reference_info: InputInfo
    suspect_info: InputInfo
    merge_route: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScanInputError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def resolve_reference(reference: str, allow_download: bool = False) -> tuple[Path, str]:
    """A local model directory for ``reference``: a path, or a hub id found in the local cache."""
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ScanInputError(f"reference {reference}: not a Hugging Face model directory (no config.json)")
        return path, "hf-directory"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        cached = snapshot_download(reference, local_files_only=not allow_download)
    except LocalEntryNotFoundError:
        raise ScanInputError(
            f"reference {reference!r} is neither a local path nor in the local Hugging Face cache; "
            "pass a model directory, or --allow-download to fetch it"
        ) from None
    except HFValidationError:
        raise ScanInputError(f"reference {reference!r}: no such path, and not a valid hub id") from None
    return Path(cached), "hf-cache"


def detect_suspect_kind(path: Path) -> str:
    """What kind of checkpoint ``path`` is, by its shape on disk."""
    if not path.exists():
        raise ScanInputError(f"suspect {path}: no such file or directory")
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return "sharded"
        if path.suffix == ".safetensors":
            return "safetensors-file"
        if is_pickle_checkpoint(path):
            return "pickle"
        raise ScanInputError(f"suspect {path}: expected a .safetensors file, a sharded index or a model directory")
    if (path / "adapter_config.json").is_file():
        return "peft-adapter"
    if (path / "model.safetensors.index.json").is_file():
        return "sharded"
    if any(path.glob("*.safetensors")):
        return "hf-directory"
    if any(is_pickle_checkpoint(file) for file in path.iterdir() if file.is_file() and file.suffix != ".json"):
        return "pickle-directory"
    raise ScanInputError(f"suspect {path}: a directory with no .safetensors weights and no adapter_config.json")


def _weight_files(path: Path, kind: str) -> list[Path]:
    if kind in ("safetensors-file", "pickle"):
        return [path]
    if kind == "pickle-directory":
        return sorted(file for file in path.iterdir() if file.is_file() and is_pickle_checkpoint(file))
    if kind == "sharded":
        index_path = path if path.is_file() else path / "model.safetensors.index.json"
        index = json.loads(index_path.read_text(encoding="utf-8"))
        return sorted({index_path.parent / name for name in index["weight_map"].values()})
    if kind == "peft-adapter":
        return sorted(path.glob("adapter_model*.safetensors")) or sorted(path.glob("adapter_model*"))
    return sorted(path.glob("*.safetensors"))


def input_info(path: Path, kind: str) -> InputInfo:
    """sha256 over the weight files in name order, and their total size."""
    digest = hashlib.sha256()
    size = 0
    for file in _weight_files(path, kind):
        size += file.stat().st_size
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return InputInfo(path=str(path), kind=kind, sha256=digest.hexdigest(), size_bytes=size)


def _load_model(directory: Path, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, attn_implementation="eager", trust_remote_code=False
    )
    if getattr(model.config, "head_dim", None) is None:
        # transformers 5 may leave head_dim unset; pyvene's head sites need it.
        model.config.head_dim = model.config.hidden_size // model.config.num_attention_heads
    return model.to(device).eval().requires_grad_(False)


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], optional: set[str]) -> None:
    """Refuse ``found`` unless its keys and shapes are ``expected``'s (``optional`` keys may be absent)."""
    problems = []
    for key in sorted(set(expected) - set(found) - optional):
        problems.append(f"missing {key}")
    for key in sorted(set(found) - set(expected)):
        problems.append(f"unexpected {key}")
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key].shape) != tuple(expected[key].shape):
            problems.append(f"{key}: shape {tuple(found[key].shape)} vs reference {tuple(expected[key].shape)}")
    if problems:
        shown = "; ".join(problems[:MAX_LISTED_MISMATCHES])
        more = f" (and {len(problems) - MAX_LISTED_MISMATCHES} more)" if len(problems) > MAX_LISTED_MISMATCHES else ""
        raise ScanInputError(f"suspect does not match the reference's architecture: {shown}{more}")


def _tied_keys(model: PreTrainedModel) -> set[str]:
    if getattr(model.config, "tie_word_embeddings", False):
        return {"lm_head.weight"}
    return set()


def _read_state(suspect_path: Path, kind: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The suspect's tensors, every file checked before a loader touches it."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(suspect_path, kind):
        if not file.is_file():
            raise ScanInputError(f"suspect {suspect_path}: weight file {file.name} listed in the index is missing")
        if kind.startswith("pickle"):
            if not allow_pickle:
                raise ScanInputError(f"suspect {file} is a pickle-based checkpoint: {PICKLE_ADVICE}")
            try:
                loaded = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - whatever the unpickler refused, the file is refused
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ScanInputError(f"suspect {file}: torch.load(weights_only=True) refused it: {first}") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise ScanInputError(f"suspect {file}: not a state dict of tensors")
            state.update(loaded)
        else:
            check_safetensors(file)
            state.update(load_file(file))
    return state


# Reference and suspect resident together, plus the suspect's tensors read from disk
# before they are copied in; activations of a probe batch come on top.
MODEL_COPIES = 3
ACTIVATION_HEADROOM = 512 * 1024 * 1024


def available_bytes(device: torch.device) -> int:
    """Memory free for the scan on ``device``: CUDA's free memory, else the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(parameters: int, dtype: str, device: torch.device) -> None:
    """Refuse before loading when both models cannot fit; the message says what to try instead."""
    needed = parameters * DTYPES[dtype].itemsize * MODEL_COPIES + ACTIVATION_HEADROOM
    free = available_bytes(device)
    if needed > free:
        gib = 1024 ** 3
        advice = "try --dtype bfloat16" if dtype == "float32" else "try a machine or device with more memory"
        raise ScanInputError(
            f"the scan needs about {needed / gib:.1f} GiB on {device.type} ({parameters:,} parameters at {dtype}, "
            f"two models loaded) but {free / gib:.1f} GiB is free; {advice}"
            + ("" if device.type == "cuda" else ", or --device cuda")
        )


def load_pair(
    suspect: Path | str, reference: str, *, dtype: str = "float32", device: str = "cpu", allow_download: bool = False,
    allow_pickle: bool = False,
) -> LoadedPair:
    """Load both models (eager attention, ``dtype``, on ``device``) and the reference's tokenizer.

    Nothing here runs code from the checkpoints: pickles are refused unless
    ``allow_pickle`` (then only ``torch.load(weights_only=True)``), and
    configurations that ask for custom code are refused.
    """
    torch_dtype = DTYPES[dtype]
    target = resolve_device(device)
    reference_dir, reference_kind = resolve_reference(reference, allow_download)
    refuse_custom_code(reference_dir, "reference")
    reference_weights = sorted(reference_dir.glob("*.safetensors"))
    if not reference_weights:
        raise ScanInputError(
            f"reference {reference_dir} has no .safetensors weights; bdscan never unpickles a reference: "
            "convert it with safetensors.torch.save_file"
        )
    parameters = 0
    for file in reference_weights:
        parameters += sum(math.prod(entry["shape"]) for entry in check_safetensors(file).values())
    check_memory(parameters, dtype, target)
    suspect_path = Path(suspect).expanduser()
    kind = detect_suspect_kind(suspect_path)
    if suspect_path.is_dir():
        refuse_custom_code(suspect_path, "suspect")
    if kind == "peft-adapter":
        adapter_weights = sorted(suspect_path.glob("adapter_model*.safetensors"))
        if not adapter_weights and not allow_pickle:
            raise ScanInputError(f"suspect adapter {suspect_path} has no adapter_model.safetensors: {PICKLE_ADVICE}")
        for file in adapter_weights:
            check_safetensors(file)
    state = None if kind == "peft-adapter" else _read_state(suspect_path, kind, allow_pickle)
    reference_model = _load_model(reference_dir, torch_dtype, target)
    suspect_model = _load_model(reference_dir, torch_dtype, target)
    merge_route = "full-weights"
    if kind == "peft-adapter":
        suspect_model = _merge_adapter(suspect_model, suspect_path)
        merge_route = f"peft-merge:{dtype}"
    else:
        check_state_dict(reference_model.state_dict(), state, _tied_keys(reference_model))
        suspect_model.load_state_dict({k: v.to(torch_dtype) for k, v in state.items()}, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(reference_dir, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return LoadedPair(
        reference=reference_model,
        suspect=suspect_model,
        tokenizer=tokenizer,
        reference_info=input_info(reference_dir, reference_kind if reference_kind == "hf-cache" else "hf-directory"),
        suspect_info=input_info(suspect_path, kind),
        merge_route=merge_route,
    )


def _merge_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ScanInputError(f"adapter {adapter_dir} does not fit the reference: {first_line}") from None
    return merged.eval().requires_grad_(False)


def architecture(model: PreTrainedModel) -> Architecture:
    config = model.config
    return Architecture(
        model_type=config.model_type,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
        head_dim=config.head_dim,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        parameters=sum(p.numel() for p in model.parameters()),
    )
