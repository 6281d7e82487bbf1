"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

A training step allocates and frees the same large activation buffers again and again.
glibc's malloc returns freed memory at the top of its heap to the kernel (and serves
blocks above a size threshold with fresh ``mmap``s), so steps keep touching new pages and
pay a page fault per 4 KiB on first write: on the 2-core VM the CLI is measured on, the
mixers with the largest activations (Mamba-2, GSA, RWKV-6) ran 15–30% more tokens/s with
the two settings below (``zoology bench mixers``, side by side with attention). The cost:
the process keeps its peak heap until it exits. The ``zoology`` command calls this at
start; a user's own ``MALLOC_*`` environment settings win.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory above this at the heap's top goes back to the kernel


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; whether it was done (not on other C libraries or
    systems, nor when the environment sets ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``)."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") and k.endswith("THRESHOLD_")
                                                   for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)  # this process's symbols, the C library's among them
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl has no such settings)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
