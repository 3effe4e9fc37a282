"""The recorder node's observation.environment_state: a FeatureMap topic recorded frame by frame, paired with
the cameras by header stamp like the joint state; messages of another size or with a NaN never written;
absent without environment_state_topic. The live robot and the helpers: recorder_harness.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import wait_for
from recorder_harness import *  # noqa: F403  (the feeder fixture)
from recorder_harness import Recorder, column, counts, environment_of, load, recorder_spec, state_of

pytestmark = pytest.mark.timeout(150)

KEY = "observation.environment_state"
NAMES = ["obj_x", "obj_y", "obj_cos", "obj_sin"]


def test_environment_state_is_recorded_by_stamp_and_bad_messages_are_not_written(
    ros_node, start_nodes, feeder, tmp_path
):
    root = tmp_path / "dataset"
    graph = start_nodes(
        recorder_spec(root, environment_state_topic="sim/block_state", environment_state_names=f"[{','.join(NAMES)}]")
    )
    feed = feeder(environment=True)
    rec = Recorder(ros_node, graph)  # waits until no stream is stale: the environment state arrives
    assert rec.start("with the object's pose").success
    rec.wait_frames(4)
    # Three consecutive grid indices cover exactly one frame time (frames are 3 indices apart).
    k = feed.k + 6
    for i in range(3):
        feed.bad_environment[k + i] = [*environment_of(k + i), 0.0]  # 5 values, the dataset stores 4
        feed.bad_environment[k + 9 + i] = [1.0, float("nan"), 2.0, 3.0]
    wait_for(lambda: feed.k > k + 15, 5, "the bad environment states to be sent")
    rec.wait_frames(rec.last().frames_recorded + 3)
    # Counted and reported: the status names the stream and the last refusal (the NaN one).
    status = rec.last().message
    assert f"unusable samples: {KEY} " in status and "NaN" in status, status
    answer = rec.stop()
    assert answer.success, answer.message
    frames, skipped = counts(answer.message)
    assert skipped >= 2, answer.message

    ds = load(root)
    feature = ds.meta.features[KEY]
    assert feature["dtype"] == "float32" and tuple(feature["shape"]) == (4,) and list(feature["names"]) == NAMES
    ks = np.array([feed.k_of(s) for s in column(ds, "capture_stamp")])
    assert len(ds) == frames == len(ks) and frames >= 6
    environment = column(ds, KEY)
    assert environment.dtype == np.float32 and environment.shape == (frames, 4)
    # Every row is the environment state sent with that frame's camera image, as the joint state is.
    np.testing.assert_array_equal(environment, np.array([environment_of(int(i)) for i in ks], dtype=np.float32))
    np.testing.assert_array_equal(
        column(ds, "observation.state"), np.array([state_of(int(i)) for i in ks], dtype=np.float32)
    )
    assert np.isfinite(environment).all()
    assert not np.any((ks >= k) & (ks <= k + 2)), "the frame with a wrong-sized environment state was recorded"
    assert not np.any((ks >= k + 9) & (ks <= k + 11)), "the frame with a NaN environment state was recorded"
    assert np.any(ks < k) and np.any(ks > k + 11)  # recorded on both sides of the bad messages
    # LeRobot reads it back as a float vector per frame.
    item = ds[0]
    assert tuple(item[KEY].shape) == (4,)
    np.testing.assert_allclose(item[KEY].numpy(), environment_of(int(ks[0])))
    # The first refusal was logged with its reason (the guard throttles repeats of one stream's refusals).
    logs = graph.tail_logs(400)
    assert f"rejected {KEY}: unusable_sample: environment state has 5 values, the dataset stores 4" in logs, logs


def test_without_environment_state_topic_nothing_is_subscribed_or_recorded(ros_node, start_nodes, feeder, tmp_path):
    root = tmp_path / "dataset"
    graph = start_nodes(recorder_spec(root))
    feed = feeder(environment=True)  # published, and must be ignored
    rec = Recorder(ros_node, graph)
    assert ros_node.count_subscribers("sim/block_state") == 0
    assert rec.start("no environment state").success
    rec.wait_frames(3)
    answer = rec.stop()
    assert answer.success, answer.message
    assert feed.k > 0
    ds = load(root)
    assert KEY not in ds.meta.features and KEY not in ds.hf_dataset.column_names
    assert "observation.state" in ds.meta.features and len(ds) == counts(answer.message)[0]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert KEY not in info["features"]
