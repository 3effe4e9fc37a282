"""No node dies on a message: guarded callbacks, counted rejections, one /diagnostics status per node.

rclpy re-raises an exception from any callback out of `executor.spin()`, which ends the
process. A node therefore wraps every subscription, timer, service and action callback:

    self.guard = NodeGuard(self, "feature encoder", health=self.health)   # also publishes /diagnostics
    self.create_subscription(Image, "camera/image_raw", self.guard.wrap(self.on_image), qos)
    self.create_service(Trigger, "~/reset", self.guard.wrap(self.on_reset))
    self.create_timer(0.1, self.guard.wrap(self.on_tick))

and refuses bad input by raising `Rejected` with a short, fixed reason:

    def on_image(self, msg):
        if msg.width == 0:
            raise Rejected("empty_image", f"{msg.width}x{msg.height}")

A `Rejected`, or any other exception (reason: its type name, e.g. "ValueError"), is counted
under (callback name, reason), logged as a warning (an unexpected exception as an error, with
where it was raised), at most once per `log_period` per key, and the callback returns:

- a service callback returns its response with `success = False` and the reason in `message`
  (where the response type has those fields; otherwise the default response);
- `on_error(error, *args)`, when given to `wrap`, supplies the return value instead (an action
  goal callback returns `GoalResponse.REJECT`, an execute callback its failed Result);
- anything else returns None.

Counts go out on `/diagnostics` (diagnostic_msgs/DiagnosticArray, one DiagnosticStatus named
"<node>: <title>") once per `period` on a steady clock, next to the node's own values:

    rejected_inputs               total
    rejected/<callback>/<reason>  per key, e.g. rejected/act/grid_mismatch
    last_rejected_input           "<callback>: <reason>: <detail>"

(named apart from a node's own values such as the safety gate's "rejected" / "last_rejection",
which count vetted commands it held; a health value of the same name wins).

The status is WARN while a rejection is recent (`warn_for` seconds), unless the node's own
level is worse.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class Rejected(Exception):
    """Raised in a guarded callback to refuse its input: counted under `reason` (short, fixed
    text such as "grid_mismatch"; it becomes part of a diagnostics key), logged with `detail`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Health:
    """A node's own part of its diagnostics status."""

    message: str = "ok"
    level: bytes = OK
    values: dict[str, Any] = field(default_factory=dict)


def _level_rank(level: bytes | int) -> int:
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def _is_service_response(value: Any) -> bool:
    return type(value).__name__.endswith("_Response") and hasattr(value, "get_fields_and_field_types")


class NodeGuard:
    def __init__(
        self,
        node: Node,
        title: str,
        health: Callable[[], Health] | None = None,
        hardware_id: str = "rla_wm_ros",
        period: float = 1.0,
        log_period: float = 5.0,
        warn_for: float = 10.0,
    ) -> None:
        """`health` gives the node's own message, level and values for each diagnostics message;
        `period` 0 publishes no diagnostics (call `publish_diagnostics` yourself)."""
        self.node = node
        self.title = title
        self.health = health
        self.hardware_id = hardware_id
        self.log_period = log_period
        self.warn_for = warn_for
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last log time, count then)
        self._last: tuple[float, str] | None = None  # (monotonic time, text) of the newest rejection
        self.diagnostics_pub = None
        if period > 0:
            self.diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
            # Steady clock: under use_sim_time the ROS clock stands still until /clock comes, and a
            # node must still say why it refuses input then.
            node.create_timer(
                period,
                self.wrap(self.publish_diagnostics, name="diagnostics"),
                clock=Clock(clock_type=ClockType.STEADY_TIME),
            )

    # ------------------------------------------------------------------ counting

    def reject(self, callback: str, reason: str, detail: str = "", error: BaseException | None = None) -> None:
        """Count one rejection of `callback`'s input and log it (throttled per callback and reason)."""
        key = (callback, reason)
        now = time.monotonic()
        text = f"{callback}: {reason}" + (f": {detail}" if detail else "")
        with self._lock:
            self._counts[key] += 1
            count = self._counts[key]
            self._last = (now, text)
            last_log, count_then = self._logged.get(key, (-float("inf"), 0))
            due = now - last_log >= self.log_period
            if due:
                self._logged[key] = (now, count)
        if not due:
            return
        skipped = count - count_then - 1
        suffix = f" ({skipped} more since the last report, {count} in all)" if skipped > 0 else ""
        try:
            logger = self.node.get_logger()
            if error is None or isinstance(error, Rejected):
                logger.warning(f"rejected {text}{suffix}")
            else:
                frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
                where = f" (raised at {frame.filename}:{frame.lineno} in {frame.name})" if frame else ""
                logger.error(
                    f"callback {callback} failed, input rejected: {type(error).__name__}: {error}{where}{suffix}"
                )
        except Exception:  # noqa: BLE001 — logging during shutdown must not take the node down
            pass

    def counts(self) -> dict[str, int]:
        """{"<callback>/<reason>": count}."""
        with self._lock:
            return {f"{callback}/{reason}": n for (callback, reason), n in sorted(self._counts.items())}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    # ------------------------------------------------------------------ wrapping

    def wrap(self, callback: Callable, name: str | None = None, on_error: Callable[..., Any] | None = None) -> Callable:
        """`callback` such that an exception in it is a counted rejection, never a dead node.

        Works for subscription (msg [, info]), timer, service (request, response), guard
        condition and action callbacks, plain or `async def`; the wrapper keeps the callback's
        signature (rclpy inspects it). `name` (default: the function's name) keys the counts.
        """
        label = name or getattr(callback, "__name__", None) or type(callback).__name__

        def failed(error: Exception, args: tuple) -> Any:
            if isinstance(error, Rejected):
                self.reject(label, error.reason, error.detail, error)
            else:
                self.reject(label, type(error).__name__, str(error), error)
            if on_error is not None:
                try:
                    return on_error(error, *args)
                except Exception as inner:  # noqa: BLE001
                    self.reject(label, f"on_error_{type(inner).__name__}", str(inner), inner)
                    return None
            if args and _is_service_response(args[-1]):
                response = args[-1]
                if hasattr(response, "success"):
                    response.success = False
                if hasattr(response, "message"):
                    response.message = f"rejected: {error}" if not isinstance(error, Rejected) else str(error)
                return response
            return None

        if inspect.iscoroutinefunction(callback):

            @functools.wraps(callback)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await callback(*args, **kwargs)
                except ExternalShutdownException:
                    raise
                except Exception as error:  # noqa: BLE001 — the point of the guard
                    return failed(error, args)

            return guarded_async

        @functools.wraps(callback)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except ExternalShutdownException:
                raise
            except Exception as error:  # noqa: BLE001 — the point of the guard
                return failed(error, args)

        return guarded

    # ------------------------------------------------------------------ diagnostics

    def status(self) -> DiagnosticStatus:
        """The node's health plus the rejection counts, as one DiagnosticStatus."""
        health = self.health() if self.health is not None else Health()
        status = DiagnosticStatus(name=f"{self.node.get_name()}: {self.title}", hardware_id=self.hardware_id)
        level, message = health.level, health.message
        counts = self.counts()
        with self._lock:
            last = self._last
        if last is not None and time.monotonic() - last[0] <= self.warn_for and _level_rank(level) < _level_rank(WARN):
            level = WARN
            message = f"{message}; rejecting input ({last[1]})"
        status.level, status.message = level, message
        values = {key: str(value) for key, value in health.values.items()}
        guard_values = {
            "rejected_inputs": str(sum(counts.values())),
            **{f"rejected/{key}": str(n) for key, n in counts.items()},
            "last_rejected_input": last[1] if last else "",
        }
        for key, value in guard_values.items():
            values.setdefault(key, value)
        status.values = [KeyValue(key=key, value=value) for key, value in values.items()]
        return status

    def publish_diagnostics(self) -> None:
        if self.diagnostics_pub is None:
            self.diagnostics_pub = self.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        array = DiagnosticArray(status=[self.status()])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)


def rejection_counts(status: DiagnosticStatus) -> dict[str, int]:
    """{"<callback>/<reason>": count} from a status a NodeGuard published (for tests and tools)."""
    return {kv.key[len("rejected/") :]: int(kv.value) for kv in status.values if kv.key.startswith("rejected/")}
