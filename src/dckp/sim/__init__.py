"""Simulated tasks (robosuite on MuJoCo): environments, cameras, scripted experts, pretraining views."""

import os

# Headless rendering through EGL (Mesa on a CPU); must be chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
