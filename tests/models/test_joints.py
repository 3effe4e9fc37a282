"""select_joints: the one way joint values are read by name."""

import math

import numpy as np
import pytest

from rla_wm.control.joints import select_joints


def test_selects_by_name_in_the_order_asked():
    assert select_joints(["b", "a", "c"], [2.0, 1.0, 3.0], ["a", "b"]).tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "names, values, wanted, fragment",
    [
        (["a", "b"], [1.0], ["a"], "2 joint names but 1 values"),
        (["a", "a"], [1.0, 2.0], ["a"], "repeat"),
        (["a", "b"], [1.0, 2.0], ["a", "z"], "['z'] missing"),
        (["a", "b"], [math.nan, 2.0], ["a"], "NaN or inf value for joints ['a']"),
        (["a", "b"], [1.0, math.inf], ["b", "a"], "NaN or inf"),
    ],
)
def test_refuses_ragged_repeated_missing_and_non_finite(names, values, wanted, fragment):
    with pytest.raises(ValueError) as caught:
        select_joints(names, values, wanted)
    assert fragment in str(caught.value)


def test_a_non_finite_joint_that_is_not_wanted_is_ignored():
    assert np.array_equal(select_joints(["a", "b"], [1.0, math.nan], ["a"]), [1.0])
