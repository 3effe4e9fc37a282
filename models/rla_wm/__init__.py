"""RLA-WM: visual-feature world models with residual latent actions (no ROS imports)."""

__version__ = "0.1.0"
