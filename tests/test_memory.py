"""Freed heap pages handed back to the operating system between a scan's stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scanner.model.memory import release_freed_memory

STATM = Path("/proc/self/statm")


def _resident_mb() -> float:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not STATM.is_file(), reason="reads the resident set from Linux's /proc")
def test_freed_tensors_in_the_middle_of_the_heap_leave_the_resident_set_once_released():
    # A 16 MB block is mapped on its own and, once freed, raises glibc's threshold for that: the 1 MB tensors after
    # it come from the heap, and the one kept last stops the heap's top from shrinking by itself.
    big = torch.ones(4 * 2**20)
    del big
    # Free pages an earlier test left in the heap would take the tensors below without growing the resident set.
    if not release_freed_memory():
        pytest.skip("this C library has no malloc_trim")
    before = _resident_mb()
    tensors = [torch.ones(2**18) for _ in range(100)]
    last = torch.ones(2**18)
    del tensors
    held = _resident_mb() - before
    release_freed_memory()
    released = _resident_mb() - before
    assert held > 80, f"the freed tensors did not stay resident ({held:.0f} MB): the setting this test needs is gone"
    assert released < held - 80, (held, released)
    assert float(last.sum()) == 2**18, "a tensor still referenced is untouched"
