"""Declaring typed, range-checked node parameters in one line each."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

_TYPES = {
    bool: Parameter.Type.BOOL,
    int: Parameter.Type.INTEGER,
    float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
}


def declare(
    node: Node,
    name: str,
    default: Any,
    description: str,
    value_range: tuple[float, float] | None = None,
    read_only: bool = True,
    param_type: type | None = None,
) -> Any:
    """Declare a parameter with its type, description and optional [low, high] range; return its value.

    The type comes from `default` (or `param_type` for lists: list[str] -> pass str
    via param_type=list and a non-empty default). Out-of-range values given in YAML
    or on the command line make the node fail at start-up with rclpy's own error.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    kind = param_type or type(default)
    if kind is list:
        element = type(default[0]) if default else str
        descriptor.type = {
            str: Parameter.Type.STRING_ARRAY,
            float: Parameter.Type.DOUBLE_ARRAY,
            int: Parameter.Type.INTEGER_ARRAY,
            bool: Parameter.Type.BOOL_ARRAY,
        }[element].value
    else:
        descriptor.type = _TYPES[kind].value
    if value_range is not None:
        low, high = value_range
        if kind is int:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        elif kind is float:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)
            ]
        else:
            raise TypeError(f"parameter {name}: ranges apply to int and float, not {kind.__name__}")
    if kind is float:
        default = float(default)
        # `name:=0` on a command line or in a launch file arrives as an INTEGER, which rclpy refuses for a
        # DOUBLE parameter; a user writing a whole number of seconds means that many seconds.
        overrides = node._parameter_overrides  # rclpy keeps the command line's and files' values here
        given = overrides.get(name)
        if given is not None and given.type_ == Parameter.Type.INTEGER:
            overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
    node.declare_parameter(name, default, descriptor)
    return node.get_parameter(name).value
