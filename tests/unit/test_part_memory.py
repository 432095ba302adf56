"""Part bodies keep their own mappings: after one 1 MiB block is freed, the next is still
mapped on its own (given back when freed), not carved from the heap, where glibc would
keep it resident. Run in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from tgdl.downloader.app import keep_parts_off_the_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert keep_parts_off_the_heap()
part = bytearray(1 << 20)
del part  # the first part freed: glibc's sliding threshold moves above its size
before = libc.mallinfo2().hblks
part = bytearray(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def mapped_after_a_free(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_part_after_a_freed_one_is_still_its_own_mapping():
    assert mapped_after_a_free("fixed") == 1
    assert mapped_after_a_free("default") == 0  # what the setting prevents
