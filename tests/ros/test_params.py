"""rla_wm_ros.params.declare on a real rclpy node: types, ranges, and a whole number given for a float."""

from __future__ import annotations

import pytest
import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from rla_wm_ros.params import declare


@pytest.fixture
def context(ros_domain):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)  # the test's own domain, as every DDS participant here
    yield context
    rclpy.try_shutdown(context=context)


def node_with(context, *overrides: str) -> Node:
    args = ["--ros-args", *[item for value in overrides for item in ("-p", value)]]
    return Node("params_probe", context=context, cli_args=args)


def test_a_whole_number_for_a_float_parameter_is_that_many_units(context):
    """`blend_time:=0` (what a person types, and what a launch file passes for "0") is 0.0 seconds."""
    node = node_with(context, "blend_time:=0", "rate:=3")
    try:
        assert declare(node, "blend_time", 0.2, "s", (0.0, 1.0)) == 0.0
        assert isinstance(node.get_parameter("blend_time").value, float)
        assert declare(node, "rate", 0.0, "Hz") == 3.0
        assert declare(node, "unset", 0.5, "s") == 0.5
    finally:
        node.destroy_node()


def test_types_and_ranges_are_still_enforced(context):
    node = node_with(context, "steps:=1.5", "blend_time:=7", "name:=3")
    try:
        with pytest.raises(InvalidParameterTypeException):
            declare(node, "steps", 1, "points")  # an integer parameter takes no decimal
        with pytest.raises(InvalidParameterValueException):
            declare(node, "blend_time", 0.2, "s", (0.0, 1.0))  # 7 s is out of range, converted or not
        with pytest.raises(InvalidParameterTypeException):
            declare(node, "name", "x", "a string")
    finally:
        node.destroy_node()
