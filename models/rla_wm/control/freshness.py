"""The newest samples of an input stream: whether the newest is still fresh on a steady clock, and a
bounded history of recent ones by stamp.

Nodes must not command from a joint state (or a gamepad message) that stopped coming: a sample
counts only while it is at most `timeout` seconds old. The clock is injectable so the rule is
testable without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def remember_newest(table: dict[K, T], stamp: K, value: T, size: int) -> None:
    """Store `value` under `stamp` and keep only the `size` most recently added stamps (a dict keeps
    insertion order; a stream's arrival order is its stamp order)."""
    table[stamp] = value
    while len(table) > size:
        del table[next(iter(table))]


class LatestSample(Generic[T]):
    """Keeps the newest value and when it arrived; `fresh()` gives it only within `timeout` s."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.clock = clock
        # One tuple, replaced whole: a reader on another thread never sees a value with another's time.
        self._sample: tuple[float, T] | None = None

    def update(self, value: T) -> None:
        self._sample = (self.clock(), value)

    def fresh(self) -> T | None:
        """The newest value if it arrived at most `timeout` s ago, else None."""
        sample = self._sample
        if sample is None or self.clock() - sample[0] > self.timeout:
            return None
        return sample[1]

    def age(self) -> float:
        """Seconds since the newest value arrived (inf before the first one)."""
        sample = self._sample
        return float("inf") if sample is None else self.clock() - sample[0]


class StampThrottle:
    """Admits at most `max_rate` samples per second of their own stamps (0: every sample).

    Stamps, not arrival times, so it holds under simulated time too; a stamp older than the last
    admitted one (a restarted source, a rewound clock) is admitted and starts over.
    """

    def __init__(self, max_rate: float) -> None:
        if not max_rate >= 0.0:
            raise ValueError(f"max_rate must be >= 0, got {max_rate}")
        # A 1 % margin: frames at exactly the limit's period are not dropped for stamp jitter.
        self.period = 0.99 / max_rate if max_rate > 0 else 0.0
        self.last: float | None = None
        self.skipped = 0

    def admit(self, stamp_seconds: float) -> bool:
        if self.last is not None and 0.0 <= stamp_seconds - self.last < self.period:
            self.skipped += 1
            return False
        self.last = stamp_seconds
        return True
