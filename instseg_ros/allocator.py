"""glibc malloc tuning for processes that pass large messages (camera frames, masks) through DDS.

glibc serves an allocation above its mmap threshold (128 kB at start, raised dynamically up to 32 MB)
with a fresh mmap and hands it back to the kernel on free. A 6 MB camera frame goes through several such
buffers per message: rclpy's Python <-> C conversion and Fast DDS's CDR (de)serialisation. Each fresh
mapping page-faults (~1,500 faults for 6 MB) and is zeroed by the kernel when first touched. Keeping freed
memory in the heap lets the next message reuse pages that are already mapped.

Measured on the 2-core CI machine: a 2048x1024 rgb8 request to extreme_point_node took 12 ms to arrive
with the defaults and 7-9 ms with this tuning (bench/bench_annotate.py runs both). The cost is memory:
up to `trim_threshold` bytes of freed heap stay with the process instead of going back to the kernel.

Set INSTSEG_MALLOC_DEFAULT=1 to leave glibc's defaults (for A/B measurements).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
DISABLE_VARIABLE = "INSTSEG_MALLOC_DEFAULT"


def keep_large_buffers(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20,
                       top_pad: int = 16 << 20) -> bool:
    """Serve allocations below `mmap_threshold` bytes from the heap, keep up to `trim_threshold` bytes
    of freed heap, and grow it `top_pad` bytes at a time. Call it early in a node's main(), before
    rclpy.init(). Returns True if applied; False on a C library without mallopt (not glibc) or when
    INSTSEG_MALLOC_DEFAULT is set."""
    if os.environ.get(DISABLE_VARIABLE):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, top_pad)))


__all__ = ["keep_large_buffers"]
