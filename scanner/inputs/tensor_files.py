"""A safetensors checkpoint's tensors read with plain file reads, one at a time, straight into their destination.

The suspect is copied into a copy of the reference tensor by tensor. Read through safetensors' memory map, every
page of its file counts as resident while the file is open: at the Qwen2.5-0.5B shape, loading the suspect beside
a reference already in use peaked at 6,243 MB, 1.66 times the two models' float32 weights (3,769 MB), with the
reference's file paged in once more for the suspect's copy. Read here, a tensor of the file's dtype goes from the
file into the parameter that holds it and nothing else is held; another dtype goes through a buffer of at most
``CHUNK_BYTES``. safetensors has no reader without the map, and its format is a JSON header and little-endian
data (checked against its size by ``check_safetensors`` before anything is read).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from scanner.errors import InputError
from scanner.inputs.checks import check_safetensors

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
    "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}
"""safetensors' dtype names (those ``check_safetensors`` accepts) as torch's."""
CHUNK_BYTES = 64 * 1024 * 1024
"""The most a conversion buffer holds: under a tenth of Qwen2.5-0.5B's float32 embedding table."""


class SafetensorsFiles(Mapping[str, torch.Tensor]):
    """The tensors of one checkpoint's safetensors files, by name, each read when asked for (``[name]``) or copied
    into a tensor of its shape (``copy_into``)."""

    def __init__(self, files: list[Path]) -> None:
        if sys.byteorder != "little":
            raise InputError("reading safetensors (little-endian) on a big-endian machine is not supported")
        self._entries: dict[str, tuple[Path, int, torch.dtype, int]] = {}
        """name -> (file, offset of its first byte, dtype, bytes)."""
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            header = check_safetensors(file)
            with file.open("rb") as handle:
                data_start = 8 + int.from_bytes(handle.read(8), "little")
            for name, entry in header.items():
                begin, end = entry["data_offsets"]
                self._entries[name] = (file, data_start + begin, TORCH_DTYPES[entry["dtype"]], end - begin)
                self.shapes[name] = tuple(entry["shape"])

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype = self._entries[key][2]
        out = torch.empty(self.shapes[key], dtype=dtype)
        self.copy_into(key, out)
        return out

    def copy_into(self, key: str, destination: torch.Tensor) -> None:
        """``key``'s values into ``destination`` (its shape, any dtype or device): read into its memory where it is a
        contiguous CPU tensor of the file's dtype, else a chunk of at most ``CHUNK_BYTES`` at a time, converted (a
        non-contiguous destination through a whole tensor of the file's)."""
        file, offset, dtype, _ = self._entries[key]
        if tuple(destination.shape) != self.shapes[key]:
            raise InputError(f"suspect {file}: {key} has shape {list(self.shapes[key])}, expected {list(destination.shape)}")
        if not destination.is_contiguous():
            destination.copy_(self[key])
            return
        flat = destination.view(-1)
        with file.open("rb", buffering=0) as handle:
            handle.seek(offset)
            if destination.device.type == "cpu" and destination.dtype == dtype:
                self._read(handle, flat.view(torch.uint8), file, key)
                return
            per_chunk = max(1, CHUNK_BYTES // dtype.itemsize)
            for start in range(0, flat.numel(), per_chunk):
                buffer = torch.empty(min(per_chunk, flat.numel() - start), dtype=dtype)
                self._read(handle, buffer.view(torch.uint8), file, key)
                flat[start:start + len(buffer)].copy_(buffer)

    @staticmethod
    def _read(handle, into: torch.Tensor, file: Path, key: str) -> None:
        """Fill ``into`` (``[bytes]`` of uint8) from ``handle``'s position."""
        view, done = memoryview(into.numpy()), 0
        while done < len(view):
            got = handle.readinto(view[done:])
            if not got:
                raise InputError(f"suspect {file}: {key} ends {len(view) - done} bytes early; the file is truncated: copy or save it again")
            done += got

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:  # Mapping's would read the tensor
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
