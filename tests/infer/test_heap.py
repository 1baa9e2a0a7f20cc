"""slimsam.infer.heap: the glibc settings asked for, and a clear no-op where there is no mallopt."""
from __future__ import annotations

import pytest

from slimsam.infer.heap import (
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    keep_freed_memory_in_heap,
    release_free_memory,
)


class RecordingLibc:
    def __init__(self, accepts: bool = True):
        self.calls, self.accepts = [], accepts

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value.value))
        return int(self.accepts)


def test_sets_the_trim_and_mmap_thresholds():
    libc = RecordingLibc()
    assert keep_freed_memory_in_heap(16, libc=libc) is True
    assert libc.calls == [(M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_MMAP_THRESHOLD, 16 << 20)]


def test_reports_a_refusal_or_a_libc_without_mallopt():
    assert keep_freed_memory_in_heap(libc=RecordingLibc(accepts=False)) is False
    assert keep_freed_memory_in_heap(libc=object()) is False


def test_rejects_a_nonpositive_limit():
    with pytest.raises(ValueError, match="at least 1"):
        keep_freed_memory_in_heap(0, libc=RecordingLibc())


class TrimmingLibc:
    def __init__(self):
        self.calls = []

    def malloc_trim(self, pad):
        self.calls.append(pad.value)
        return 1


def test_release_free_memory_trims_every_arena():
    libc = TrimmingLibc()
    assert release_free_memory(libc=libc) is True and libc.calls == [0]
    assert release_free_memory(libc=object()) is False  # no malloc_trim (macOS, musl): a no-op


def test_large_blocks_turn_mmap_off():
    libc = RecordingLibc()
    assert keep_freed_memory_in_heap(libc=libc, large_blocks=True) is True
    assert libc.calls[-1] == (M_MMAP_MAX, 0)
