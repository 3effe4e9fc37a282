"""Camera frames -> frozen-ViT patch features (rla_wm_msgs/FeatureMap), and optionally
the residual latent action z between frame t-h and frame t (rla_wm_msgs/LatentAction).

The camera subscription uses sensor-data QoS with depth 1: when encoding is
slower than the camera, old frames are dropped, never queued, so the features
always describe the newest frame. Feature maps carry the source image's stamp.
With `publish_debug_image`, the PCA picture of each feature map goes out on `~/features_pca`
(sensor_msgs/Image rgb8, the frame's header and size), made after the feature map is published.
A frame that cannot be encoded is a counted rejection on /diagnostics (`rla_wm_ros.node_guard`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from builtin_interfaces.msg import Time
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rla_wm.control.freshness import StampThrottle
from rla_wm.control.latent_tracker import LatentTracker
from rla_wm.evaluation.visualize import feature_pca_picture, readable_size
from rla_wm.models.encoder import EncoderConfig, FeatureEncoderError, load_encoder
from rla_wm_msgs.msg import FeatureMap, LatentAction
from rla_wm_ros.conversions import features_to_msg, latent_to_msg, stamp_to_seconds
from rla_wm_ros.image_conversion import CvBridge, CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import WARN, Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import CAMERA_QOS, LATEST_ONLY, lost_sample_callbacks


class EncoderNode(Node):
    def __init__(self) -> None:
        super().__init__("encoder")
        model = declare(
            self,
            "model",
            "builtin:dinov2-tiny-random",
            "Encoder weights: hub id (facebook/dinov2-small), local folder, or builtin:<name>; a block-pose "
            "estimator folder (builtin:sim-pusht-pose-cnn) publishes the sim's block-state feature space, a "
            "keypoint-encoder folder (builtin:sim-pusht-keypoints) its image points.",
        )
        resolution = declare(self, "resolution", 224, "Square input size; a multiple of the patch size.", (14, 2048))
        device = declare(self, "device", "cpu", "Torch device, e.g. cpu or cuda:0.")
        dtype = declare(self, "dtype", "float32", "float32, float16 or bfloat16 (half types need a GPU).")
        compressed = declare(
            self, "compressed_input", False, "Subscribe to sensor_msgs/CompressedImage instead of Image."
        )
        threads = declare(self, "torch_threads", 0, "CPU threads for torch (0 = torch default).", (0, 256))
        if threads:
            torch.set_num_threads(threads)
        self.encoder = load_encoder(EncoderConfig(model=model, resolution=resolution, device=device, dtype=dtype))
        if "random" in self.encoder.model_path:
            self.get_logger().warning(
                f"encoder {model!r} has RANDOM weights (no pretrained DINO here): features are random projections. "
                "Set model:=facebook/dinov2-small (or a local DINO folder) on a robot."
            )
        self.get_logger().info(f"encoder {self.encoder.encoder_id}: grid {self.encoder.grid}")
        rla_checkpoint = declare(self, "rla_checkpoint", "", "RLA autoencoder checkpoint; empty = no latents.")
        horizon = declare(self, "rla_horizon", 10, "Latent gap h in frames at rla_fps.", (1, 1000))
        fps = declare(self, "rla_fps", 10.0, "Frame rate h is counted in (the training data's fps).", (0.1, 1000.0))
        self.latents = None
        if rla_checkpoint:
            self.latents = LatentTracker.from_checkpoint(rla_checkpoint, self.encoder.encoder_id, horizon, fps, device)
            self.latent_pub = self.create_publisher(LatentAction, "latent_action", 10)
            self.get_logger().info(f"publishing RLA latents over {horizon} frames ({horizon / fps:.2f} s)")

        self.features_pub = self.create_publisher(FeatureMap, "features", 10)
        self.debug_pub = None  # no publisher, and no PCA computed, unless asked for
        if declare(
            self,
            "publish_debug_image",
            False,
            "Also publish each feature map's PCA picture (sensor_msgs/Image rgb8, the camera frame's header, "
            "its size or a whole multiple of it with at least 224 px on the shorter side) on ~/features_pca, "
            "for RViz / Foxglove. Costs a PCA per frame, after the features are published.",
        ):
            self.debug_pub = self.create_publisher(Image, "~/features_pca", LATEST_ONLY)
        # A policy that acts on something else (a simulator's privileged state) still shows the features
        # in a debug picture; encoding every frame for that only takes CPU from the loop.
        self.throttle = StampThrottle(
            declare(
                self,
                "max_rate",
                0.0,
                "Encode at most this many frames per second of camera stamps, skip the others (0 = every frame).",
                (0.0, 1000.0),
            )
        )
        self.frames_encoded = 0
        self.last_encode_seconds = 0.0
        self.frames_lost = 0  # lost on the way (not those dropped because the encoder was busy)
        self.last_lost = -float("inf")
        # Inference in its own group, diagnostics in the default one: on the single executor thread
        # (main) diagnostics wait at most one encode; with more threads they would not wait at all.
        self.guard = NodeGuard(self, "feature encoder", health=self.health, hardware_id=self.encoder.encoder_id)
        inference_group = MutuallyExclusiveCallbackGroup()
        image_type = CompressedImage if compressed else Image
        topic = "camera/image_raw/compressed" if compressed else "camera/image_raw"
        self.create_subscription(
            image_type,
            topic,
            self.guard.wrap(self.on_image),
            CAMERA_QOS,
            callback_group=inference_group,
            event_callbacks=lost_sample_callbacks(self.guard.wrap(self.on_frames_lost)),
        )

    def health(self) -> Health:
        values = {
            "frames_encoded": self.frames_encoded,
            "frames_rejected": sum(n for key, n in self.guard.counts().items() if key.startswith("on_image/")),
            "frames_lost": self.frames_lost,
            "frames_skipped": self.throttle.skipped,
            "encode_ms": f"{self.last_encode_seconds * 1e3:.1f}",
        }
        if time.monotonic() - self.last_lost < 10.0:
            return Health(f"camera frames lost in transport ({self.frames_lost} in all)", WARN, values)
        return Health("encoding" if self.frames_encoded else "waiting for camera frames", values=values)

    def on_frames_lost(self, count: int) -> None:
        """Frames the middleware saw go missing before they reached this node. With large frames
        this is almost always the camera publisher's Fast DDS set-up, not this node."""
        self.frames_lost += count
        self.last_lost = time.monotonic()
        self.get_logger().warning(
            f"{self.frames_lost} camera frames lost in transport so far: for frames of 640x480 and up, run the "
            "camera driver with the Fast DDS profile config/fastdds.xml (FASTDDS_DEFAULT_PROFILES_FILE on "
            "Kilted, FASTRTPS_DEFAULT_PROFILES_FILE on Humble/Jazzy)",
            throttle_duration_sec=10.0,
        )

    def on_image(self, msg: Image | CompressedImage) -> None:
        if not self.throttle.admit(stamp_to_seconds(msg.header.stamp)):
            return
        try:
            rgb = image_msg_to_rgb(msg)
        except CvBridgeError as err:
            raise Rejected("bad_image", str(err)) from err
        start = time.perf_counter()
        try:
            tokens = self.encoder(rgb[None])[0].float().cpu().numpy()
        except FeatureEncoderError as err:
            raise Rejected("unencodable_image", str(err)) from err
        self.last_encode_seconds = time.perf_counter() - start
        grid = self.encoder.grid
        self.features_pub.publish(features_to_msg(tokens, grid.height, grid.width, self.encoder.encoder_id, msg.header))
        self.frames_encoded += 1
        if self.latents is not None:
            result = self.latents.push(stamp_to_seconds(msg.header.stamp), tokens)
            if result is not None:
                start_seconds, z = result
                start = Time(sec=int(start_seconds), nanosec=int(round((start_seconds % 1) * 1e9)) % 1_000_000_000)
                self.latent_pub.publish(
                    latent_to_msg(z, self.latents.horizon, self.latents.model_id, msg.header, start)
                )
        self.publish_debug_image(tokens, rgb.shape[0], rgb.shape[1], msg.header)  # last: nothing waits for it

    def publish_debug_image(self, tokens: np.ndarray, frame_height: int, frame_width: int, header: Header) -> None:
        """With publish_debug_image, the feature map's PCA picture at the frame's size (a whole multiple
        of it below 224 px), each patch over the frame pixels it was computed from; else nothing."""
        if self.debug_pub is None:
            return
        grid = self.encoder.grid
        height, width = readable_size(frame_height, frame_width)
        try:
            picture = feature_pca_picture(tokens, grid.height, grid.width, height, width)
        except ValueError as err:  # non-finite features: counted apart from the frames
            self.guard.reject("debug_image", "no_picture", str(err))
            return
        self.debug_pub.publish(CvBridge().cv2_to_imgmsg(picture, "rgb8", header))


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One thread: a frame that arrives while one is encoded waits in its depth-1 queue (the newest
    # replaces it) instead of spinning a second executor thread (node_main.spin_node).
    spin_node(EncoderNode, args, threads=1)


if __name__ == "__main__":
    main()
