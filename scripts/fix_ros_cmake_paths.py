"""Point the ROS wheels' exported CMake files at this interpreter.

The ros-* wheels were built in a manylinux container and their *.cmake files
hard-code that container's Python include dir and NumPy include dir; rosidl's
Python generator fails to compile against them. Rewriting the two strings is
idempotent and safe to re-run after every install.
"""

from __future__ import annotations

import pathlib
import re
import sys
import sysconfig

import numpy


def main(prefix: str) -> int:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    # Any manylinux interpreter path, e.g. /opt/python/cp311-cp311/...
    build_python = re.compile(r"/opt/python/cp3\d+-cp3\d+t?/include/python3\.\d+t?")
    build_numpy = re.compile(
        r"/opt/python/cp3\d+-cp3\d+t?/lib/python3\.\d+t?/site-packages/numpy/(?:_core|core)/include"
    )
    changed = 0
    for path in pathlib.Path(prefix, "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        fixed = build_numpy.sub(numpy_include, text)
        fixed = build_python.sub(python_include, fixed)
        if fixed != text:
            path.write_text(fixed, errors="surrogateescape")
            changed += 1
    print(f"fix_ros_cmake_paths: rewrote {changed} file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
