"""End to end: the sim_policy launch graph runs short closed-loop episodes."""
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory

from rla_wm_ros.closed_loop import ClosedLoopRunner
from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

pytestmark = pytest.mark.timeout(240)


def test_sim_policy_graph_runs_closed_loop_episodes(ros_domain, tmp_path):
    launch_file = Path(get_package_share_directory("rla_wm_ros")) / "launch" / "sim_policy.launch.xml"
    description = parse_launch_file(launch_file, overrides={"max_episode_steps": "20", "seed": "5"})
    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        rclpy.init(domain_id=ros_domain)
        runner = ClosedLoopRunner(description.args["command_topic"])
        try:
            runner.wait_until_flowing(120.0, alive=lambda: all(graph.alive().values()))
            results = [runner.run_episode(timeout=60.0) for _ in range(2)]
        except (TimeoutError, RuntimeError) as err:
            pytest.fail(f"{err}\n{graph.tail_logs(30)}")
        finally:
            runner.close()
            rclpy.try_shutdown()
        assert all(graph.alive().values()), graph.tail_logs(30)
        latency = runner.observer.latency.stage_seconds()
    for result in results:
        assert result.steps == 20
        assert result.commands > 5, "the gate forwarded too few commands for a closed loop"
        assert 0.0 <= result.coverage <= 1.0
        assert result.picture is not None and result.picture.ndim == 3
    assert results[1].episode == results[0].episode + 1
    camera_to_command = latency["camera_to_command"]
    assert camera_to_command.size > 10
    assert np.all(camera_to_command > 0), "a command arrived before its camera frame was taken"
