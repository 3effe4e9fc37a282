"""QoS profiles shared by the nodes."""
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)

# Best-effort, newest frame only: a slow consumer drops old frames instead of queueing them.
CAMERA_QOS = QoSProfile(
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
)

# Reliable, newest only: model outputs where only the latest one matters.
LATEST_ONLY = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)

# Latched so a late-joining subscriber (or a restarted node) still sees the last value, e.g. the e-stop.
LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
