"""Push-T camera frames with the simulator's state logged next to each one.

Used to pretrain the project's own encoder (self-supervised: the state is not used
there) and to fit linear probes from features to state, which say whether the
features carry what the task is about: where the agent and the block are, and how
the block is turned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rla_wm.envs.pusht.dataset import RandomWalkPolicy
from rla_wm.envs.pusht.expert import PushTExpert
from rla_wm.envs.pusht.sim import PushTSim, SimFrame

# Column names of `StateFrames.state`; the angle is stored as cos/sin so it has no wrap-around.
STATE_NAMES = ("agent_x", "agent_y", "block_x", "block_y", "block_cos", "block_sin")
# Seeds at and above this are kept for encoder pretraining and probes, far from the
# closed-loop evaluation seeds (which start at 0 and at 1000).
FRAMES_SEED_BASE = 100_000


@dataclass(frozen=True)
class StateFrames:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    state: np.ndarray  # (N, len(STATE_NAMES)) float32
    episode: np.ndarray  # (N,) int64, which episode each frame came from

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.state.shape != (n, len(STATE_NAMES)) or len(self.episode) != n:
            raise ValueError(f"state {self.state.shape} / episode {self.episode.shape} do not match {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def select(self, episodes: np.ndarray) -> StateFrames:
        keep = np.isin(self.episode, episodes)
        return StateFrames(self.images[keep], self.state[keep], self.episode[keep])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=self.images, state=self.state, episode=self.episode)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StateFrames:
        try:
            with np.load(path) as data:
                return cls(data["images"], data["state"].astype(np.float32), data["episode"].astype(np.int64))
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path} is not a state-frames file (images, state, episode): {err}") from err


def state_of(frame: SimFrame) -> np.ndarray:
    x, y, angle = frame.block_pose
    return np.array([*frame.position, x, y, np.cos(angle), np.sin(angle)], dtype=np.float32)


def collect_state_frames(
    episodes: int,
    steps: int = 150,
    seed: int = FRAMES_SEED_BASE,
    expert_fraction: float = 0.5,
    image_size: int = 96,
    every: int = 1,
    progress: bool = True,
) -> StateFrames:
    """Run `episodes` seeded episodes (episode k uses seed + k), keep every `every`-th frame.

    A share `expert_fraction` of the episodes is driven by the scripted expert (the block
    moves, and reaches poses near the goal); the rest by a smooth random walk (play).
    """
    from tqdm import tqdm

    if episodes <= 0 or steps <= 0 or every <= 0:
        raise ValueError("episodes, steps and every must be positive")
    if not 0.0 <= expert_fraction <= 1.0:
        raise ValueError(f"expert_fraction must be in [0, 1], got {expert_fraction}")
    sim = PushTSim(max_steps=steps, image_size=image_size)
    expert, play = PushTExpert(), RandomWalkPolicy()
    rng = np.random.default_rng(seed)
    images, states, episode_ids = [], [], []
    try:
        for k in tqdm(range(episodes), desc="frames", unit="episode", disable=not progress):
            frame = sim.reset(seed + k)
            # Interleaved, so any run of consecutive episodes mixes expert and play.
            driver = expert if int((k + 1) * expert_fraction) > int(k * expert_fraction) else play
            driver.reset(frame)
            while True:
                if frame.step % every == 0:
                    images.append(frame.image)
                    states.append(state_of(frame))
                    episode_ids.append(k)
                if frame.done:
                    break
                frame = sim.step(driver(frame, rng))
    finally:
        sim.close()
    return StateFrames(np.stack(images), np.stack(states), np.asarray(episode_ids, dtype=np.int64))
