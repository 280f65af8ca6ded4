"""Simulated tasks (robosuite on MuJoCo): environments, cameras, scripted experts, pretraining views."""
