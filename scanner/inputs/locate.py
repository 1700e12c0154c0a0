"""Find the inputs on disk: the reference's directory, the suspect's kind, its weight files and their hashes.

Torch-free. Nothing here opens a weight file with a loader; a sharded index
is read as untrusted JSON and may only name files inside its own directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from scanner.errors import InputError
from scanner.findings import InputInfo
from scanner.inputs.checks import check_safetensors, is_pickle_checkpoint, read_json_object

INDEX_NAME = "model.safetensors.index.json"


def resolve_reference(reference: str, allow_download: bool = False) -> tuple[Path, str]:
    """A local model directory for ``reference``: a path, or a hub id found in the local cache."""
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(f"reference {reference}: not a Hugging Face model directory (no config.json)")
        return path, "hf-directory"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        cached = snapshot_download(reference, local_files_only=not allow_download)
    except LocalEntryNotFoundError:
        raise InputError(
            f"reference {reference!r} is neither a local path nor in the local Hugging Face cache; "
            "pass a model directory, or --allow-download to fetch it"
        ) from None
    except HFValidationError:
        raise InputError(f"reference {reference!r}: no such path, and not a valid hub id") from None
    return Path(cached), "hf-cache"


def refuse_offloaded(path: Path, kind: str) -> None:
    """Refuse a suspect of ``kind`` that ``--max-memory`` cannot offload, with what to do instead: checked before
    any model loads (the CLI) and again where the suspect loads (the library)."""
    if kind == "peft-adapter":
        raise InputError(f"suspect {path} is a PEFT adapter, and peft re-places a model with offloaded layers "
                         "as if nothing were offloaded (its adapter weights would load onto the meta device): scan it "
                         "without --max-memory, or scan the merged model (peft's merge_and_unload, then "
                         "save_pretrained) under --max-memory")
    if kind.startswith("pickle"):
        raise InputError(f"suspect {path} is a pickle-based checkpoint, which is read whole: --max-memory "
                         "offloads a suspect read a tensor at a time from safetensors. Convert it with "
                         "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')")


def detect_suspect_kind(path: Path) -> str:
    """What kind of checkpoint ``path`` is, by its shape on disk."""
    if not path.exists():
        raise InputError(f"suspect {path}: no such file or directory")
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return "sharded"
        if path.suffix == ".safetensors":
            return "safetensors-file"
        if is_pickle_checkpoint(path):
            return "pickle"
        raise InputError(f"suspect {path}: expected a .safetensors file, a sharded index or a model directory")
    if (path / "adapter_config.json").is_file():
        return "peft-adapter"
    if (path / INDEX_NAME).is_file():
        return "sharded"
    if any(path.glob("*.safetensors")):
        return "hf-directory"
    if any(is_pickle_checkpoint(file) for file in path.iterdir() if file.is_file() and file.suffix != ".json"):
        return "pickle-directory"
    raise InputError(f"suspect {path}: a directory with no .safetensors weights and no adapter_config.json")


def shard_files(index_path: Path) -> list[Path]:
    """The shards a sharded index names, refusing any that would lie outside the index's directory."""
    index = read_json_object(index_path, "suspect index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"suspect index {index_path}: 'weight_map' must map tensor names to shard file names")
    shards = set()
    for name in weight_map.values():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or "\\" in name or not relative.parts:
            raise InputError(
                f"suspect index {index_path}: shard {name!r} points outside the checkpoint's directory; refused"
            )
        shards.add(index_path.parent / relative)
    return sorted(shards)


def weight_files(path: Path, kind: str) -> list[Path]:
    if kind in ("safetensors-file", "pickle"):
        return [path]
    if kind == "pickle-directory":
        return sorted(file for file in path.iterdir() if file.is_file() and is_pickle_checkpoint(file))
    if kind == "sharded":
        return shard_files(path if path.is_file() else path / INDEX_NAME)
    if kind == "peft-adapter":
        return sorted(path.glob("adapter_model*.safetensors")) or sorted(path.glob("adapter_model*"))
    return sorted(path.glob("*.safetensors"))


def input_info(path: Path, kind: str) -> InputInfo:
    """sha256 over the weight files in name order, and their total size."""
    digest = hashlib.sha256()
    size = 0
    for file in weight_files(path, kind):
        size += file.stat().st_size
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return InputInfo(path=str(path), kind=kind, sha256=digest.hexdigest(), size_bytes=size)


def check_suspect_files(path: Path) -> str:
    """``path``'s kind, after the checks that need no model: every safetensors header it holds read against its
    file's size, and an adapter that holds tensors at all (an export that wrote none loads as the reference
    itself, and would be judged as a fine-tune that changed nothing). ``InputError`` in one line otherwise."""
    kind = detect_suspect_kind(path)
    files = [f for f in weight_files(path, kind) if f.suffix == ".safetensors" and f.is_file()]
    tensors = sum(len(check_safetensors(f)) for f in files)
    if kind == "peft-adapter" and files and tensors == 0:
        raise InputError(f"suspect adapter {path} holds no tensors ({', '.join(f.name for f in files)}): loaded, it "
                         "would be the reference itself; export the adapter again with its weights")
    return kind
