"""Coarser copies of the arm's STL meshes, made at load time, so that rendering is cheap.

The shipped meshes have ~320k triangles; with shadows and multisampling off, OSMesa still spends
~54 ms of CPU on a 128x128 scene-camera frame of them, and ~5 ms once they are merged on a 2 mm
grid (~23k triangles; `benchmarks/bench_so101_render.py`). At the camera sizes used here
(~1-3 mm per pixel on the arm) detail below a couple of millimetres is not visible anyway. The
merging is vertex clustering: every vertex moves
to the mean of the vertices in its cell and triangles that collapse are dropped. It needs no
mesh library, is deterministic, and keeps each part's outline to within one cell. MuJoCo
collides meshes through their convex hulls, which move by at most one cell as well.
"""

from __future__ import annotations

import numpy as np

_STL_HEADER = 80
_STL_RECORD = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])


def read_stl(data: bytes) -> np.ndarray:
    """Triangles (N, 3, 3) of a binary STL file (the format the wheel ships)."""
    if len(data) < _STL_HEADER + 4:
        raise ValueError(f"not a binary STL file: {len(data)} bytes")
    count = int(np.frombuffer(data, "<u4", 1, _STL_HEADER)[0])
    if len(data) != _STL_HEADER + 4 + count * _STL_RECORD.itemsize:
        raise ValueError(f"not a binary STL file: {len(data)} bytes for {count} triangles")
    records = np.frombuffer(data, _STL_RECORD, count, _STL_HEADER + 4)
    return records["vertices"].astype(np.float64)


def write_stl(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """A binary STL file of the triangles `vertices[faces]`."""
    triangles = vertices[faces].astype(np.float32)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    records = np.zeros(len(triangles), _STL_RECORD)
    records["normal"] = normals
    records["vertices"] = triangles
    return bytes(_STL_HEADER) + np.uint32(len(triangles)).tobytes() + records.tobytes()


def cluster_vertices(triangles: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge the vertices of `triangles` (N, 3, 3) that fall in one grid cell of size `cell`.

    Returns (vertices (V, 3), faces (F, 3)) with degenerate and repeated triangles removed.
    """
    if cell <= 0:
        raise ValueError(f"cell must be positive, got {cell}")
    points = triangles.reshape(-1, 3)
    keys = np.floor(points / cell).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    # One integer per cell: np.unique on a 1-D array is several times faster than on rows.
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, index = np.unique(flat, return_inverse=True)
    index = index.reshape(-1)
    counts = np.bincount(index)
    sums = np.stack([np.bincount(index, weights=points[:, axis]) for axis in range(3)], axis=1)
    vertices = sums / counts[:, None]
    faces = index.reshape(-1, 3)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    # The same triangle left twice (from both sides of a thin wall, say) renders once.
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return vertices, faces[np.sort(first)]


def coarse_stl(data: bytes, cell: float) -> bytes:
    """`data` (a binary STL file) with its vertices clustered on a grid of size `cell` (metres)."""
    return write_stl(*cluster_vertices(read_stl(data), cell))
