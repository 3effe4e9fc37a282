"""Training data: LeRobot datasets, the feature cache, frame pairs and policy windows."""
