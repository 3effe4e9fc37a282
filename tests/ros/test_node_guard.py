"""NodeGuard: an exception in any callback is a counted, logged rejection, and the node keeps spinning."""

from __future__ import annotations

import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_srvs.srv import Trigger

from rla_wm_ros.node_guard import Health, NodeGuard, Rejected, rejection_counts

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(ros_domain):
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = rclpy.create_node("guarded", context=context)
    yield node
    node.destroy_node()
    context.try_shutdown()


class Logs:
    """Stands in for the node's logger: records what the guard logs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))


def guard_with_logs(node, monkeypatch, **kwargs) -> tuple[NodeGuard, Logs]:
    logs = Logs()
    monkeypatch.setattr(node, "get_logger", lambda: logs)
    return NodeGuard(node, "test", period=0, **kwargs), logs


def test_exceptions_and_rejections_are_counted_by_callback_and_reason(node, monkeypatch):
    guard, logs = guard_with_logs(node, monkeypatch)

    def on_msg(msg):
        if msg == "bad":
            raise Rejected("bad_input", "it was bad")
        if msg == "crash":
            raise KeyError("boom")
        return "fine"

    wrapped = guard.wrap(on_msg)
    assert wrapped("good") == "fine"
    assert wrapped("bad") is None and wrapped("bad") is None
    assert wrapped("crash") is None
    assert guard.counts() == {"on_msg/KeyError": 1, "on_msg/bad_input": 2}
    assert guard.total == 3
    # A refusal is a warning with its detail; an unexpected exception an error that says where it came from.
    assert logs.lines[0] == ("warning", "rejected on_msg: bad_input: it was bad")
    level, text = logs.lines[-1]
    assert level == "error" and "KeyError" in text and "boom" in text and "test_node_guard.py" in text
    # The wrapper keeps the callback's name and signature (rclpy inspects it).
    assert wrapped.__name__ == "on_msg"
    guard.reject("elsewhere", "counted_directly")
    assert guard.counts()["elsewhere/counted_directly"] == 1


def test_logging_is_throttled_per_callback_and_reason(node, monkeypatch):
    guard, logs = guard_with_logs(node, monkeypatch, log_period=3600.0)
    for _ in range(50):
        guard.reject("a", "x")
    guard.reject("a", "y")
    guard.reject("b", "x")
    assert [text for _, text in logs.lines] == ["rejected a: x", "rejected a: y", "rejected b: x"]
    assert guard.counts() == {"a/x": 50, "a/y": 1, "b/x": 1}


def test_a_failing_service_answers_success_false(node, monkeypatch):
    guard, _ = guard_with_logs(node, monkeypatch)

    def on_trigger(request, response):
        raise RuntimeError("disk full")

    def on_refuse(request, response):
        raise Rejected("not_now", "busy")

    response = guard.wrap(on_trigger)(Trigger.Request(), Trigger.Response(success=True))
    assert isinstance(response, Trigger.Response)
    assert response.success is False and "disk full" in response.message
    response = guard.wrap(on_refuse)(Trigger.Request(), Trigger.Response())
    assert response.success is False and response.message == "not_now: busy"


def test_on_error_supplies_the_return_value_and_coroutines_stay_coroutines(node, monkeypatch):
    import asyncio
    import inspect

    guard, _ = guard_with_logs(node, monkeypatch)

    def goal_callback(goal):
        raise ValueError("no")

    assert guard.wrap(goal_callback, on_error=lambda error, goal: ("rejected", goal))(7) == ("rejected", 7)

    async def on_stop(request, response):
        await asyncio.sleep(0)
        raise ValueError("mid-save")

    wrapped = guard.wrap(on_stop, name="stop")
    assert inspect.iscoroutinefunction(wrapped)  # rclpy awaits it only if it is one
    response = asyncio.run(wrapped(Trigger.Request(), Trigger.Response(success=True)))
    assert response.success is False and guard.counts() == {"goal_callback/ValueError": 1, "stop/ValueError": 1}


def test_the_node_survives_a_raising_timer_that_would_otherwise_end_spin(node):
    guard = NodeGuard(node, "test", period=0)
    calls: list[int] = []

    def tick():
        calls.append(1)
        raise ZeroDivisionError("tick failed")

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        timer = node.create_timer(0.01, guard.wrap(tick))
        deadline = time.monotonic() + 10
        while len(calls) < 5:
            assert time.monotonic() < deadline, "the guarded timer stopped firing"
            executor.spin_once(timeout_sec=0.1)  # raises if a callback's exception escaped
        assert guard.counts()["tick/ZeroDivisionError"] >= 5
        node.destroy_timer(timer)

        # Without the guard the same callback ends the spin: that is what the guard is for.
        node.create_timer(0.01, tick)
        with pytest.raises(ZeroDivisionError):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()


def test_diagnostics_carry_the_nodes_health_and_the_counts(node):
    guard = NodeGuard(node, "test", period=0, hardware_id="hw", health=lambda: Health("all good", values={"frames": 3}))
    status = guard.status()
    assert (status.name, status.hardware_id, status.level, status.message) == (
        "guarded: test",
        "hw",
        DiagnosticStatus.OK,
        "all good",
    )
    values = {kv.key: kv.value for kv in status.values}
    assert values["frames"] == "3" and values["rejected_inputs"] == "0" and rejection_counts(status) == {}

    guard.wrap(lambda msg: (_ for _ in ()).throw(Rejected("grid_mismatch", "8x8x192")), name="act")(None)
    guard.wrap(lambda msg: (_ for _ in ()).throw(Rejected("grid_mismatch", "1x1x1")), name="act")(None)
    status = guard.status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and "grid_mismatch" in status.message  # a recent rejection
    assert values["rejected_inputs"] == "2" and rejection_counts(status) == {"act/grid_mismatch": 2}
    assert values["last_rejected_input"] == "act: grid_mismatch: 1x1x1"
    # A node's own value of the same name (the gate's "rejected" commands) is never overwritten.
    guard.health = lambda: Health("holding", values={"rejected": 7, "rejected_inputs": "mine"})
    values = {kv.key: kv.value for kv in guard.status().values}
    assert values["rejected"] == "7" and values["rejected_inputs"] == "mine"

    # A health worse than WARN is kept; a failing health callback does not take the timer down.
    guard.health = lambda: Health("broken", level=DiagnosticStatus.ERROR)
    assert guard.status().level == DiagnosticStatus.ERROR
    published = []
    guard.diagnostics_pub = type("Pub", (), {"publish": lambda self, msg: published.append(msg)})()
    guard.publish_diagnostics()
    assert isinstance(published[0], DiagnosticArray) and published[0].status[0].message == "broken"
    guard.health = lambda: 1 / 0
    guard.wrap(guard.publish_diagnostics, name="diagnostics")()
    assert guard.counts()["diagnostics/ZeroDivisionError"] == 1
