"""Keep freed memory in the process for reuse (glibc), so large arrays do not fault in fresh pages every time.

glibc's malloc serves a block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back on
``free``. Inference and training allocate and free many such blocks (each network's probabilities, PyTorch's
activations and gradients), and the kernel zero-fills every page of each new mapping on first touch. Serving them
from the heap and never trimming it lets the next array reuse those pages. This covers the main thread, where the
networks run; a thread's own arena still maps a block above 64 MB (the 143 MB four-channel case that the CLI's
`segment` command allocates in its reading thread, for one).

Measured on the DESIGN's Intel Xeon (2 threads): the default model's forward on the sample case (bf16) 1.45 -> 1.20 s,
the same run in a warm process 2.11 -> 1.58 s (benchmarks/benchmark_segment.py); fp32 training steps of segresnet
1.87 -> 1.28 s, twopathcnn 1.18 -> 0.88 s, unet2d 0.84 -> 0.79 s (benchmarks/benchmark_training_recipe.py, the table
in training/README.md). Peak RSS is 0.1-0.2 GB higher.
PyTorch's CPU performance tuning guide recommends a caching allocator (jemalloc, tcmalloc) for this reason;
``mallopt`` gets the effect from the allocator already loaded.
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
