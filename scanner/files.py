"""Writing bdscan's output files: atomically, and only to paths checked before the work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from scanner.errors import OutputError


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        # mkstemp makes the file private (0600); a report is meant to be shared.
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
        raise


def check_writable(path: Path | str, what: str) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written; ``what`` names the option.

    Probes by creating and removing a temporary file in the nearest existing
    directory: permission bits do not tell root that ``/proc`` or a read-only
    mount refuses new files.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a directory; give a file path")
    directory = path.parent
    while not directory.exists():
        directory = directory.parent
    if not directory.is_dir():
        raise OutputError(f"{what} {path}: {directory} is not a directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as error:
        raise OutputError(f"{what} {path}: cannot write in {directory} ({error.strerror or error}); choose another path") from None
    os.close(handle)
    os.unlink(probe)
