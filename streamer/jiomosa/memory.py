"""Process memory: large buffers go back to the system once freed.

glibc serves an allocation of 128 KiB or more with an mmap of its own, given back when freed,
but raises that threshold (up to 32 MiB) each time such a block is freed, so that the next
ones come from the heap and stay there. The frame path allocates exactly such blocks over and
over: a re-encode decodes a frame (2.7 MB at 1280x720, 25 MB at 3840x2160) in a worker
thread, which has a malloc arena of its own. Measured under the fuzz run of issue #10: with
glibc's moving threshold the streamer kept +15 MB after a warm-up and +10 MB more after 20,000
requests and messages; with the threshold fixed, +3 MB and +4.6 MB (docs/security.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold; True if done. An explicit ``MALLOC_MMAP_THRESHOLD_`` in
    the environment (glibc reads it itself) wins; other C libraries are left alone."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
