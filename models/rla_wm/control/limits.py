"""Joint limits for the safety gate and teleop: a strict YAML file, optionally over a URDF (pure Python, no ROS).

The limits file (YAML) is always required: it carries ``max_step``. Its top-level keys:

``max_step`` (required)
    No point of a chunk may be farther than this from the measured state (per joint).
``urdf`` (optional)
    Path of a URDF file; a relative path is taken from the YAML file's folder, and a
    ``package://NAME/PATH`` URI is resolved by `resolve_urdf_file`. The URDF may instead come
    as text (the ``robot_description`` parameter) or as a file named outside the YAML (the
    ``urdf_file`` argument, the gate's ``urdf_file`` parameter); giving more than one is an error.
``controlled_joints`` (optional, only with a URDF)
    The joints the gate governs, in this order. Default: every movable, non-mimic joint of
    the URDF (``revolute``, ``prismatic``, ``continuous``), in URDF order.
``joints`` (required without a URDF)
    ``{name: {lower, upper, max_velocity}}``. Without a URDF it lists every governed joint with
    all three values. Next to a URDF an entry may only *tighten* that joint's URDF limits
    (any subset of the three keys); one that would loosen a limit is refused, and so is a joint
    the gate does not govern. A ``continuous`` joint has no position limit in the URDF, so it
    needs ``lower`` and ``upper`` here.

From the URDF: each governed joint's ``<limit lower upper velocity>`` (``lower``/``upper``
default to 0 as the URDF spec says; ``velocity`` must be given and positive). ``fixed``,
``floating`` and ``planar`` joints and ``mimic`` joints are never governed.

The YAML is read strictly: a duplicated key anywhere, non-numeric, NaN or infinite values,
unknown keys and non-mapping content are refused with a ValueError that names the file.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rla_wm.control.safety import JointLimits
from rla_wm.control.urdf_file import resolve_urdf_file

__all__ = [
    "DuplicateKeyError",
    "StrictSafeLoader",
    "UrdfJoint",
    "limits_from_urdf",
    "load_limits",
    "load_strict_yaml",
    "resolve_urdf_file",
    "urdf_joints",
]

TOP_LEVEL_KEYS = ("max_step", "urdf", "controlled_joints", "joints")
JOINT_KEYS = ("lower", "upper", "max_velocity")
MOVABLE_TYPES = ("revolute", "prismatic", "continuous")
UNGOVERNED_TYPES = ("fixed", "floating", "planar")
_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------- strict YAML


class DuplicateKeyError(ValueError):
    """A YAML mapping repeats a key (PyYAML would silently keep the last value)."""


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth.

    Explicit keys are checked; a ``<<`` merge key's entries may still be overridden, as YAML
    intends.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise DuplicateKeyError(
                        f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                        f"(first given on line {first.line + 1})"
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_strict_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file with :class:`StrictSafeLoader`; every error is a ValueError naming the file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err})") from err
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        raise DuplicateKeyError(f"{file}: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: not valid YAML: {err}") from err


def _number(value: Any, where: str) -> float:
    """A finite float from a YAML/XML value; bools, strings, None, NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return number


# --------------------------------------------------------------------------- URDF


@dataclass(frozen=True)
class UrdfJoint:
    """One ``<joint>`` of a URDF, as far as limits go.

    ``has_limit`` says whether a ``<limit>`` element is present; ``lower``/``upper`` are None
    for joints without a position range (continuous, fixed, ...), ``velocity`` is None when
    the URDF gives none.
    """

    name: str
    type: str
    has_limit: bool
    lower: float | None
    upper: float | None
    velocity: float | None
    mimic: str | None  # the joint this one mimics

    @property
    def movable(self) -> bool:
        return self.type in MOVABLE_TYPES


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr_number(element: ET.Element, name: str, where: str) -> float | None:
    text = element.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where} {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} {name}={text!r} is not finite")
    return value


def urdf_joints(xml_text: str | bytes, source: str = "URDF") -> list[UrdfJoint]:
    """Every ``<joint>`` directly under ``<robot>``, in file order (``<transmission>`` joints are not joints)."""
    if not xml_text or (isinstance(xml_text, str) and not xml_text.strip()):
        raise ValueError(f"{source} is empty")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as err:
        raise ValueError(f"{source} is not valid XML: {err}") from err
    if _local(root.tag) != "robot":
        raise ValueError(f"{source}: the root element is <{_local(root.tag)}>, a URDF's is <robot>")
    joints: list[UrdfJoint] = []
    seen: set[str] = set()
    for element in root:
        if not isinstance(element.tag, str) or _local(element.tag) != "joint":
            continue
        name = element.get("name")
        kind = element.get("type")
        if not name:
            raise ValueError(f"{source}: a <joint> has no name")
        where = f"{source}: joint {name!r}"
        if name in seen:
            raise ValueError(f"{where} is defined twice")
        seen.add(name)
        if kind not in MOVABLE_TYPES + UNGOVERNED_TYPES:
            raise ValueError(f"{where} has type {kind!r}; URDF joint types are {MOVABLE_TYPES + UNGOVERNED_TYPES}")
        limit = next((child for child in element if isinstance(child.tag, str) and _local(child.tag) == "limit"), None)
        mimic = next((child for child in element if isinstance(child.tag, str) and _local(child.tag) == "mimic"), None)
        lower = upper = velocity = None
        if limit is not None:
            velocity = _attr_number(limit, "velocity", f"{where} <limit>")
            if kind in ("revolute", "prismatic"):
                # The URDF spec: lower and upper default to 0.
                lower = _attr_number(limit, "lower", f"{where} <limit>")
                upper = _attr_number(limit, "upper", f"{where} <limit>")
                lower = 0.0 if lower is None else lower
                upper = 0.0 if upper is None else upper
        joints.append(
            UrdfJoint(
                name=name,
                type=kind,
                has_limit=limit is not None,
                lower=lower,
                upper=upper,
                velocity=velocity,
                mimic=None if mimic is None else (mimic.get("joint") or "?"),
            )
        )
    return joints


def _check_override_entry(name: str, entry: Any, where: str, complete: bool) -> dict[str, float]:
    """A YAML ``joints:`` entry as {key: number}; `complete` requires all of lower/upper/max_velocity."""
    if entry is None and not complete:
        entry = {}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: joints.{name} must be a mapping of {', '.join(JOINT_KEYS)}, got {entry!r}")
    unknown = [key for key in entry if key not in JOINT_KEYS]
    if unknown:
        raise ValueError(f"{where}: joints.{name} has unknown keys {unknown}; allowed: {list(JOINT_KEYS)}")
    if complete:
        missing = [key for key in JOINT_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{where}: joints.{name} needs {', '.join(JOINT_KEYS)}; missing {', '.join(missing)}")
    return {key: _number(value, f"{where}: joints.{name}.{key}") for key, value in entry.items()}


def limits_from_urdf(
    xml_text: str | bytes,
    joints: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    source: str = "URDF",
    overrides_source: str = "limits file",
) -> JointLimits:
    """Position and velocity limits of the URDF's joints.

    joints: the governed joints, in this order (default: every movable, non-mimic joint in URDF
    order). overrides: ``{name: {lower?, upper?, max_velocity?}}`` that may only tighten the
    URDF's limits (a loosening value is refused); a continuous joint needs ``lower`` and
    ``upper`` here. Raises ValueError with the reason for anything it cannot govern safely.
    """
    parsed = urdf_joints(xml_text, source)
    by_name = {joint.name: joint for joint in parsed}
    candidates = [joint.name for joint in parsed if joint.movable and joint.mimic is None]
    if joints is None:
        names = candidates
        if not names:
            raise ValueError(
                f"{source} has no movable, non-mimic joint to govern (joints: {[(j.name, j.type) for j in parsed]})"
            )
    else:
        names = list(joints)
        if not names:
            raise ValueError(f"{overrides_source}: controlled_joints is empty; the gate needs at least one joint")
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"{overrides_source}: controlled_joints entries must be joint names, got {name!r}")
            joint = by_name.get(name)
            if joint is None:
                raise ValueError(
                    f"{overrides_source}: controlled joint {name!r} is not in {source}; "
                    f"its movable joints are {candidates}"
                )
            if not joint.movable:
                raise ValueError(
                    f"{overrides_source}: controlled joint {name!r} is a {joint.type} joint in {source}; "
                    f"only {'/'.join(MOVABLE_TYPES)} joints can be governed"
                )
            if joint.mimic is not None:
                raise ValueError(
                    f"{overrides_source}: controlled joint {name!r} mimics {joint.mimic!r} in {source}; "
                    "govern the joint it follows instead"
                )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"{overrides_source}: controlled_joints lists {duplicates} more than once")

    overrides = dict(overrides or {})
    for name in overrides:
        if not isinstance(name, str):
            raise ValueError(f"{overrides_source}: joint names must be strings, got {name!r}")
        if name not in by_name:
            raise ValueError(
                f"{overrides_source}: joints.{name} is not a joint of {source}; its movable joints are {candidates}"
            )
        if name not in names:
            raise ValueError(
                f"{overrides_source}: joints.{name} is not a governed joint (governed: {names}); "
                "add it to controlled_joints or remove the entry"
            )

    lower, upper, velocity = [], [], []
    for name in names:
        joint = by_name[name]
        entry = _check_override_entry(name, overrides.get(name), overrides_source, complete=False)
        where = f"{source}: joint {name!r}"
        if not joint.has_limit:
            raise ValueError(f"{where} ({joint.type}) has no <limit> element: its velocity limit is unknown")
        if joint.velocity is None:
            raise ValueError(f"{where} has no velocity in its <limit>: the gate needs a velocity limit")
        if joint.velocity <= 0:
            raise ValueError(f"{where} has velocity {joint.velocity:g}; it must be positive")
        if joint.type == "continuous":
            if "lower" not in entry or "upper" not in entry:
                raise ValueError(
                    f"{where} is continuous (no position limit): give joints.{name}.lower and upper in "
                    f"{overrides_source}, or leave it out of controlled_joints"
                )
            low, high = entry["lower"], entry["upper"]
        else:
            assert joint.lower is not None and joint.upper is not None
            if joint.lower > joint.upper:
                raise ValueError(f"{where} has lower {joint.lower:g} above upper {joint.upper:g}")
            if "lower" in entry and entry["lower"] < joint.lower:
                raise ValueError(
                    f"{overrides_source}: joints.{name}.lower {entry['lower']:g} would loosen the "
                    f"URDF lower limit {joint.lower:g} (entries may only tighten)"
                )
            if "upper" in entry and entry["upper"] > joint.upper:
                raise ValueError(
                    f"{overrides_source}: joints.{name}.upper {entry['upper']:g} would loosen the "
                    f"URDF upper limit {joint.upper:g} (entries may only tighten)"
                )
            low = max(joint.lower, entry.get("lower", -math.inf))
            high = min(joint.upper, entry.get("upper", math.inf))
        if "max_velocity" in entry and entry["max_velocity"] > joint.velocity:
            raise ValueError(
                f"{overrides_source}: joints.{name}.max_velocity {entry['max_velocity']:g} would loosen "
                f"the URDF velocity limit {joint.velocity:g} (entries may only tighten)"
            )
        speed = min(joint.velocity, entry.get("max_velocity", math.inf))
        if low > high:
            raise ValueError(f"{overrides_source}: joint {name!r} ends up with lower {low:g} above upper {high:g}")
        if speed <= 0:
            raise ValueError(f"{overrides_source}: joints.{name}.max_velocity must be positive, got {speed:g}")
        lower.append(low)
        upper.append(high)
        velocity.append(speed)
    return JointLimits(tuple(names), np.array(lower), np.array(upper), np.array(velocity))


def _limits_from_yaml_only(joints: Any, where: str) -> JointLimits:
    if joints is None:
        raise ValueError(
            f"{where}: needs `joints` (every governed joint with {', '.join(JOINT_KEYS)}), "
            "or a URDF (`urdf:` or the robot_description parameter)"
        )
    if not isinstance(joints, Mapping):
        raise ValueError(f"{where}: `joints` must be a mapping of joint name -> limits, got {joints!r}")
    if not joints:
        raise ValueError(f"{where}: `joints` is empty; the gate would govern no joint")
    names, lower, upper, velocity = [], [], [], []
    for name, entry in joints.items():
        if not isinstance(name, str):
            raise ValueError(f"{where}: joint names must be strings, got {name!r}")
        values = _check_override_entry(name, entry, where, complete=True)
        if values["lower"] > values["upper"]:
            raise ValueError(f"{where}: joints.{name}.lower {values['lower']:g} is above upper {values['upper']:g}")
        if values["max_velocity"] <= 0:
            raise ValueError(f"{where}: joints.{name}.max_velocity must be positive, got {values['max_velocity']:g}")
        names.append(name)
        lower.append(values["lower"])
        upper.append(values["upper"])
        velocity.append(values["max_velocity"])
    return JointLimits(tuple(names), np.array(lower), np.array(upper), np.array(velocity))


# --------------------------------------------------------------------------- the limits file


def load_limits(
    limits_file: str | os.PathLike[str], robot_description: str = "", urdf_file: str = ""
) -> tuple[JointLimits, float]:
    """Read a limits YAML (and its URDF, or `robot_description` URDF text, or the URDF file `urdf_file`:
    a path or package:// URI, see `resolve_urdf_file`) -> (limits, max_step).

    See the module docstring for the layout. Every problem is a ValueError (FileNotFoundError
    for a missing file) that says which file and which key.
    """
    if not limits_file:
        raise ValueError(
            "limits_file is required: the gate never runs without joint limits "
            "(it gives max_step; the joints come from it or from a URDF)"
        )
    file = Path(limits_file)
    if not file.is_file():
        raise FileNotFoundError(f"limits_file {limits_file} does not exist")
    where = str(file)
    content = load_strict_yaml(file)
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{where}: must be a YAML mapping with {', '.join(TOP_LEVEL_KEYS)}, got "
            f"{type(content).__name__} {content!r}"
        )
    unknown = [key for key in content if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
    if "max_step" not in content:
        raise ValueError(f"{where}: needs `max_step` (how far any chunk point may be from the measured state)")
    max_step = _number(content["max_step"], f"{where}: max_step")
    if max_step <= 0:
        raise ValueError(f"{where}: max_step must be positive, got {max_step:g}")

    urdf_path = content.get("urdf")
    description = robot_description if robot_description and robot_description.strip() else ""
    urdf_file = urdf_file.strip() if urdf_file else ""
    if urdf_file and ("urdf" in content or description):
        other = "`urdf:` in the limits file" if "urdf" in content else "robot_description"
        raise ValueError(f"{where}: urdf_file {urdf_file} is given and {other} too: give only one URDF")
    controlled = content.get("controlled_joints")
    if "controlled_joints" in content and not (isinstance(controlled, list) and controlled):
        raise ValueError(f"{where}: controlled_joints must be a non-empty list of joint names, got {controlled!r}")
    joints = content.get("joints")
    if "urdf" in content:
        if not isinstance(urdf_path, str) or not urdf_path.strip():
            raise ValueError(f"{where}: `urdf` must be a path to a URDF file, got {urdf_path!r}")
        if description:
            raise ValueError(f"{where} names a URDF ({urdf_path}) and robot_description is set too: give only one")
        try:
            path = resolve_urdf_file(urdf_path, relative_to=file.parent)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{where}: urdf {err}") from err
        urdf_text: str | bytes = path.read_bytes()  # bytes: the XML declaration's encoding applies
        source = f"URDF {path}"
    elif urdf_file:
        path = resolve_urdf_file(urdf_file)
        urdf_text, source = path.read_bytes(), f"URDF {path}"
    elif description:
        urdf_text, source = description, "robot_description"
    else:
        if "controlled_joints" in content:
            raise ValueError(
                f"{where}: controlled_joints selects URDF joints, but there is no URDF (`urdf:` or "
                "robot_description); without one the keys of `joints` are the governed joints"
            )
        return _limits_from_yaml_only(joints, where), max_step
    if joints is not None and not isinstance(joints, Mapping):
        raise ValueError(f"{where}: `joints` must be a mapping of joint name -> limits, got {joints!r}")
    limits = limits_from_urdf(urdf_text, controlled, joints or {}, source=source, overrides_source=where)
    return limits, max_step
