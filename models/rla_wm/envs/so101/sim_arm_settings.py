"""Settings of the `sim_arm` node (the simulated SO-101): one ROS parameter per field.

`rla_wm.control.settings.setting_specs` turns each field into a typed, range-checked parameter;
defaults and meanings live here, so a test or script builds the same configuration without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

from rla_wm.control.settings import setting
from rla_wm.envs.so101.environment_state import CUBE_STATE_ENCODER_ID
from rla_wm.envs.so101.sim import CONTROL_HZ


@dataclass(frozen=True)
class SimArmSettings:
    seed: int = setting(0, "Seed of the first episode; episode k uses seed + k.", (0, 2**31 - 1))
    max_episode_steps: int = setting(200, f"Steps (at {CONTROL_HZ} Hz) before an episode ends.", (1, 100000))
    image_width: int = setting(128, "Width of both cameras' images (pixels).", (16, 1024))
    image_height: int = setting(128, "Height of both cameras' images (pixels).", (16, 1024))
    front_frame_id: str = setting("front_camera", "frame_id of the scene camera's images (front/image_raw).")
    wrist_frame_id: str = setting("wrist_camera", "frame_id of the wrist camera's images (wrist/image_raw).")
    world_frame_id: str = setting(
        "base_link", "frame_id of the environment state: the arm's base (the URDF's root link) on the table top."
    )
    update_rate: int = setting(
        100,
        f"Controller update rate (Hz, a multiple of {CONTROL_HZ}): the trajectory is sampled this often "
        "and each sample held until the next, as joint_trajectory_controller does.",
        (CONTROL_HZ, 500),
    )
    real_time_factor: float = setting(1.0, "Simulated seconds per wall second (1 = real time).", (0.1, 100.0))
    publish_clock: bool = setting(
        False,
        f"Be the time source: publish /clock, advancing 1/{CONTROL_HZ} s per step, and stamp everything with "
        "it; time stands still while an episode is done (until reset).",
    )
    publish_environment_state: bool = setting(
        False,
        "Also publish the cube pose and zone as a 1x1 FeatureMap on sim/environment_state (encoder_id "
        f"{CUBE_STATE_ENCODER_ID!r}), stamped like the cameras: privileged input for the scripted expert "
        "and observation.environment_state for the recorder.",
    )
    publish_goal_image: bool = setting(
        False,
        "Also publish the front camera's view of the episode solved (the cube on the zone's centre, the arm at "
        "home) on sim/goal_image (latched, re-sent at each reset): the world-model planner's goal.",
    )

    def __post_init__(self) -> None:
        if self.update_rate % CONTROL_HZ:
            raise ValueError(f"update_rate must be a multiple of {CONTROL_HZ} Hz, got {self.update_rate}")
