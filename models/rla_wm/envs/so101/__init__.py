"""SO-101 arm in MuJoCo: the push-cube scene, the simulator, its kinematics and a scripted expert.

Rendering is headless. MuJoCo picks its OpenGL back end when ``mujoco`` is first imported, from
``MUJOCO_GL``. Python runs a package's ``__init__`` before any of its modules, so setting the
default here comes before this package's own ``import mujoco`` (not before an import elsewhere
that ran first): OSMesa (Debian's ``libosmesa6``), because EGL did not initialise on the
project's CPU machines (see /work/shared/ML_ENV.md). A value the user already set (``egl``,
``glfw``) is kept. PyOpenGL must agree with MuJoCo's back end, so ``PYOPENGL_PLATFORM`` follows
only when the back end is OSMesa.

Triton is imported first when it is installed (it comes with torch): Mesa and triton each load
their own LLVM, and importing triton after MuJoCo has loaded Mesa kills the process (a segfault,
with OSMesa and EGL alike), while the other order works. LeRobot's policies and diffusers import
triton, so one process that simulates the arm and runs a policy needs this order.
"""

import os

try:
    import triton  # noqa: F401
except ImportError:  # a CPU-only environment without it: nothing to order
    pass

if os.environ.setdefault("MUJOCO_GL", "osmesa") == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
