"""segc.memory: freed memory goes back to the system (glibc only; elsewhere the calls do nothing)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# 48 blocks of 4 MiB freed while a small allocation made after each stays alive, then the
# resident size: from glibc's heap the freed blocks stay resident (the small ones pin them);
# each in its own mapping they are gone. The 16 MiB block freed first slides glibc's own
# threshold above 4 MiB, as onnxruntime's first big buffers do.
PROBE = """
import sys
import numpy as np
if sys.argv[1] == "mapped":
    from segc.memory import map_big_blocks
    map_big_blocks()
big = np.ones(16 << 17); del big
blocks, pins = [], []
for _ in range(48):
    blocks.append(np.ones(4 << 17))
    pins.append(np.ones(64))
base = int(open("/proc/self/statm").read().split()[1])
del blocks
import os
print((base - int(open("/proc/self/statm").read().split()[1])) * os.sysconf("SC_PAGE_SIZE"))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_big_blocks_go_back_to_the_system_when_freed() -> None:
    """What ``map_big_blocks`` is for: without it the 192 MiB freed stays resident."""
    def returned_mib(mode: str) -> float:
        run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(run.stdout) / 2**20

    assert returned_mib("sliding") < 32
    assert returned_mib("mapped") > 180
