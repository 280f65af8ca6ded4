"""Simulated tasks (robosuite on MuJoCo): environments, cameras, scripted experts, pretraining views."""

import os

# Headless rendering through EGL (Mesa on a CPU); must be chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Mesa's CPU rasteriser (llvmpipe) draws in the calling thread instead of handing each frame to a thread per core:
# at 128-256 px the hand-offs cost more than they gain, and evaluation runs one process per core anyway. The images
# are the same to the bit (tests/test_sim.py). Read when the first GL context is made.
os.environ.setdefault("LP_NUM_THREADS", "0")
