"""Where shipped checkpoints live and how model specs resolve to paths."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
BUILTIN_PREFIX = "builtin:"


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` / our loaders accept.

    "builtin:<name>" -> the shipped folder rla_wm/checkpoints/<name> (must exist);
    an existing local path -> its absolute path; anything else is returned as is
    (a hub id, which only works where the hub is reachable or cached).
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        path = CHECKPOINT_DIR / name
        if not name or not path.is_dir():
            shipped = sorted(p.name for p in CHECKPOINT_DIR.iterdir() if p.is_dir()) if CHECKPOINT_DIR.is_dir() else []
            raise FileNotFoundError(f"no shipped checkpoint {spec!r}; shipped: {shipped}")
        return str(path)
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    return spec
