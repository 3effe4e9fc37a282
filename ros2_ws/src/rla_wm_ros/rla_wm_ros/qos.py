"""QoS profiles shared by the nodes."""

from collections.abc import Callable

from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)

try:  # rclpy of Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

# Best-effort, newest frame only: a slow consumer drops old frames instead of queueing them.
# Best effort because it matches both best-effort (sensor-data QoS) and reliable camera drivers;
# a reliable subscription would not match the former. Camera-sized frames (640x480 and up) need
# the Fast DDS profile config/fastdds.xml in the *publisher's* environment: with Fast DDS's
# default 512 KiB shared-memory segment a best-effort subscriber loses almost every such frame.
CAMERA_QOS = QoSProfile(
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
)

# The recorder's inputs. Its subscription queues hold about a third of a second at 30 Hz: enough to
# absorb a burst from a publisher catching up, not more, because a backlog is latency: a sample later
# than `latency_budget` is as lost as a dropped one, and a deep queue, once behind, stays behind.
# Cameras: best effort (matches reliable and best-effort drivers alike).
CAMERA_INPUT_QOS = QoSProfile(
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
)
# Joint states and commands: best effort too (it matches reliable publishers). A reliable
# reader that misses one sample holds every later one back until the writer repairs it (up
# to Fast DDS's 3 s heartbeat period): for a recorder a late sample is as bad as a lost one,
# and a lost one only costs the frame it was nearest to. Deeper, for fast state streams.
JOINT_INPUT_QOS = QoSProfile(
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=20,
)

# Reliable, newest only: model outputs where only the latest one matters.
LATEST_ONLY = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)

# Latched so a late-joining subscriber (or a restarted node) still sees the last value, e.g. the e-stop.
LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)

# The e-stop must engage from every publisher a user may reasonably use. A subscription matches a
# publisher only if it asks for no more than the publisher offers: a reliable subscription misses
# best-effort publishers, a transient-local one misses volatile publishers (`ros2 topic pub`, a
# default rclpy publisher). So the gate listens three ways: reliable + volatile (any reliable
# publisher), best effort + volatile (any publisher at all), reliable + transient local (a latched
# e-stop set before the gate started). A repeated `true` is harmless: the e-stop latches.
ESTOP_QOS = (
    QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE),
    QoSProfile(depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT, durability=QoSDurabilityPolicy.VOLATILE),
    LATCHED,
)


def lost_sample_callbacks(on_lost: Callable[[int], None]) -> SubscriptionEventCallbacks:
    """Event callbacks for a subscription that call `on_lost(n)` when the middleware sees `n`
    samples go missing on the way (DDS SAMPLE_LOST: a gap in a best-effort writer's sequence, a
    large sample that could not be reassembled). Samples a KEEP_LAST subscription replaces because
    its callback is busy are not lost in this sense and are not reported."""
    return SubscriptionEventCallbacks(message_lost=lambda info: on_lost(int(info.total_count_change)))
