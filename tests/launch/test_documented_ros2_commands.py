"""The documented `ros2 launch` lines name installed launch files and declared arguments, and the
`ros2 service call` lines name services, with their types, of the graph the page's launch line starts."""

from __future__ import annotations

import os
import time

import yaml

from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

from documented_commands import COMMANDS, LAUNCH_SHARE, SOURCE_LAUNCH, Command, kind


def ros2_launch_commands() -> list[tuple[Command, str, dict[str, str]]]:
    """(command, launch file, overrides) of every `ros2 launch` line; '...' = the args of the
    previous line of that launch file on the same page."""
    found = []
    previous: dict[tuple[str, str], dict[str, str]] = {}
    for command in COMMANDS:
        if kind(command) != "ros2" or command.words[1] != "launch":
            continue
        package, launch_file, *rest = command.words[2:]
        assert package == "rla_wm_ros", command
        overrides = dict(previous.get((command.page, launch_file), {})) if "..." in rest else {}
        for word in rest:
            if word == "...":
                continue
            name, sep, value = word.partition(":=")
            assert sep and name, f"{command}: {word!r} is not NAME:=VALUE"
            overrides[name] = os.path.expandvars(value)
        previous[(command.page, launch_file)] = overrides
        found.append((command, launch_file, overrides))
    return found


def test_documented_ros2_launch_lines_name_installed_files_and_declared_args():
    launches = ros2_launch_commands()
    assert launches, "no page has a ros2 launch line"
    for command, launch_file, overrides in launches:
        assert (SOURCE_LAUNCH / launch_file).is_file(), f"{command}: no {launch_file} in the package"
        assert (LAUNCH_SHARE / launch_file).is_file(), f"{command}: {launch_file} is not installed"
        # Undeclared or missing required arguments are errors of the runner's parser.
        description = parse_launch_file(LAUNCH_SHARE / launch_file, overrides=overrides)
        for name, value in overrides.items():
            assert description.args[name] == value, (command, name)


def test_documented_ros2_service_calls_exist_on_the_launched_graph(ros_domain, ros_node, tmp_path):
    import importlib

    def set_message_fields(message, values: dict) -> None:  # rosidl_runtime_py is not installed here
        for field_name, value in values.items():
            assert field_name in message.get_fields_and_field_types(), f"no field {field_name!r} in {message}"
            if isinstance(value, dict):
                set_message_fields(getattr(message, field_name), value)
            else:
                setattr(message, field_name, value)  # the generated setter checks the type

    calls = [c for c in COMMANDS if kind(c) == "ros2" and c.words[1] == "service"]
    assert calls, "no page has a ros2 service line"
    launches = ros2_launch_commands()
    by_block: dict[int, list[Command]] = {}
    for command in calls:
        assert command.words[2] == "call", command
        type_name = command.words[4]
        assert command.words[3].startswith("/"), f"{command}: give the service's full name"
        package, kind_, service = type_name.split("/")
        assert kind_ == "srv", command
        srv = getattr(importlib.import_module(f"{package}.srv"), service)
        request = srv.Request()
        if len(command.words) > 5:
            set_message_fields(request, yaml.safe_load(command.words[5]))  # raises on unknown fields
        by_block.setdefault(command.block, []).append(command)

    for block, block_calls in by_block.items():
        (launch,) = [(c, f, o) for c, f, o in launches if c.block == block]
        _, launch_file, overrides = launch
        # The page's dataset_root is under $HOME: record into the test's folder instead.
        overrides = {
            **overrides,
            **({"dataset_root": str(tmp_path / "dataset")} if "dataset_root" in overrides else {}),
        }
        description = parse_launch_file(LAUNCH_SHARE / launch_file, overrides=overrides)
        with LaunchedGraph() as graph:
            graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / f"logs{block}")
            wanted = {(c.words[3], c.words[4]) for c in block_calls}
            seen: set = set()

            def all_served() -> bool:
                seen.clear()
                seen.update((n, t) for n, types in ros_node.get_service_names_and_types() for t in types)
                return wanted <= seen

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all_served():
                assert all(graph.alive().values()), graph.tail_logs(30)
                time.sleep(0.2)
            assert wanted <= seen, f"services of {launch_file} missing: {sorted(wanted - seen)}\n{graph.tail_logs(20)}"
