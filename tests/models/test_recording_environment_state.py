"""observation.environment_state in the recorder's logic without ROS: the vector check, the settings and
the feature schema, and a session that pairs it with the camera by stamp like the joint state (unusable or
stale samples skip their frame, or are held and flagged under stale_policy flag). The feed and helpers:
test_recording_session.py."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.control.settings import setting_specs
from rla_wm.recording import ENVIRONMENT_STATE_KEY as KEY
from rla_wm.recording import STAMP_KEY
from rla_wm.recording.environment import environment_state_vector
from rla_wm.recording.session import STATE_KEY
from rla_wm.recording.settings import RecorderSettings

from test_recording_session import Feed, column, load, settings, state_of

NAMES = ["obj_x", "obj_y", "obj_cos", "obj_sin"]


def environment_of(k: int) -> list[float]:
    return [float(k), -0.5 * k, 0.25 * k + 3.0, 1000.0 - k]


class EnvironmentFeed(Feed):
    """The session feed plus an environment state per grid step, stamped like the camera."""

    def __init__(self, root, **overrides) -> None:
        overrides = {"environment_state_topic": "sim/block_state", "environment_state_names": NAMES, **overrides}
        super().__init__(root, **overrides)
        self.environment_on = True
        self.bad_environment: dict[int, list[float]] = {}

    def run(self, n: int) -> None:
        for _ in range(n):
            k = self.k
            if self.environment_on:
                self.clock.t = self.stamp(k) + self.offset
                values = self.bad_environment.get(k, environment_of(k))
                self.session.push_environment_state(self.stamp(k), np.array([values], dtype=np.float64))
            super().run(1)


def test_environment_state_vector_flattens_and_refuses_other_sizes_and_non_finite_values():
    vector = environment_state_vector(np.array([[1.0, 2.0, 3.0, 4.0]]), 4)  # a (1, C) token grid
    assert vector.dtype == np.float32 and vector.shape == (4,) and vector.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="has 5 values, the dataset stores 4"):
        environment_state_vector([1.0] * 5, 4)
    with pytest.raises(ValueError, match=r"value\(s\) \[1\] not finite"):
        environment_state_vector([0.0, float("nan"), 0.0, 0.0], 4)
    with pytest.raises(ValueError, match="not finite"):
        environment_state_vector([0.0, 0.0, 1e300, 0.0], 4)  # beyond float32


def test_settings_declare_it_and_config_builds_its_feature():
    specs = {spec.name: spec for spec in setting_specs(RecorderSettings)}
    assert specs["environment_state_topic"].default == "" and specs["environment_state_topic"].description
    assert specs["environment_state_names"].default == ["block_x", "block_y", "block_cos", "block_sin"]
    # The node's defaults: not recorded.
    assert KEY not in RecorderSettings(dataset_root="/data").config().features()
    config = RecorderSettings(dataset_root="/data", environment_state_topic="/sim/block_state").config()
    assert config.has_environment_state and f"{KEY} <- /sim/block_state" in config.describe()
    assert config.features()[KEY] == {
        "dtype": "float32",
        "shape": (4,),
        "names": ["block_x", "block_y", "block_cos", "block_sin"],
    }
    assert settings(environment_state_topic="e", environment_state_names=["a", "b"]).features()[KEY]["shape"] == (2,)
    for names, reason in (([], "at least one"), (["a", ""], "at least one"), (["a", "a"], "must be unique")):
        with pytest.raises(ValueError, match=reason):
            settings(environment_state_topic="e", environment_state_names=names)
    settings(environment_state_topic="", environment_state_names=[])  # not recorded: names unused


def test_session_records_it_by_stamp_and_skips_frames_of_bad_or_stale_samples(tmp_path):
    feed = EnvironmentFeed(tmp_path / "ds")
    s = feed.session
    assert KEY in s.status().stale_streams  # a stream like the others: stale until it delivers
    feed.run(6)
    assert s.status().stale_streams == []
    assert s.start("push the block").success
    feed.run(12)
    k = feed.k + 6
    for i in range(3):  # three grid steps cover exactly one frame time
        feed.bad_environment[k + i] = [1.0] * 5
        feed.bad_environment[k + 9 + i] = [0.0, float("nan"), 0.0, 0.0]
    feed.run(24)
    assert sorted({key for key, _ in feed.invalid}) == [KEY] and len(feed.invalid) == 6
    feed.environment_on = False
    off = feed.k
    feed.run(24)
    assert s.status().stale_streams == [KEY]
    feed.environment_on = True
    on = feed.k
    feed.run(15)
    answer = feed.stop()
    assert answer.success, answer.message
    assert f"{KEY} invalid: 2" in answer.message and f"{KEY} stale" in answer.message, answer.message
    s.close()

    ds = load(tmp_path / "ds")
    ks = np.array([Feed.k_of(t) for t in column(ds, STAMP_KEY)])
    # Each frame holds the environment state nearest to its camera stamp, within tolerance (half a frame,
    # 1.5 grid steps): the one sent with the image, or, next to the gap, the first one after it.
    sent = np.array([i for i in range(feed.k) if not off <= i < on])
    nearest = np.array([sent[np.argmin(np.abs(sent - i))] for i in ks])
    assert np.all(np.abs(nearest - ks) <= 1) and np.sum(nearest != ks) <= 1
    np.testing.assert_array_equal(column(ds, KEY), np.array([environment_of(int(i)) for i in nearest], np.float32))
    np.testing.assert_array_equal(column(ds, STATE_KEY), np.array([state_of(int(i)) for i in ks], np.float32))
    assert list(ds.features[KEY]["names"]) == NAMES
    assert not np.any((ks >= k) & (ks <= k + 2)), "the frame with a wrong-sized environment state was recorded"
    assert not np.any((ks >= k + 9) & (ks <= k + 11)), "the frame with a NaN environment state was recorded"
    assert not np.any((ks > off + 1) & (ks < on - 1)), "frames were recorded without an environment state"
    assert np.any(ks < k) and np.any((ks > k + 11) & (ks < off)) and np.any(ks > on)


def test_stale_environment_state_is_held_and_flagged_under_flag(tmp_path):
    feed = EnvironmentFeed(tmp_path / "ds", stale_policy="flag")
    s = feed.session
    feed.run(6)
    assert s.start("held").success
    feed.run(12)
    feed.environment_on = False
    last_sent = feed.k - 1
    feed.run(15)
    assert "FLAGGED" in s.status().message and s.status().frames_skipped == 0
    feed.environment_on = True
    feed.run(9)
    answer = feed.stop()
    assert answer.success and f"FLAGGED (held stale {KEY})" in answer.message, answer.message
    s.close()
    ds = load(tmp_path / "ds")
    ks = np.array([Feed.k_of(t) for t in column(ds, STAMP_KEY)])
    environment_ks = column(ds, KEY)[:, 0].astype(int)
    held = environment_ks != ks
    # Held frames carry the last real environment state, never a made-up one.
    assert held.sum() >= 4 and np.all(environment_ks[held] == last_sent)
