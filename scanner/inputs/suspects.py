"""Which suspects a scan takes: paths as given, directories of models (a fleet), and files that list them.

Torch-free, so a mistyped path or an empty directory is refused before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scanner.errors import InputError
from scanner.inputs.locate import INDEX_NAME, detect_suspect_kind


def is_model(path: Path) -> bool:
    """Whether ``path`` is one checkpoint bdscan can scan (a weights file, a model or adapter directory)."""
    try:
        detect_suspect_kind(path)
    except InputError:
        return False
    return True


def read_listing(path: Path) -> list[Path]:
    """Suspects listed in a text file, one path a line (``#`` starts a comment); relative to the file's directory."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--suspects-from {path}: cannot be read ({error})") from None
    listed = [line.split("#", 1)[0].strip() for line in lines]
    paths = [(path.parent / entry).expanduser() if not Path(entry).expanduser().is_absolute() else Path(entry).expanduser()
             for entry in listed if entry]
    if not paths:
        raise InputError(f"--suspects-from {path}: lists no suspect")
    return paths


def is_fleet_directory(path: Path) -> bool:
    """A directory of checkpoints: no config, adapter config or shard index of its own, and at least one model
    directory inside (loose ``.safetensors`` files beside them are suspects too, not shards of one model)."""
    if not path.is_dir() or any((path / name).is_file() for name in ("config.json", "adapter_config.json", INDEX_NAME)):
        return False
    return any(child.is_dir() and is_model(child) for child in path.iterdir())


def expand_suspects(given: Sequence[Path]) -> list[Path]:
    """Each given path that is a checkpoint, and for a directory of checkpoints every one directly inside it
    (sorted by name); ``InputError`` naming the path that is neither."""
    suspects: list[Path] = []
    for path in (p.expanduser() for p in given):
        if not path.exists():
            raise InputError(f"suspect {path}: no such file or directory")
        if is_fleet_directory(path):
            suspects += sorted(child for child in path.iterdir() if is_model(child))
            continue
        detect_suspect_kind(path)  # raises, saying what the path lacks as a checkpoint
        suspects.append(path)
    unique = list(dict.fromkeys(suspects))
    if not unique:
        raise InputError("no suspect to scan")
    return unique
