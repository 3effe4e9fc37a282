"""Per-stage latencies of the closed loop from arrival times keyed by camera stamp (rla_wm.evaluation.latency)."""

import math

import numpy as np
import pytest

from rla_wm.evaluation.latency import STAGES, LatencyLog, percentiles_ms

MS = 1_000_000  # nanoseconds


def test_percentiles_are_in_milliseconds_with_linear_interpolation():
    summary = percentiles_ms(np.array([0.004, 0.001, 0.010, 0.003, 0.002]))
    assert summary["n"] == 5
    assert summary["p50_ms"] == pytest.approx(3.0)
    # The 99th percentile of five values lies 96 % of the way from the 4th (4 ms) to the 5th (10 ms).
    assert summary["p99_ms"] == pytest.approx(9.76)
    assert summary["max_ms"] == pytest.approx(10.0)


def test_percentiles_of_no_latencies_are_nan_not_zero():
    summary = percentiles_ms(np.array([]))
    assert summary["n"] == 0
    assert all(math.isnan(summary[key]) for key in ("p50_ms", "p99_ms", "max_ms"))


def test_stages_on_wall_time_start_at_the_stamp_and_skip_stamps_missing_upstream():
    t0 = 1_700_000_000_000_000_000
    t1 = t0 + 100 * MS
    log = LatencyLog(
        stamps_are_wall_time=True,
        frames={t0: t0 + 2 * MS, t1: t1 + 2 * MS},  # arrivals: not used on wall-clock stamps
        features={t0: t0 + 30 * MS, t1: t1 + 35 * MS},
        chunks={t0: t0 + 50 * MS, t1 + 1: t1 + 60 * MS},  # the second chunk's stamp has no feature map
        commands={t0: t0 + 58 * MS},
    )
    stages = log.stage_seconds()
    assert tuple(stages) == STAGES
    assert stages["camera_to_features"] == pytest.approx([0.030, 0.035])
    assert stages["features_to_chunk"] == pytest.approx([0.020])
    assert stages["chunk_to_command"] == pytest.approx([0.008])
    assert stages["camera_to_command"] == pytest.approx([0.058])


def test_chunks_are_timed_from_the_models_own_input_topic_when_it_is_not_features():
    stamp = 5_000_000_000
    log = LatencyLog(
        stamps_are_wall_time=False,
        frames={stamp: 1_000 * MS},
        features={stamp: 1_040 * MS},  # the encoder's output, which this model does not read
        chunks={stamp: 1_025 * MS},
        model_inputs={stamp: 1_010 * MS},  # e.g. /sim/block_state
    )
    stages = log.stage_seconds()
    assert stages["features_to_chunk"] == pytest.approx([0.015])
    assert stages["camera_to_features"] == pytest.approx([0.040])
    log.model_inputs = None  # timed from /features the chunk would come before its input
    assert log.stage_seconds()["features_to_chunk"] == pytest.approx([-0.015])


def test_an_empty_log_has_empty_stages():
    stages = LatencyLog().stage_seconds()
    assert set(stages) == set(STAGES)
    assert all(values.size == 0 and values.dtype == np.float64 for values in stages.values())
