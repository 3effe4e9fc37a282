"""The SO-101 in LeRobot's dataset layout: the unit conversion (rla_wm.envs.so101.lerobot_units) checked
against LeRobot's own SO-101 follower and motor normalisation, the recorder's joint_layout so101_lerobot,
and the teleop's joint-space play on an arm."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from rla_wm.control.teleop import JointRandomWalk
from rla_wm.control.teleop_session import TeleopSession, TeleopSettings
from rla_wm.envs.so101.dataset import so101_features
from rla_wm.envs.so101.lerobot_units import (
    FEATURE_NAMES,
    JOINT_NAMES,
    ROBOT_TYPE,
    So101LeRobotUnits,
    default_units,
    lerobot_feature_order,
)
from rla_wm.envs.so101.sim import HOME, urdf_limits
from rla_wm.envs.so101.sim import JOINT_NAMES as SIM_JOINT_NAMES
from rla_wm.recording import PendingSave, RecordingSession

from conftest import so101_urdf
from test_recording_session import EPOCH, FakeClock, Log, column, settings

GRIPPER_LOW, GRIPPER_HIGH = -0.174533, 1.74533  # so101_new_calib.urdf's gripper <limit>
CONFIG = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "rla_wm_ros" / "config"


# ---------------------------------------------------------------------- the conversion


def test_gripper_range_comes_from_the_simulators_urdf():
    units = default_units()
    assert (units.gripper_lower, units.gripper_upper) == (GRIPPER_LOW, GRIPPER_HIGH)
    assert So101LeRobotUnits.from_urdf(so101_urdf()) == units
    assert So101LeRobotUnits.from_urdf(so101_urdf().read_text()) == units
    with pytest.raises(ValueError, match="lower < upper"):
        So101LeRobotUnits(1.0, 1.0)


def test_known_values_degrees_for_the_body_and_0_to_100_for_the_gripper():
    units = default_units()
    out = units.to_lerobot(HOME)
    np.testing.assert_allclose(out[:5], np.degrees(HOME[:5]))
    assert out[1] == pytest.approx(-42.399, abs=1e-3)  # shoulder_lift at HOME: -0.74 rad
    # The gripper at 0 rad (the expert's closed jaws) is 0.174533 / 1.919863 of its range.
    assert out[5] == pytest.approx(100 * GRIPPER_LOW / (GRIPPER_LOW - GRIPPER_HIGH), abs=1e-9)
    assert out[5] == pytest.approx(9.0909, abs=1e-4)
    ends = units.to_lerobot([[0, 0, 0, 0, 0, GRIPPER_LOW], [0, 0, 0, 0, 0, GRIPPER_HIGH]])
    assert ends[:, 5].tolist() == [0.0, 100.0]
    # Beyond the range the gripper is clamped, as LeRobot's RANGE_0_100 clamps its reading.
    beyond = units.to_lerobot([[0, 0, 0, 0, 0, GRIPPER_LOW - 0.1], [0, 0, 0, 0, 0, GRIPPER_HIGH + 0.1]])
    assert beyond[:, 5].tolist() == [0.0, 100.0]
    assert units.to_radians([0, 90, -90, 180, 0, 50])[:5] == pytest.approx([0, math.pi / 2, -math.pi / 2, math.pi, 0])
    assert units.to_radians([0, 0, 0, 0, 0, 50])[5] == pytest.approx((GRIPPER_LOW + GRIPPER_HIGH) / 2)
    assert units.to_radians([0, 0, 0, 0, 0, 130])[5] == pytest.approx(GRIPPER_HIGH)


def test_round_trip_over_the_urdf_limits():
    limits = urdf_limits()
    assert tuple(limits.names) == JOINT_NAMES == SIM_JOINT_NAMES
    rng = np.random.default_rng(0)
    radians = rng.uniform(limits.lower, limits.upper, size=(500, 6))
    units = default_units()
    lerobot = units.to_lerobot(radians)
    assert lerobot.shape == (500, 6)
    np.testing.assert_allclose(units.to_radians(lerobot), radians, atol=1e-12)
    # Every body joint's range in degrees, the gripper's in 0..100.
    assert (np.abs(lerobot[:, :5]) <= np.degrees(np.maximum(-limits.lower[:5], limits.upper[:5])) + 1e-9).all()
    assert lerobot[:, 5].min() >= 0.0 and lerobot[:, 5].max() <= 100.0
    # And through float32, as a dataset stores them: well under a hundredth of a degree.
    back = units.to_radians(lerobot.astype(np.float32))
    assert np.abs(back - radians).max() < 1e-5


def test_feature_names_and_joint_order():
    assert FEATURE_NAMES == (
        "shoulder_pan.pos",
        "shoulder_lift.pos",
        "elbow_flex.pos",
        "wrist_flex.pos",
        "wrist_roll.pos",
        "gripper.pos",
    )
    assert lerobot_feature_order(FEATURE_NAMES).tolist() == [0, 1, 2, 3, 4, 5]
    shuffled = [FEATURE_NAMES[i] for i in (5, 0, 4, 1, 3, 2)]
    order = lerobot_feature_order(shuffled)
    assert [shuffled[i] for i in order] == list(FEATURE_NAMES)
    units = default_units()
    radians = np.array([0.1, -0.2, 0.3, -0.4, 0.5, 0.6])
    stored = units.to_lerobot(radians)[[5, 0, 4, 1, 3, 2]]  # a vector in the shuffled order
    np.testing.assert_allclose(units.radians_from_features(stored, shuffled), radians, atol=1e-12)
    for names in (JOINT_NAMES, FEATURE_NAMES[:5], [*FEATURE_NAMES[:5], "gripper.vel"]):
        assert lerobot_feature_order(names) is None
    with pytest.raises(ValueError, match="feature names"):
        units.radians_from_features(stored, JOINT_NAMES)
    for bad in ([1.0, 2.0], [[0, 0, 0, 0, 0, float("nan")]]):
        with pytest.raises(ValueError):
            units.to_lerobot(bad)


# ---------------------------------------------------------------------- against LeRobot itself


def _lerobot_so101(monkeypatch, tmp_path: Path, size: int = 128):
    """LeRobot's SO-101 follower with front and wrist cameras, and the motors its bus was given.

    Its Feetech bus needs the serial SDK (not installed, and no arm here): the bus class is replaced by
    one that keeps the motors it is built with; nothing else of LeRobot's robot is changed."""
    import lerobot.robots.so_follower.so_follower as so_follower
    from lerobot.cameras.opencv import OpenCVCameraConfig
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    captured: dict = {}

    class KeepMotors:
        def __init__(self, port: str, motors: dict, calibration: object = None) -> None:
            self.motors = motors
            captured.update(motors)

    monkeypatch.setattr(so_follower, "FeetechMotorsBus", KeepMotors)
    cameras = {
        name: OpenCVCameraConfig(index_or_path=index, width=size, height=size, fps=10)
        for index, name in enumerate(("front", "wrist"))
    }
    config = SO101FollowerConfig(port="/dev/null", id="sim", calibration_dir=tmp_path, cameras=cameras)
    return SO101Follower(config), config, captured


def test_the_layout_is_the_one_lerobot_record_makes_from_lerobots_so101_follower(monkeypatch, tmp_path):
    from lerobot.datasets.utils import hw_to_dataset_features
    from lerobot.motors import MotorNormMode

    robot, config, motors = _lerobot_so101(monkeypatch, tmp_path)
    assert list(robot.action_features) == list(FEATURE_NAMES)
    from lerobot.robots import RobotConfig

    assert RobotConfig.get_known_choices()[ROBOT_TYPE] is type(config)  # --robot.type=so101_follower
    # lerobot-record's features: hw_to_dataset_features of the robot's action and observation features.
    lerobot = {
        **hw_to_dataset_features(robot.action_features, "action", use_video=True),
        **hw_to_dataset_features(robot.observation_features, "observation", use_video=True),
    }
    ours = so101_features(128, 128)
    assert set(ours) == set(lerobot)
    for key, feature in lerobot.items():
        assert ours[key]["dtype"] == feature["dtype"], key
        assert tuple(ours[key]["shape"]) == tuple(feature["shape"]), key
        assert list(ours[key]["names"]) == list(feature["names"]), key
    # The units: degrees on the body (use_degrees defaults to True), 0..100 on the gripper.
    assert config.use_degrees is True
    assert list(motors) == list(JOINT_NAMES)
    assert {name: m.norm_mode for name, m in motors.items()} == {
        **{name: MotorNormMode.DEGREES for name in JOINT_NAMES[:5]},
        "gripper": MotorNormMode.RANGE_0_100,
    }


def test_conversion_agrees_with_lerobots_motor_normalisation():
    """LeRobot's own `_normalize` on the raw ticks an SO-101 calibrated as so101_new_calib would read:
    each body joint's zero at the middle of its range (4096 ticks a turn), the gripper's range the URDF's."""
    from lerobot.motors import Motor, MotorCalibration, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus
    from lerobot.motors.motors_bus import SerialMotorsBus

    ticks_per_rad = 4096 / (2 * math.pi)
    mid = 2048
    limits = urdf_limits()
    motors, calibration = {}, {}
    for index, name in enumerate(JOINT_NAMES, start=1):
        gripper = name == "gripper"
        motors[name] = Motor(index, "sts3215", MotorNormMode.RANGE_0_100 if gripper else MotorNormMode.DEGREES)
        low = round(mid + limits.lower[index - 1] * ticks_per_rad) if gripper else mid - 1500
        high = round(mid + limits.upper[index - 1] * ticks_per_rad) if gripper else mid + 1501
        calibration[name] = MotorCalibration(id=index, drive_mode=0, homing_offset=0, range_min=low, range_max=high)
    # The bus's arithmetic without its serial port (the SDK is not installed): the base class's set-up.
    bus = FeetechMotorsBus.__new__(FeetechMotorsBus)
    SerialMotorsBus.__init__(bus, "/dev/null", motors, calibration)

    radians = np.array([0.7, -0.74, 0.61, 1.18, -2.0, 0.9])
    raw = {index: int(round(mid + q * ticks_per_rad)) for index, q in enumerate(radians, start=1)}
    normalised = bus._normalize(raw)
    theirs = np.array([normalised[index] for index in range(1, 7)])
    ours = default_units().to_lerobot(radians)
    # Whole ticks: 360 / 4095 = 0.088 degrees, and 100 / 1251 ticks of gripper range.
    np.testing.assert_allclose(ours[:5], theirs[:5], atol=0.1)
    assert ours[5] == pytest.approx(theirs[5], abs=0.1)


# ---------------------------------------------------------------------- the recorder's layout


def so101_settings(root: Path, **overrides):
    values = dict(
        camera_topics=["front/image_raw", "wrist/image_raw"],
        camera_names=["front", "wrist"],
        joint_names=list(JOINT_NAMES),
        joint_layout="so101_lerobot",
        robot_type=ROBOT_TYPE,
    )
    values.update(overrides)
    return settings(root, **values)


def test_recorder_config_with_the_so101_layout_has_lerobots_features():
    config = so101_settings(Path("/unused"), use_videos=True, image_height=128, image_width=128)
    assert config.features() == so101_features(128, 128)
    assert "shoulder_pan.pos" in config.describe()
    plain = settings(Path("/unused"), joint_names=list(JOINT_NAMES))
    assert plain.features()["observation.state"]["names"] == list(JOINT_NAMES) and plain.joint_converter() is None
    with pytest.raises(ValueError, match="joint_layout must be one of"):
        so101_settings(Path("/unused"), joint_layout="degrees")
    with pytest.raises(ValueError, match="LeRobot's SO-101 order"):
        so101_settings(Path("/unused"), joint_names=list(reversed(JOINT_NAMES)))


def test_recording_session_stores_lerobot_units_and_names(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from test_recording_session import HEIGHT, REPO, WIDTH

    root = tmp_path / "ds"
    clock = FakeClock()
    session = RecordingSession(so101_settings(root), clock=clock, log=Log())
    rng = np.random.default_rng(3)
    limits = urdf_limits()
    sent: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def feed(k: int) -> None:
        stamp = EPOCH + k / 10.0
        clock.t = stamp
        state = rng.uniform(limits.lower, limits.upper)
        action = rng.uniform(limits.lower, limits.upper)
        sent[k] = (state, action)
        image = np.full((HEIGHT, WIDTH, 3), k % 200, dtype=np.uint8)
        session.push_image("observation.images.front", stamp, image)
        session.push_image("observation.images.wrist", stamp, image)
        # The JointState's order is not the dataset's: joints are taken by name.
        order = [3, 0, 5, 1, 4, 2]
        session.push_state(stamp, [JOINT_NAMES[i] for i in order], state[order].tolist())
        session.push_trajectory(stamp, list(JOINT_NAMES), action.tolist())
        session.pump()

    for k in range(3):
        feed(k)
    assert session.start("Push the cube into the target zone").success
    for k in range(3, 20):
        feed(k)
    outcome = session.stop()
    assert isinstance(outcome, PendingSave)
    outcome.future.result(timeout=60)
    assert session.finish_save(outcome).success
    session.close()

    dataset = LeRobotDataset(REPO, root=root)
    assert dataset.meta.robot_type == ROBOT_TYPE
    for key in ("observation.state", "action"):
        assert dataset.meta.features[key]["names"] == list(FEATURE_NAMES)
    from rla_wm.recording import STAMP_KEY

    ks = [int(round((t - EPOCH) * 10)) for t in column(dataset, STAMP_KEY)]
    assert len(ks) >= 10
    states, actions = column(dataset, "observation.state"), column(dataset, "action")
    units = default_units()
    for row, k in enumerate(ks):
        state, action = sent[k]
        np.testing.assert_allclose(states[row], units.to_lerobot(state), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(actions[row], units.to_lerobot(action), rtol=1e-6, atol=1e-4)
    assert np.abs(states[:, :5]).max() > 10.0, "degrees, not radians"
    assert 0.0 <= states[:, 5].min() and states[:, 5].max() <= 100.0


# ---------------------------------------------------------------------- play on an arm


def test_joint_random_walk_stays_in_the_limits_moves_smoothly_and_sweeps():
    limits = urdf_limits()
    walk = JointRandomWalk(limits.lower, limits.upper, seed=4, speed=1.0, period=0.1)
    position = HOME.copy()
    targets = [walk(position)]
    for _ in range(400):
        targets.append(walk(targets[-1]))
    targets = np.array(targets)
    assert (targets >= limits.lower).all() and (targets <= limits.upper).all()
    assert np.abs(np.diff(targets, axis=0)).max() <= 0.1 + 1e-12  # 1 rad/s at 10 Hz
    assert np.abs(targets[0] - HOME).max() <= 0.1 + 1e-12  # starts where the arm is
    assert (np.ptp(targets, axis=0) > 0.3 * (limits.upper - limits.lower)).all(), "every joint sweeps"
    again = JointRandomWalk(limits.lower, limits.upper, seed=4, speed=1.0, period=0.1)
    assert np.array_equal(again(HOME), targets[0])
    with pytest.raises(ValueError, match="finite limits"):
        JointRandomWalk(np.full(6, -np.inf), limits.upper)


def test_teleop_play_on_the_arm_walks_its_joints_within_the_urdf_limits(tmp_path):
    import yaml

    from rla_wm.control.settings import setting_specs

    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text(f"urdf: {so101_urdf()}\nmax_step: 1.0\n")
    # The arm's teleop parameters (radians) as the node declares them: each inside its setting's range.
    params = yaml.safe_load((CONFIG / "so101_teleop.yaml").read_text())["/**"]["ros__parameters"]
    for spec in setting_specs(TeleopSettings):
        if spec.name in params and spec.value_range is not None:
            low, high = spec.value_range
            assert low <= params[spec.name] <= high, (spec.name, params[spec.name], spec.value_range)
    arm = TeleopSettings(**{**params, "limits_file": str(limits_file), "seed": 1})
    assert tuple(arm.joint_names) == JOINT_NAMES and arm.source == "play"
    session = TeleopSession(arm, *arm.joint_limits(), clock=lambda: 0.0)
    assert isinstance(session.play, JointRandomWalk)
    session.observe_state(1, HOME)
    chunk = session.tick(100_000_000)
    assert chunk is not None and chunk.positions.shape == (arm.horizon_points, 6)
    limits = urdf_limits()
    assert (chunk.positions >= limits.lower).all() and (chunk.positions <= limits.upper).all()
    assert np.abs(chunk.positions[0] - HOME).max() <= arm.play_joint_speed / arm.rate + 1e-9
    with pytest.raises(ValueError, match="limits_file"):
        unlimited = dataclasses.replace(arm, limits_file="")
        TeleopSession(unlimited, *unlimited.joint_limits())
    pusht = TeleopSettings(source="play")
    assert not isinstance(TeleopSession(pusht, *pusht.joint_limits()).play, JointRandomWalk)
