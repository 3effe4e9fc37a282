"""LeRobot dataset recorder: cameras, joint state and (optionally) commands -> LeRobot v3 episodes.

Thin: messages are converted here into plain values with float header stamps and pushed into
`rla_wm.recording.RecordingSession`, which owns the recorder's logic (feature schema, episode
counters, stale streams, the clock model, start/stop/discard). It drives
`rla_wm.recording.StreamSynchronizer`, which assembles one frame per tick at the dataset fps,
and `rla_wm.recording.EpisodeWriter`, which writes them on its worker thread (encoding,
parquet, crash-safe commits, repair of a dataset left by a killed recorder).

Interface (fixed; a collection script depends on it):
  services  ~/start_episode (rla_wm_msgs/StartEpisode), ~/stop_episode (Trigger: saves),
            ~/discard_episode (Trigger)
  topic     ~/status (rla_wm_msgs/RecorderStatus), at `status_rate` and on every state change
  inputs    `camera_topics` (Image, or CompressedImage with `compressed`), `state_topic`
            (JointState), `action_topic` (JointTrajectory or JointState; empty = action-free),
            `environment_state_topic` (rla_wm_msgs/FeatureMap -> observation.environment_state;
            empty = none)

Threads: one executor thread runs every callback, and none of them blocks: subscriptions
only convert and push into the session, a 10 Hz pump hands complete frames to the
writer's queue, and `~/stop_episode` is a coroutine that awaits the writer's commit while
frames and status keep flowing. (rclpy's MultiThreadedExecutor cost 3x the CPU here, and
starved of CPU it delivered samples late, which costs frames.)

Every callback is guarded (`rla_wm_ros.node_guard`): an unusable sample, or an exception in any
callback, is a logged, counted rejection on /diagnostics, never a dead recorder; a failing
service answers success=false.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import signal
import threading
from typing import Any

import rclpy.logging
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.settings import setting_specs
from rla_wm.recording.session import Answer, Invalid, RecordingSession
from rla_wm.recording.settings import RecorderSettings
from rla_wm_msgs.msg import FeatureMap, RecorderStatus
from rla_wm_msgs.srv import StartEpisode
from rla_wm_ros.conversions import MessageShapeError, msg_to_features, stamp_to_seconds
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import Health, NodeGuard
from rla_wm_ros.params import declare
from rla_wm_ros.qos import CAMERA_INPUT_QOS, JOINT_INPUT_QOS


class RecorderNode(Node):
    # Set when the dataset was closed after the context had shut down (SIGINT / SIGTERM), see main().
    closed_after_shutdown = False

    def __init__(self) -> None:
        super().__init__("recorder")
        settings = RecorderSettings(**{spec.name: declare(self, *spec) for spec in setting_specs(RecorderSettings)})
        self.config = config = settings.config()
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)
        # Opens the dataset: resumes and repairs an existing one; fails fast on a mismatch.
        self.session = RecordingSession(
            config,
            clock=self.now_seconds,
            log=self.get_logger(),
            on_change=self.publish_status,
            on_invalid=lambda key, reason: self.guard.reject(key, "unusable_sample", reason),  # logged, on /diagnostics
        )

        # All callbacks run on the executor thread, and shutdown after it stopped: no locks.
        # ~/stop_episode awaits the commit; in the node's default (mutually exclusive) group it
        # would hold back every subscription and timer until then, so it gets its own group,
        # as does the guard condition that wakes it when a save completes on the writer's thread.
        saving_group = ReentrantCallbackGroup()
        self.guard = NodeGuard(self, "dataset recorder", health=self.health)  # /diagnostics at 1 Hz (steady)
        guard = self.guard.wrap
        self._wake = self.create_guard_condition(guard(lambda: None, name="wake"), callback_group=saving_group)
        image_type = CompressedImage if config.compressed else Image
        for key, topic in zip(config.camera_keys, config.camera_topics):
            self.create_subscription(
                image_type,
                topic,
                guard(lambda msg, key=key: self.on_image(key, msg), name="on_image"),
                CAMERA_INPUT_QOS,
            )
        self.create_subscription(JointState, config.state_topic, guard(self.on_state), JOINT_INPUT_QOS)
        if config.has_actions:
            action_type = JointTrajectory if config.action_type == "joint_trajectory" else JointState
            self.create_subscription(action_type, config.action_topic, guard(self.on_action), JOINT_INPUT_QOS)
        if config.has_environment_state:
            # Best effort and volatile, like the joint state: matches the sim's reliable publisher and
            # a default-QoS one (ros2 topic pub) alike.
            self.create_subscription(
                FeatureMap, config.environment_state_topic, guard(self.on_environment_state), JOINT_INPUT_QOS
            )
        self.status_pub = self.create_publisher(RecorderStatus, "~/status", 10)
        self.create_service(StartEpisode, "~/start_episode", guard(self.on_start))
        self.create_service(Trigger, "~/stop_episode", guard(self.on_stop), callback_group=saving_group)
        self.create_service(Trigger, "~/discard_episode", guard(self.on_discard))
        # Steady-clock timers: with use_sim_time the ROS clock stands still until /clock is
        # published, and the recorder must still report status and record stamped frames then.
        # Frame decisions themselves run on stamps and the node clock (see RecordingSession.sync_now).
        # The pump only moves decided frames to the writer's queue; 10 Hz keeps the executor light.
        self.create_timer(0.1, guard(self.session.pump), clock=self.steady)
        self.create_timer(1.0 / config.status_rate, guard(self.publish_status), clock=self.steady)

        self.get_logger().info(f"recorder: {config.describe()}")
        self.get_logger().info(self.session.note)
        self.publish_status()

    # ------------------------------------------------------------------ inputs (convert, never block)

    def now_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_image(self, key: str, msg: Image | CompressedImage) -> None:
        stamp = stamp_to_seconds(msg.header.stamp)
        if not self.session.check_stamp(key, stamp):  # before the conversion: an unstamped frame is dropped
            return
        try:
            rgb: Any = image_msg_to_rgb(msg)
        except CvBridgeError as err:
            rgb = Invalid(f"cannot convert the image: {err}")
        self.session.push_image(key, stamp, rgb)

    def on_state(self, msg: JointState) -> None:
        self.session.push_state(stamp_to_seconds(msg.header.stamp), msg.name, msg.position)

    def on_action(self, msg: JointTrajectory | JointState) -> None:
        stamp = stamp_to_seconds(msg.header.stamp)
        if isinstance(msg, JointTrajectory):
            self.session.push_trajectory(stamp, msg.joint_names, msg.points[0].positions if msg.points else None)
        else:
            self.session.push_action(stamp, msg.name, msg.position)

    def on_environment_state(self, msg: FeatureMap) -> None:
        values: Any
        try:
            values = msg_to_features(msg)  # a data length that disagrees with the grid is refused here
        except MessageShapeError as err:
            values = Invalid(str(err))
        self.session.push_environment_state(stamp_to_seconds(msg.header.stamp), values)

    # ------------------------------------------------------------------ services

    def on_start(self, request: StartEpisode.Request, response: StartEpisode.Response) -> StartEpisode.Response:
        answer = self.session.start(request.task)
        response.episode_index = answer.episode_index
        return self._respond(response, answer, "on_start")

    async def on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Save the episode. A coroutine: it awaits the writer's commit (the video encoding) while
        the executor goes on receiving, so the answer says whether the episode is on disk. The
        next episode may be started before this answer comes."""
        outcome = self.session.stop()
        if not isinstance(outcome, Answer):
            await self._completion(outcome.future)
            outcome = self.session.finish_save(outcome)
        return self._respond(response, outcome, "on_stop")

    async def _completion(self, done: concurrent.futures.Future) -> None:
        """Await a future completed on another thread without blocking the executor."""
        future: Future = Future()

        def complete(_: concurrent.futures.Future) -> None:  # on the writer's thread
            future.set_result(None)
            self._wake.trigger()  # resume the waiting coroutine now, not at the next message

        done.add_done_callback(complete)
        await future

    def on_discard(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._respond(response, self.session.discard(), "on_discard")

    def _respond(self, response: Any, answer: Answer, service: str) -> Any:
        response.success = answer.success
        response.message = answer.message
        if answer.refused:
            self.guard.reject(service, "refused_request", answer.message)
        return response

    # ------------------------------------------------------------------ status

    def publish_status(self) -> None:
        if self.session.closed:
            return
        values = dataclasses.asdict(self.session.status())
        del values["writer_state"]  # diagnostics only
        msg = RecorderStatus(**values)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    def health(self) -> Health:
        status = self.session.status()
        values: dict[str, Any] = {
            "dataset_root": status.dataset_root,
            "recording": status.recording,
            "stale_streams": ", ".join(status.stale_streams),
            "writer_state": status.writer_state,
        }
        if status.recording:
            values.update(
                episode=status.episode_index,
                frames_recorded=status.frames_recorded,
                frames_skipped=status.frames_skipped,
            )
        return Health(f"recording episode {status.episode_index}" if status.recording else "idle", values=values)

    # ------------------------------------------------------------------ shutdown

    def shutdown_recording(self) -> None:
        """Close the dataset: the open episode is saved or discarded per save_on_shutdown.

        Runs after the executor stopped (destroy_node). Default discard: an episode cut off by a
        shutdown was not ended by the operator, so it is an unfinished demonstration that should
        not enter training data unreviewed; and a discard is instant, while a save encodes video
        and can outlast a launcher's SIGINT -> SIGTERM -> SIGKILL escalation (a kill mid-save is
        rolled back at the next start, so the episode is lost either way). Saves already queued
        by stop_episode are completed. Committed episodes are never touched.
        """
        if self.session.closed:
            return
        RecorderNode.closed_after_shutdown = not self.context.ok()
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C / SIGTERM must not interrupt the save or close; SIGKILL still can
            # (the dataset then rolls back to its last commit when the recorder next starts).
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        # The context is already shut down: the node's own logger would also try (and fail,
        # noisily) to publish on /rosout; a child logger only prints.
        self.session.close(log=rclpy.logging.get_logger(f"{self.get_logger().name}.shutdown"))

    def destroy_node(self) -> None:
        self.shutdown_recording()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    try:
        spin_node(RecorderNode, args, threads=1)  # one thread: see the module doc
    except RuntimeError as err:
        # rclpy can fail to take a message that arrives while a signal shuts the context down
        # (the wheels raise "Unable to convert call argument"); by then the dataset was closed
        # cleanly, so that is a normal exit. Any other failure is re-raised.
        if not RecorderNode.closed_after_shutdown:
            raise
        rclpy.logging.get_logger("recorder.shutdown").info(f"ignored an executor error during shutdown: {err}")


if __name__ == "__main__":
    main()
