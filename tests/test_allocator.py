"""The zoology command keeps freed memory in the process: re-allocating a freed activation
buffer then costs no page faults (counted, not timed)."""

import subprocess
import sys

import pytest

from zoology.allocator import keep_freed_memory

PROGRAM = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from zoology.allocator import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm up
    torch.ones(4 << 20)
before = faults()
for _ in range(20):  # a 16 MiB buffer, written, freed, allocated again
    torch.ones(4 << 20)
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_without_page_faults():
    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                                  check=True).stdout)

    plain, tuned = faults("plain"), faults("tuned")
    assert plain >= 4096  # glibc gave a freed buffer back at least once: 4,096 faults to re-touch it (measured: 5 of 20)
    assert tuned < plain / 20


def test_user_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert keep_freed_memory() is False
