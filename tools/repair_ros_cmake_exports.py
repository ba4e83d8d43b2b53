"""Point the ROS wheels' cmake exports at this venv's Python and numpy headers (idempotent).

The ROS 2 wheels on PyPI were built in a manylinux container, and their
share/<pkg>/cmake/*Export.cmake files name that container's include directories
(/opt/python/cp311-cp311/include/python3.11, .../site-packages/numpy/_core/include). Building our own
interface package against them fails until those paths name this machine's directories.

Usage: python tools/repair_ros_cmake_exports.py PREFIX   (PREFIX = the venv)
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILD_PREFIX = re.compile(r"/opt/python/cp3\d+-cp3\d+")
PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
NUMPY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include")


def repair(prefix: Path) -> list[Path]:
    """Rewrite every cmake file under prefix/share/*/cmake that names the wheel build paths."""
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = []
    for path in sorted(prefix.glob("share/*/cmake/*.cmake")):
        text = path.read_text()
        if not BUILD_PREFIX.search(text):
            continue
        fixed = NUMPY_INCLUDE.sub(numpy_include, PYTHON_INCLUDE.sub(python_include, text))
        leftover = BUILD_PREFIX.search(fixed)
        if leftover:
            sys.exit(f"{path}: unknown wheel build path {fixed[leftover.start():leftover.start() + 80]!r}")
        path.write_text(fixed)
        changed.append(path)
    return changed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = repair(Path(sys.argv[1]))
    print(f"repaired {len(files)} cmake export file(s)")
