"""The CPU kernels the zoo is trained and tested with, pinned so that one seed gives one zoo on every x86 machine.

A floating-point sum depends on the vector width of the kernel that adds it up: ATen picks AVX-512 kernels where the
CPU has them and AVX2 ones elsewhere, and MKL picks its own code path per CPU. Thousands of training steps turn those
last-bit differences into other models: zoo v16 built on an AVX-512 machine met every bar and passed the suite, and
built on an AVX2-only one it missed a bar and failed 13 tests (stop 52). With ATen held to its AVX2 kernels and MKL
to its AVX2 path (conditional numerical reproducibility), an AVX-512 machine built that AVX2-only machine's zoo to the
last digit (checked on an AMD EPYC; an Intel CPU under the same pin is expected to agree, as MKL's reproducibility
mode promises, and has not been compared).

Torch-free: the variables only take effect when set before torch first runs a kernel, so this is called where a
process starts (the ``bdscan zoo`` commands, the test session), never after.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PINNED_KERNELS = (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"))
"""Environment variables and values: ATen's vectorised kernels, MKL's BLAS and oneDNN's primitives, each held to
AVX2. A variable the user set is kept (``MKL_CBWR=COMPATIBLE`` for a CPU without AVX2, say)."""


def pin_kernels(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of ``PINNED_KERNELS`` that is not set already."""
    for name, value in PINNED_KERNELS:
        environ.setdefault(name, value)


def kernels_in_use() -> str:
    """What this process computes with, for the zoo's manifest: ATen's CPU capability and MKL's code path."""
    import torch

    return f"ATen {torch.backends.cpu.get_cpu_capability()}, MKL_CBWR {os.environ.get('MKL_CBWR', 'unset')}"
