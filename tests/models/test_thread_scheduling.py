"""keep_thread_scheduling: encoding an AV1 video as root leaves the calling thread as it was.

SVT-AV1 raises the encoding thread to SCHED_FIFO 99 when it runs as root (CI and Docker do); the
first test shows that this happens here, so the second one tests something."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rla_wm.recording.thread_scheduling import keep_thread_scheduling, thread_scheduling

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SVT-AV1 changes scheduling only as root")


def encode_av1(path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for level in range(0, 100, 20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_svt_av1_raises_the_encoding_thread_to_real_time_as_root(tmp_path):
    with keep_thread_scheduling():  # so the raised thread does not reach later tests
        encode_av1(tmp_path / "raw.mp4")
        assert thread_scheduling() == (os.SCHED_FIFO, 99)


def test_keep_thread_scheduling_puts_the_thread_back(tmp_path):
    before = thread_scheduling()
    with keep_thread_scheduling():
        encode_av1(tmp_path / "kept.mp4")
    assert thread_scheduling() == before
    assert (tmp_path / "kept.mp4").stat().st_size > 0
