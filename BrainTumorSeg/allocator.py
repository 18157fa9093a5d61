"""Keep freed memory in the process for reuse (glibc), so large arrays do not fault in fresh pages every time.

glibc's malloc serves every block above 32 MB (its largest mmap threshold) with a fresh ``mmap`` and gives it back on
``free``. A segmentation allocates and frees hundreds of MB in such blocks (the four volumes, each network's
probabilities, PyTorch's activations), and the kernel zero-fills every page of each new mapping on first touch.
Serving them from the heap and never trimming it lets the next array reuse those pages. On the sample case with the
default model (benchmarks/benchmark_segment.py, Intel Xeon, 2 threads) the networks' forward went from 1.45 to 1.20 s,
the whole CLI run from 3.11 to 2.88 s, the same run in a warm process from 2.11 to 1.58 s and a batch case from 1.76
to 1.44 s, for 0.16 GB more peak RSS (1.07 GB). PyTorch's CPU performance tuning guide recommends a caching allocator
(jemalloc, tcmalloc) for this reason; ``mallopt`` gets the effect from the allocator already loaded.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # malloc.h: free memory at the top of the heap above this is returned to the system
M_MMAP_MAX = -4  # malloc.h: the most blocks served by mmap at once; 0 serves every block from the heap
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed memory until exit; False where that is not
    possible (not Linux, or a C library without ``mallopt``, such as musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
