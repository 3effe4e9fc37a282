"""BackgroundSpin: nodes spun in a thread are destroyed only after that thread has ended."""

from __future__ import annotations

import threading

import pytest
import rclpy
from rclpy._rclpy_pybind11 import InvalidHandle
from rclpy.context import Context
from std_msgs.msg import Float32

from rla_wm_ros.background_spin import BackgroundSpin, SpinnerStuckError

from conftest import Inbox, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def context(ros_domain):
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    yield context
    context.try_shutdown()


def test_close_stops_the_thread_then_destroys_the_nodes_and_the_owned_context(context):
    node = rclpy.create_node("spun", context=context)
    inbox = Inbox()
    node.create_subscription(Float32, "numbers", inbox, 10)
    publisher = node.create_publisher(Float32, "numbers", 10)
    spin = BackgroundSpin(node, context=context, own_context=True)
    wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the subscription")
    publisher.publish(Float32(data=1.5))
    wait_for(lambda: inbox.snapshot(), 10, "the message, taken by the background thread")
    thread = spin._thread

    spin.close()
    assert not thread.is_alive()
    with pytest.raises(InvalidHandle, match="destruction was requested"):
        node.get_node_names()
    assert not context.ok()
    spin.close()  # idempotent


def test_a_blocked_callback_makes_close_refuse_to_destroy_the_node(context):
    node = rclpy.create_node("blocked", context=context)
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        release.wait(30)

    node.create_timer(0.01, block)
    spin = BackgroundSpin(node, context=context)
    assert entered.wait(10)
    with pytest.raises(SpinnerStuckError, match="did not end"):
        spin.close(timeout=0.5)
    assert node.get_name() == "blocked"  # still alive: destroying it now is what rclpy cannot take
    release.set()
    spin.close()
    assert context.ok()  # not owned: the caller shuts it down


def test_close_ends_an_idle_thread_whose_wake_up_was_lost(context):
    """rclpy 9.1's Executor.shutdown() destroys the executor's wake-up guard conditions while the spin
    thread may be building a wait set on them; that wait then has nothing to end it on a quiet node.
    They are taken away here as that race leaves them, before close() (no message, no timer)."""
    node = rclpy.create_node("quiet", context=context)
    spin = BackgroundSpin(node, context=context)
    executor = spin.executor
    guards = [executor._guard, executor._sigint_gc]
    executor._guard = executor._sigint_gc = None  # close()'s wake-up goes nowhere now
    try:
        spin.close(timeout=5)
        assert not spin._thread.is_alive()
    finally:
        for guard in guards:
            guard.destroy()
