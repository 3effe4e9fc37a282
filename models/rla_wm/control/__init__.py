"""Control-side helpers shared by every deployment path (ROS or not)."""
