"""instseg_ros.allocator: the glibc malloc tuning the nodes apply before rclpy starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = "from instseg_ros.allocator import keep_large_buffers; print(keep_large_buffers())"


@pytest.mark.parametrize(("env", "expected"), [({}, "True"), ({"INSTSEG_MALLOC_DEFAULT": "1"}, "False")])
def test_keep_large_buffers_applies_unless_disabled(env: dict, expected: str) -> None:
    """Applied on glibc (this machine and CI); INSTSEG_MALLOC_DEFAULT keeps the defaults (the bench's baseline).
    A fresh process each time: mallopt settings last for the whole process."""
    import os

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "INSTSEG_MALLOC_DEFAULT"} | env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
