"""Pictures of feature maps: PCA of patch tokens as RGB, side by side with the camera frame, and at
a readable size for the nodes' debug image topics (`feature_pca_picture`, `readable_size`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Shorter side of a feature picture meant for a person (the nodes' debug images): 224 px, the
# usual ViT input, at which 14 px DINO patches are comfortably visible.
READABLE_SIDE = 224


def feature_pca_rgb(tokens: np.ndarray, grid_height: int, grid_width: int) -> np.ndarray:
    """Project (N, C) patch tokens on their first 3 principal components -> (h, w, 3) uint8.

    Each component is min-max scaled independently, the usual way DINO features are shown.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    if tokens.ndim != 2 or tokens.shape[0] != grid_height * grid_width:
        raise ValueError(f"tokens {tokens.shape} do not match a {grid_height}x{grid_width} grid")
    if not np.isfinite(tokens).all():
        raise ValueError("tokens contain NaN or inf: no principal components")
    centred = tokens - tokens.mean(axis=0, keepdims=True)
    # SVD of the centred tokens gives the principal axes without forming C x C covariance.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = centred @ vt[:3].T
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    low, high = components.min(axis=0), components.max(axis=0)
    scaled = (components - low) / np.maximum(high - low, 1e-12)
    return (scaled.reshape(grid_height, grid_width, 3) * 255).round().astype(np.uint8)


def readable_size(height: int, width: int, min_side: int = READABLE_SIDE) -> tuple[int, int]:
    """(height, width) times the smallest whole factor that makes the shorter side at least `min_side`.

    A feature grid of 16x16 patches becomes 224x224 (each patch 14 px, its size in a 224 px encoder
    input), a 96x96 camera frame 288x288, a 640x480 one stays as it is.
    """
    if height < 1 or width < 1 or min_side < 1:
        raise ValueError(f"sizes must be positive, got {height}x{width} and min_side {min_side}")
    factor = max(1, -(-min_side // min(height, width)))
    return height * factor, width * factor


def feature_pca_picture(tokens: np.ndarray, grid_height: int, grid_width: int, height: int, width: int) -> np.ndarray:
    """`feature_pca_rgb` scaled by nearest neighbour to a (height, width, 3) uint8 picture.

    Pixel row y shows patch row y * grid_height // height (columns alike): each patch fills the block
    of pixels it covers when the encoder resizes a height x width frame to its square input, so the
    picture of a camera frame's features lines up with the frame, pixel for pixel.
    """
    if height < 1 or width < 1:
        raise ValueError(f"picture size must be positive, got {height}x{width}")
    small = feature_pca_rgb(tokens, grid_height, grid_width)
    rows = np.arange(height) * grid_height // height
    columns = np.arange(width) * grid_width // width
    return np.ascontiguousarray(small[rows[:, None], columns[None, :]])


def side_by_side(*pictures: np.ndarray, height: int = 256, gap: int = 8) -> np.ndarray:
    """Pictures (a camera frame, its feature PCA image, ...) scaled to one height, joined left to right
    with white gaps."""
    if not pictures:
        raise ValueError("no pictures to join")
    panels: list[np.ndarray] = []
    for index, image in enumerate(pictures):
        pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
        width = max(1, round(pil.width * height / pil.height))
        if index:
            panels.append(np.full((height, gap, 3), 255, dtype=np.uint8))
        # Nearest keeps patch boundaries visible in the feature image.
        panels.append(np.asarray(pil.resize((width, height), Image.Resampling.NEAREST)))
    return np.concatenate(panels, axis=1)


# gym-pusht's T in its body frame (pixels): the outline of the bar (120 x 30) and the stem (30 x 90) below it.
T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], dtype=np.float64
)


def block_pose_overlay(
    frame_rgb: np.ndarray, block_pose: np.ndarray, workspace: float = 512.0, height: int = 256
) -> np.ndarray:
    """The camera frame scaled to `height` with the T drawn (red outline) where `block_pose` (x, y pixels of
    the `workspace`, angle rad) puts it: what a pose estimator read from the frame, to compare by eye."""
    from PIL import ImageDraw

    x, y, angle = np.asarray(block_pose, dtype=np.float64)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    outline = T_OUTLINE @ rotation.T + [x, y]
    pil = Image.fromarray(np.asarray(frame_rgb, dtype=np.uint8))
    width = max(1, round(pil.width * height / pil.height))
    pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    points = [(float(px * width / workspace), float(py * height / workspace)) for px, py in outline]
    ImageDraw.Draw(pil).polygon(points, outline=(220, 20, 20), width=2)
    return np.asarray(pil)


def points_overlay(
    frame_rgb: np.ndarray, marks: list[tuple[np.ndarray, tuple[int, int, int]]], height: int = 256
) -> np.ndarray:
    """The camera frame scaled to `height` with a cross at each (pixel (u, v) of the frame, RGB colour) mark."""
    from PIL import ImageDraw

    pil = Image.fromarray(np.asarray(frame_rgb, dtype=np.uint8))
    scale = height / pil.height
    pil = pil.resize((max(1, round(pil.width * scale)), height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pil)
    arm = max(3.0, height / 40)
    for (u, v), colour in marks:
        x, y = float(u) * scale, float(v) * scale
        draw.line([(x - arm, y), (x + arm, y)], fill=colour, width=2)
        draw.line([(x, y - arm), (x, y + arm)], fill=colour, width=2)
    return np.asarray(pil)


def keypoint_overlay(frame_rgb: np.ndarray, points: np.ndarray, height: int = 192) -> np.ndarray:
    """The frame scaled to `height` with (K, 2) points in [-1, 1] image units drawn as numbered coloured
    dots (the same colour per index in every picture, so a point can be followed across frames)."""
    from PIL import ImageDraw

    pil = Image.fromarray(np.asarray(frame_rgb, dtype=np.uint8))
    width = max(1, round(pil.width * height / pil.height))
    pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pil)
    colours = [tuple(int(255 * c) for c in _pyplot().get_cmap("tab10")(k % 10)[:3]) for k in range(len(points))]
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        u, v = (x + 1) / 2 * width, (y + 1) / 2 * height
        draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=colours[k], outline=(0, 0, 0))
        draw.text((u + 5, v - 6), str(k), fill=colours[k])
    return np.asarray(pil)


def image_grid(images: list[np.ndarray], columns: int, gap: int = 6) -> np.ndarray:
    """Equal-size (H, W, 3) uint8 pictures in rows of `columns`, white gaps between them."""
    if not images or columns < 1:
        raise ValueError(f"need at least one image and one column, got {len(images)} and {columns}")
    height, width = images[0].shape[:2]
    if any(image.shape[:2] != (height, width) for image in images):
        raise ValueError("the pictures of a grid must have one size")
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        sheet[top : top + height, left : left + width] = image
    return sheet


def stack_rows(pictures: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Pictures stacked top to bottom at their own sizes, each row padded with white to the widest."""
    if not pictures:
        raise ValueError("no pictures to stack")
    width = max(picture.shape[1] for picture in pictures)
    rows = []
    for index, picture in enumerate(pictures):
        if index:
            rows.append(np.full((gap, width, 3), 255, dtype=np.uint8))
        pad = np.full((picture.shape[0], width - picture.shape[1], 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([np.asarray(picture, dtype=np.uint8), pad], axis=1))
    return np.concatenate(rows, axis=0)


def save_gif(frames: list[np.ndarray], path: str | Path, fps: float = 10.0, height: int = 256) -> Path:
    """An episode's camera frames (H, W, 3) uint8 as a looping animated GIF, scaled to `height` pixels."""
    if not frames:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = []
    for frame in frames:
        pil = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        images.append(pil.resize((max(1, round(pil.width * height / pil.height)), height), Image.Resampling.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def _save_line_plot(plt, figure, axis, path: str | Path) -> Path:
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_loss_curves(logs: dict[str, list[dict]], path: str | Path) -> Path:
    """Training loss against step, one line per run, log scale."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, log in logs.items():
        axis.plot([entry["step"] for entry in log], [entry["loss"] for entry in log], label=name)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    return _save_line_plot(plt, figure, axis, path)


def plot_error_vs_horizon(table: dict[str, dict[int, float]], metric: str, path: str | Path) -> Path:
    """Prediction error against horizon (in frames), one line per model."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, errors in table.items():
        horizons = sorted(errors)
        axis.plot(horizons, [errors[h] for h in horizons], marker="o", label=name)
    axis.set_xlabel("horizon (frames)")
    axis.set_ylabel(metric)
    return _save_line_plot(plt, figure, axis, path)
