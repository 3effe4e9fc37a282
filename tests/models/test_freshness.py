"""The bounded stamp history and the freshness rule that nodes use for their input streams."""

import math

import pytest

from rla_wm.control.freshness import LatestSample, remember_newest


def test_remember_newest_keeps_the_last_size_stamps_in_arrival_order():
    table: dict[int, str] = {}
    for stamp in (10, 20, 30):
        remember_newest(table, stamp, f"v{stamp}", size=3)
    assert table == {10: "v10", 20: "v20", 30: "v30"}
    remember_newest(table, 40, "v40", size=3)
    assert list(table) == [20, 30, 40]  # the oldest arrival went, not the smallest key by chance
    remember_newest(table, 5, "v5", size=3)  # arrival order, not stamp order, decides what is dropped
    assert list(table) == [30, 40, 5]
    assert table[5] == "v5"


def test_remember_newest_replaces_a_stored_stamp_in_place():
    table = {1: "a", 2: "b"}
    remember_newest(table, 1, "a2", size=2)
    assert table == {1: "a2", 2: "b"}
    # Storing it again gave it a new value, not a new place: it is still the oldest, and goes first.
    remember_newest(table, 3, "c", size=2)
    assert table == {2: "b", 3: "c"}


def test_remember_newest_trims_a_table_that_is_already_too_long():
    table = {stamp: stamp * 2 for stamp in range(6)}
    remember_newest(table, 6, 12, size=2)
    assert table == {5: 10, 6: 12}


class SteppedClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latest_sample_ages_from_its_newest_update():
    clock = SteppedClock()
    sample: LatestSample[int] = LatestSample(1.0, clock)
    sample.update(1)
    clock.now += 0.75
    assert sample.age() == pytest.approx(0.75)
    sample.update(2)  # a new value restarts the age
    assert sample.age() == 0.0
    clock.now += 0.75
    assert sample.fresh() == 2
    clock.now += 0.5
    assert sample.age() == pytest.approx(1.25) and sample.fresh() is None


@pytest.mark.parametrize("timeout", [-1.0, 0.0, math.nan])
def test_latest_sample_refuses_a_timeout_that_is_not_positive(timeout):
    with pytest.raises(ValueError, match="positive"):
        LatestSample(timeout)
