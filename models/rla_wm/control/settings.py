"""Settings dataclasses whose fields carry their description and allowed range.

A node declares one typed, range-checked ROS parameter per field (`setting_specs`), so the
default, the meaning and the limits of a setting live in one place, beside the code that uses
it, and a caller without ROS (a test, a benchmark) builds the same settings with the same
defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple


def setting(default: Any, description: str, value_range: tuple[float, float] | None = None) -> Any:
    """A dataclass field with a default, a description and an optional [low, high] range.

    Sequences are given as tuples (a dataclass default must be immutable).
    """
    return dataclasses.field(default=default, metadata={"description": description, "range": value_range})


class SettingSpec(NamedTuple):
    name: str
    default: Any  # tuples come back as lists (ROS array parameters)
    description: str
    value_range: tuple[float, float] | None


def setting_specs(settings_class: type) -> list[SettingSpec]:
    """Every field of a settings dataclass made with `setting`, in declaration order."""
    specs = []
    for field in dataclasses.fields(settings_class):
        if "description" not in field.metadata:
            raise TypeError(f"{settings_class.__name__}.{field.name} has no description: declare it with setting()")
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        specs.append(SettingSpec(field.name, default, field.metadata["description"], field.metadata["range"]))
    return specs
