"""Training: the experiment configuration and the training loops of every model."""
