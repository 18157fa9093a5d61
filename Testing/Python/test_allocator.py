"""The CLI's allocator setting: after ``keep_freed_memory`` (which the command calls first) a large array comes from
the heap, not a fresh mapping."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

# Run in a new interpreter: the setting lasts for the whole process, and this one is pytest's.
PROBE = r"""
import ctypes, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def report(argv=None, ends_process=False):
    array = np.ones(64 * 2**20 // 8)  # 64 MB, above glibc's largest mmap threshold (32 MB)
    info = libc.mallinfo2()
    print(info.hblkhd // 2**20, info.arena // 2**20)  # MB in mmapped blocks, MB in the heap
    return 0

if sys.argv[1] == "keep":
    from BrainTumorSeg.allocator import keep_freed_memory
    assert keep_freed_memory()
if sys.argv[1] == "command":  # what the brain-tumor-seg command does before its main
    from BrainTumorSeg import cli
    cli.main = report
    sys.argv = ["brain-tumor-seg", "models"]
    cli.console_main()
report()
"""


def has_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc 2.33 or later (mallinfo2)")
@pytest.mark.parametrize("setting", ["default", "keep", "command"])
def test_large_arrays_come_from_the_heap_once_freed_memory_is_kept(setting: str) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    mapped_mb, heap_mb = (int(value) for value in result.stdout.split())
    if setting in ("keep", "command"):
        assert mapped_mb < 64 <= heap_mb
    else:
        assert mapped_mb >= 64 > heap_mb
