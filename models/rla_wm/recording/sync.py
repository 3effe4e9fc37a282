"""Stream synchronisation: asynchronous stamped streams -> one dataset frame per tick.

Cameras, joint states and commands arrive asynchronously, each with its own header stamp
(float seconds, one clock for all streams). The synchronizer keeps the recent samples of
every registered stream and assembles one dataset frame per *tick*, ticks being
``t0 + k / fps``. For tick t every stream contributes the sample whose stamp is nearest to
t, provided it lies within the stream's tolerance (default: half a frame period). A
required stream without such a sample makes the tick *incomplete*: the result names the
missing streams and why, and carries no values — nothing is ever zero-filled or repeated.

When is tick t decided? As soon as the newest sample of every required stream is at or
after t (samples of one stream arrive in stamp order, so no later sample can be nearer),
or, if some stream lags or stopped, once t is older than ``now - latency_budget``; then
whatever is within tolerance is used and the rest is reported missing ("stale" when the
stream's newest sample is too old). Each tick is decided exactly once, in order, by
`poll()`; `frame_at(t)` answers the same question for an arbitrary time without
touching the tick state.

Typical use::

    sync = StreamSynchronizer(fps=10)
    sync.add_stream("observation.images.front", "camera")
    sync.add_stream("observation.state", "state")
    sync.add_stream("action", "action")
    sync.start()                                # t0 = first instant every stream has data
    ...                                         # in the callbacks:
    sync.push("observation.state", msg_stamp, np.asarray(msg.position, np.float32))
    ...                                         # in a timer:
    for result in sync.poll():
        if result.complete:
            writer.add_frame(result.to_frame())     # adds "capture_stamp"
        else:
            log.warn(f"skipped tick {result.tick}: {result.reasons}")
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rla_wm.recording.layout import STAMP_KEY

STREAM_KINDS = ("camera", "state", "action", "other")
_EPS = 1e-9


@dataclass(frozen=True)
class StreamSpec:
    """A registered stream. `tolerance` (seconds) overrides the synchronizer's default."""

    name: str
    kind: str
    required: bool = True
    tolerance: float | None = None


@dataclass(frozen=True)
class SyncResult:
    """The outcome of synchronising the streams at time `t`.

    complete: every required stream had a sample within tolerance of `t`. Then `values`
        maps stream name -> value (optional streams only when they matched) and `stamps`
        the real header stamps of the samples used. Otherwise `values` and `stamps` are
        empty and `missing` / `reasons` say which required streams failed and why:
        "no_data" (nothing buffered), "stale" (newest sample older than t - tolerance),
        "ahead" (oldest buffered sample newer than t + tolerance) or "gap" (samples on
        both sides of t, none within tolerance).
    tick: the tick number since `start()`, None for `frame_at()` queries.
    reference: the stream whose stamp `to_frame` stores (the reference camera).
    held: streams whose value is an older real sample held past its tolerance (only in
        results made by `StreamSynchronizer.hold_missing`; `stamps` has their real stamps).
    """

    t: float
    tick: int | None
    values: Mapping[str, Any]
    stamps: Mapping[str, float]
    missing: tuple[str, ...]
    reasons: Mapping[str, str]
    reference: str | None
    missing_optional: tuple[str, ...] = ()
    held: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def reference_stamp(self) -> float | None:
        return self.stamps.get(self.reference) if self.reference is not None else None

    def to_frame(self, stamp_key: str | None = STAMP_KEY) -> dict[str, Any]:
        """The frame for `EpisodeWriter.add_frame`: the values plus the reference stamp as float64 (1,)."""
        if not self.complete:
            raise ValueError(f"tick at t={self.t:.6f} is incomplete (missing {list(self.missing)}); it has no frame")
        frame = dict(self.values)
        if stamp_key is not None:
            if self.reference is None or self.reference not in self.stamps:
                raise ValueError("no reference stream to take the frame stamp from")
            frame[stamp_key] = np.array([self.stamps[self.reference]], dtype=np.float64)
        return frame


class _Buffer:
    """Recent samples of one stream, sorted by stamp, at most `capacity` of them."""

    __slots__ = ("stamps", "values", "seqs", "capacity", "pushed", "out_of_order", "evicted", "late")

    def __init__(self, capacity: int) -> None:
        self.stamps: list[float] = []
        self.values: list[Any] = []
        self.seqs: list[int] = []
        self.capacity = capacity
        self.pushed = 0
        self.out_of_order = 0
        self.evicted = 0
        self.late = 0

    def insert(self, stamp: float, value: Any, seq: int) -> None:
        self.pushed += 1
        if self.stamps and stamp < self.stamps[-1]:
            self.out_of_order += 1
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:  # re-sent sample: the newer value wins
            self.values[i] = value
            self.seqs[i] = seq
            return
        if len(self.stamps) >= self.capacity and i == 0:
            self.evicted += 1  # older than everything kept in a full buffer
            return
        self.stamps.insert(i, stamp)
        self.values.insert(i, value)
        self.seqs.insert(i, seq)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.values[0], self.seqs[0]
            self.evicted += 1

    def nearest(self, t: float) -> int | None:
        """Index of the sample nearest to t (the earlier one on a tie)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, t)
        if i == 0:
            return 0
        if i == len(self.stamps):
            return i - 1
        return i - 1 if t - self.stamps[i - 1] <= self.stamps[i] - t else i

    @property
    def newest(self) -> float | None:
        return self.stamps[-1] if self.stamps else None


class StreamSynchronizer:
    """Assemble dataset frames at `fps` from asynchronous, stamped streams (see the module doc).

    fps: the dataset frame rate; ticks are t0 + k / fps.
    tolerance: the largest |sample stamp - tick| accepted (seconds); default half a period.
    latency_budget: how long (seconds, in stamp time) a tick waits for lagging streams
        before it is decided with what is there; "now" is the newest stamp pushed to any
        stream unless `poll(now)` is given a clock.
    buffer_size: samples kept per stream; must cover rate x (latency_budget + tolerance).
    reference: the stream whose stamp frames record; default the first camera (else the
        first required stream). It must be a required stream.

    Thread-safe: `push` may be called from several callback threads.
    """

    def __init__(
        self,
        fps: float,
        *,
        tolerance: float | None = None,
        latency_budget: float = 0.25,
        buffer_size: int = 256,
        reference: str | None = None,
    ) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.tolerance = 0.5 * self.period if tolerance is None else float(tolerance)
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        if not latency_budget >= 0:
            raise ValueError(f"latency_budget must be >= 0, got {latency_budget}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.latency_budget = float(latency_budget)
        self.buffer_size = int(buffer_size)
        self._reference = reference
        self._specs: dict[str, StreamSpec] = {}
        self._buffers: dict[str, _Buffer] = {}
        self._lock = threading.RLock()
        self._seq = 0
        self._newest_any: float | None = None
        self._started = False
        self._start_seq = 0
        self._t0: float | None = None
        self._next_k = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._missing_counts: collections.Counter[str] = collections.Counter()

    # -- configuration

    def add_stream(self, name: str, kind: str, *, required: bool = True, tolerance: float | None = None) -> StreamSpec:
        """Register a stream. kind: "camera", "state", "action" or "other" (metadata; cameras
        are candidates for the reference). Optional streams never hold back or spoil a tick:
        they are in `values` when they have a sample within tolerance, else listed in
        `missing_optional`."""
        if kind not in STREAM_KINDS:
            raise ValueError(f"unknown stream kind {kind!r}; use one of {STREAM_KINDS}")
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        with self._lock:
            if name in self._specs:
                raise ValueError(f"stream {name!r} is already registered")
            spec = StreamSpec(name, kind, bool(required), None if tolerance is None else float(tolerance))
            self._specs[name] = spec
            self._buffers[name] = _Buffer(self.buffer_size)
            return spec

    @property
    def streams(self) -> dict[str, StreamSpec]:
        with self._lock:
            return dict(self._specs)

    @property
    def reference(self) -> str | None:
        """The stream whose stamp frames record."""
        with self._lock:
            if self._reference is not None:
                return self._reference
            cameras = [s.name for s in self._specs.values() if s.kind == "camera" and s.required]
            if cameras:
                return cameras[0]
            required = [s.name for s in self._specs.values() if s.required]
            return required[0] if required else None

    def _check_config(self) -> None:
        if not any(s.required for s in self._specs.values()):
            raise RuntimeError("register at least one required stream before synchronising")
        ref = self.reference
        if ref is not None and (ref not in self._specs or not self._specs[ref].required):
            raise RuntimeError(f"the reference stream {ref!r} must be a registered, required stream")

    # -- input

    def push(self, name: str, stamp: float, value: Any) -> None:
        """Store one sample of stream `name` taken at `stamp` (seconds). Out-of-order samples
        are inserted in place; the oldest sample goes when the buffer is full."""
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp of {name!r} must be finite, got {stamp}")
        with self._lock:
            buffer = self._buffers.get(name)
            if buffer is None:
                raise KeyError(f"unknown stream {name!r}; registered: {list(self._specs)}")
            self._seq += 1
            if self._started and self._t0 is not None and self._next_k > 0:
                if stamp < self._t0 + (self._next_k - 1) * self.period:
                    buffer.late += 1  # its tick is already decided
            buffer.insert(stamp, value, self._seq)
            if self._newest_any is None or stamp > self._newest_any:
                self._newest_any = stamp

    # -- queries

    def _tolerance(self, spec: StreamSpec) -> float:
        return self.tolerance if spec.tolerance is None else spec.tolerance

    def _decide(self, t: float, tick: int | None) -> SyncResult:
        values: dict[str, Any] = {}
        stamps: dict[str, float] = {}
        missing: list[str] = []
        reasons: dict[str, str] = {}
        missing_optional: list[str] = []
        for name, spec in self._specs.items():
            buffer = self._buffers[name]
            tol = self._tolerance(spec)
            i = buffer.nearest(t)
            if i is not None and abs(buffer.stamps[i] - t) <= tol + _EPS:
                values[name] = buffer.values[i]
                stamps[name] = buffer.stamps[i]
                continue
            if not spec.required:
                missing_optional.append(name)
                continue
            missing.append(name)
            if i is None:
                reasons[name] = "no_data"
            elif buffer.stamps[-1] < t:
                reasons[name] = "stale"
            elif buffer.stamps[0] > t:
                reasons[name] = "ahead"
            else:
                reasons[name] = "gap"
        if missing:
            values, stamps = {}, {}
        return SyncResult(
            t=t,
            tick=tick,
            values=values,
            stamps=stamps,
            missing=tuple(missing),
            reasons=reasons,
            reference=self.reference,
            missing_optional=tuple(missing_optional),
        )

    def hold_missing(self, result: SyncResult) -> SyncResult | None:
        """Complete an incomplete `result` by holding, for every missing required stream, its
        newest sample at or before the tick (zero-order hold of a real, older sample: never
        a zero or an invented value). For a "keep recording but flag it" policy; the caller
        must flag such frames. The held streams are listed in `held`, their real (old)
        stamps in `stamps`.

        The tick is decided again from the buffers as they are now, so a sample that has
        arrived late since `poll()` is used normally. Returns None when a missing stream has
        no sample at or before the tick ("no_data", or only newer samples); a complete
        `result` is returned unchanged.
        """
        if result.complete:
            return result
        with self._lock:
            t = result.t
            values: dict[str, Any] = {}
            stamps: dict[str, float] = {}
            held: list[str] = []
            missing_optional: list[str] = []
            for name, spec in self._specs.items():
                buffer = self._buffers[name]
                i = buffer.nearest(t)
                if i is not None and abs(buffer.stamps[i] - t) <= self._tolerance(spec) + _EPS:
                    values[name] = buffer.values[i]
                    stamps[name] = buffer.stamps[i]
                    continue
                if not spec.required:
                    missing_optional.append(name)
                    continue
                j = bisect.bisect_right(buffer.stamps, t + _EPS) - 1
                if j < 0:
                    return None
                values[name] = buffer.values[j]
                stamps[name] = buffer.stamps[j]
                held.append(name)
            return SyncResult(
                t=t,
                tick=result.tick,
                values=values,
                stamps=stamps,
                missing=(),
                reasons={},
                reference=self.reference,
                missing_optional=tuple(missing_optional),
                held=tuple(held),
            )

    def frame_at(self, t: float) -> SyncResult:
        """Synchronise at an arbitrary time `t` with what is buffered now (no tick state changes)."""
        with self._lock:
            self._check_config()
            return self._decide(float(t), None)

    # -- ticks

    def start(self, t0: float | None = None) -> None:
        """Begin producing ticks t0 + k / fps (k = 0, 1, ...).

        With t0=None the first tick is the first instant at which every required stream
        has delivered a sample pushed after this call: the max over required streams of
        their first new stamp. Samples already buffered stay usable for matching.
        """
        with self._lock:
            self._check_config()
            self._started = True
            self._start_seq = self._seq
            self._t0 = None if t0 is None else float(t0)
            self._next_k = 0

    def stop(self) -> None:
        """Stop producing ticks (buffers are kept)."""
        with self._lock:
            self._started = False
            self._t0 = None
            self._next_k = 0

    @property
    def t0(self) -> float | None:
        """The first tick's time; None before `start()` or until every required stream delivered."""
        with self._lock:
            return self._resolve_t0() if self._started else None

    def _resolve_t0(self) -> float | None:
        if self._t0 is not None:
            return self._t0
        firsts = []
        for name, spec in self._specs.items():
            if not spec.required:
                continue
            buffer = self._buffers[name]
            fresh = [s for s, q in zip(buffer.stamps, buffer.seqs) if q > self._start_seq]
            if not fresh:
                return None
            firsts.append(min(fresh))
        self._t0 = max(firsts)
        return self._t0

    def next_tick(self) -> float | None:
        """Time of the next undecided tick; None before `start()` or while t0 is not known yet."""
        with self._lock:
            if not self._started:
                return None
            t0 = self._resolve_t0()
            return None if t0 is None else t0 + self._next_k * self.period

    def _ready(self, t: float, now: float | None) -> bool:
        if all(
            (newest := self._buffers[name].newest) is not None and newest >= t - _EPS
            for name, spec in self._specs.items()
            if spec.required
        ):
            return True
        return now is not None and t < now - self.latency_budget

    def poll(self, now: float | None = None) -> list[SyncResult]:
        """Decide every tick that can be decided now, in order, each exactly once.

        now: the current time in stamp time (e.g. the node clock); default the newest
            stamp pushed to any stream, which keeps replays and tests deterministic.
        Returns complete and incomplete results alike; skip the incomplete ones.
        """
        with self._lock:
            if not self._started:
                return []
            self._check_config()
            t0 = self._resolve_t0()
            if t0 is None:
                return []
            clock = self._newest_any if now is None else float(now)
            results = []
            while True:
                t = t0 + self._next_k * self.period
                if not self._ready(t, clock):
                    break
                result = self._decide(t, self._next_k)
                self._next_k += 1
                self._counts["ticks"] += 1
                self._counts["complete" if result.complete else "skipped"] += 1
                for name in result.missing:
                    self._missing_counts[name] += 1
                results.append(result)
            return results

    def stats(self) -> dict[str, Any]:
        """Counters: ticks decided / complete / skipped, and per stream samples pushed,
        out-of-order, late (its tick was already decided), evicted and ticks missed."""
        with self._lock:
            return {
                "ticks": self._counts["ticks"],
                "complete": self._counts["complete"],
                "skipped": self._counts["skipped"],
                "t0": self._t0,
                "next_tick": None if self._t0 is None or not self._started else self._t0 + self._next_k * self.period,
                "streams": {
                    name: {
                        "kind": spec.kind,
                        "required": spec.required,
                        "pushed": self._buffers[name].pushed,
                        "buffered": len(self._buffers[name].stamps),
                        "newest": self._buffers[name].newest,
                        "out_of_order": self._buffers[name].out_of_order,
                        "late": self._buffers[name].late,
                        "evicted": self._buffers[name].evicted,
                        "missed_ticks": self._missing_counts[name],
                    }
                    for name, spec in self._specs.items()
                },
            }


def iter_complete_frames(results: Iterable[SyncResult], stamp_key: str | None = STAMP_KEY) -> Iterable[dict[str, Any]]:
    """The frames of the complete results (incomplete ticks skipped)."""
    for result in results:
        if result.complete:
            yield result.to_frame(stamp_key)
