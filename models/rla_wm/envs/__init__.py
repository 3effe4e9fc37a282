"""Simulated environments (no ROS): their physics, scripted experts and dataset builders."""
