"""Keep freed memory in the process heap, for CPU serving: one call at program start.

A SAM click on CPU allocates and frees tensors of a few MB each (the 64x64x256 image tokens are 4 MB).
By default glibc hands blocks that large back to the kernel when they are freed, and the next
allocation page-faults every 4 KB page in again: measured on a 2-core CPU, that fault-in cost about
a fifth of a fast-decoder click (24 -> 19 ms median, SlimSAM-77). Two glibc settings stop it:
blocks under `max_block_mb` come from the heap, and the heap is never trimmed. The price is that
the process keeps its peak heap size; blocks above the limit are still returned at once.
After a rare large allocation (decoding a huge PNG, which PIL allocates in 16 MB blocks; a batch of
segment-everything prompts with `large_blocks`), `release_free_memory()` hands the freed heap back to the
kernel.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4


def _libc(libc: ctypes.CDLL | None) -> ctypes.CDLL | None:
    if libc is not None:
        return libc
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def keep_freed_memory_in_heap(max_block_mb: int = 32, libc: ctypes.CDLL | None = None,
                              large_blocks: bool = False) -> bool:
    """Tell glibc's malloc to serve blocks under `max_block_mb` from the heap and never trim it.

    Process-wide, so call it from a program's entry point (the app and `slimsam bench` do), not from a
    library. 32 MB covers every tensor of a click (the largest, 3 masks of 1024x1024, is 12 MB) and
    glibc accepts it on every 64-bit build (it accepts no more). large_blocks: serve every block from the
    heap, however large (no mmap at all): segment-everything's batches of prompts make tensors of ~270 MB,
    and faulting those in afresh on every batch cost a third of its time on 2 cores; pair it with
    `release_free_memory()` after such work. Returns True if glibc accepted the settings; False where
    there is no mallopt (macOS, musl). libc: for tests; default the process's C library.
    """
    if max_block_mb < 1:
        raise ValueError(f"max_block_mb must be at least 1, got {max_block_mb}")
    mallopt = getattr(_libc(libc), "mallopt", None)
    if mallopt is None:
        return False
    # Trim threshold first: setting either one turns off glibc's dynamic adjustment of both.
    accepted = bool(mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1))) and \
        bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(max_block_mb << 20)))
    return accepted and (not large_blocks or bool(mallopt(M_MMAP_MAX, ctypes.c_int(0))))


def release_free_memory(libc: ctypes.CDLL | None = None) -> bool:
    """Return the heap's free memory to the kernel now (glibc's malloc_trim(0), every arena); True if it did.

    For after a one-off large allocation, e.g. a decoded 13000 x 13000 PNG (500 MB in PIL's 16 MB blocks,
    which keep_freed_memory_in_heap would otherwise keep). False where there is no malloc_trim.
    """
    trim = getattr(_libc(libc), "malloc_trim", None)
    return bool(trim(ctypes.c_size_t(0))) if trim is not None else False
