"""The dataset recorder's settings: one ROS parameter per field (config/recorder.yaml).

`RecorderSettings` carries each setting's default, description and range
(`rla_wm.control.settings`); `config()` checks them and gives the `RecorderConfig` a
`RecordingSession` runs on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from rla_wm.control.settings import setting
from rla_wm.recording.session import RecorderConfig


@dataclass(frozen=True)
class RecorderSettings:
    """Everything the recorder is configured with, in the order its node declares the parameters."""

    # A float parameter so that `fps: 30.0` in YAML is accepted; config() insists on a whole number.
    fps: float = setting(10.0, "Dataset frame rate (frames per second, a whole number).", (1.0, 1000.0))
    dataset_root: str = setting("", "LeRobot dataset folder: created if absent, else resumed.")
    repo_id: str = setting("local/teleop", "Repo id stored in the dataset.")
    robot_type: str = setting("", "Robot type stored in the dataset (empty = none/any).")
    camera_topics: Sequence[str] = setting(("camera/image_raw",), "Camera topics, one or more.")
    camera_names: Sequence[str] = setting(
        ("front",), "One name per camera topic; feature key observation.images.<name>."
    )
    compressed: bool = setting(False, "Cameras are sensor_msgs/CompressedImage, not Image.")
    image_height: int = setting(96, "Camera image height; other sizes are rejected.", (1, 8192))
    image_width: int = setting(96, "Camera image width; other sizes are rejected.", (1, 8192))
    state_topic: str = setting("joint_states", "sensor_msgs/JointState of the robot.")
    joint_names: Sequence[str] = setting(
        ("agent_x", "agent_y"), "Joints of the state and action vectors, in this order."
    )
    action_topic: str = setting("joint_trajectory", "Command topic; empty = action-free recording (no action feature).")
    action_type: str = setting(
        "joint_trajectory", "joint_trajectory (first point's positions) or joint_state (e.g. a leader arm)."
    )
    environment_state_topic: str = setting(
        "",
        "rla_wm_msgs/FeatureMap recorded as observation.environment_state (its values flattened, paired by "
        "stamp like the joint state); empty = not recorded.",
    )
    # The sim's block state (rla_wm.envs.pusht.privileged.block_state_tokens): x, y scaled to [-1, 1], cos, sin.
    environment_state_names: Sequence[str] = setting(
        ("block_x", "block_y", "block_cos", "block_sin"),
        "One name per environment state value; their count is the vector's size (other sizes are rejected).",
    )
    joint_layout: str = setting(
        "ros",
        "How state and action vectors are stored: ros (as received: joint_names, radians on an arm) or "
        "so101_lerobot (LeRobot's SO-101 layout: <joint>.pos names, degrees, gripper 0..100; joint_names must "
        "be the SO-101's six joints in LeRobot's order).",
    )
    tolerance: float = setting(0.0, "Largest |sample stamp - frame time| in s; 0 = half a frame period.", (0.0, 10.0))
    action_tolerance: float = setting(0.0, "Tolerance of the action stream in s; 0 = same as tolerance.", (0.0, 10.0))
    latency_budget: float = setting(
        0.25, "How long a frame waits for a lagging stream before it is decided (s).", (0.0, 10.0)
    )
    stale_policy: str = setting(
        "skip", "skip: skip frames with a stale stream; flag: hold its last sample, flag the episode."
    )
    use_videos: bool = setting(True, "Store cameras as video (true) or as PNG images in parquet.")
    vcodec: str = setting("libsvtav1", "Video codec of LeRobot's encoder (libsvtav1, h264, hevc).")
    image_writer_threads: int = setting(2, "Threads writing frame PNGs (0: in the writer thread).", (0, 64))
    queue_size: int = setting(256, "Frames the writer queue holds before frames are dropped.", (1, 1_000_000))
    buffer_size: int = setting(256, "Samples kept per stream for synchronisation.", (8, 100_000))
    save_on_shutdown: bool = setting(
        False, "On SIGINT/SIGTERM while recording: save (true) or discard (false) the episode."
    )
    status_rate: float = setting(5.0, "Status messages per second.", (0.1, 100.0))

    def config(self) -> RecorderConfig:
        """The checked configuration of a recording session (ValueError naming the setting otherwise)."""
        if float(self.fps) != int(self.fps):
            raise ValueError(f"fps must be a whole number (LeRobot stores an integer fps), got {self.fps}")
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        lists = {name: list(value) for name, value in values.items() if isinstance(value, (list, tuple))}
        return RecorderConfig(**{**values, **lists, "fps": int(self.fps)})
