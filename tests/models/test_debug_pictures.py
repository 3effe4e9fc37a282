"""What the nodes' debug image topics show, without ROS: a feature map's PCA picture at a readable
size (`rla_wm.evaluation.visualize`), and the features a chosen plan is predicted to reach
(`rla_wm.control.planning.predict_plan_end`, `PlannerSession.predicted_end`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rla_wm.control.planner_session import PlannerSession
from rla_wm.control.planning import (
    MPCController,
    Planner,
    PlannerConfig,
    PlanningError,
    feature_distance,
    plan,
    predict_plan_end,
)
from rla_wm.evaluation.visualize import feature_pca_picture, feature_pca_rgb, readable_size
from rla_wm.models.prediction import rollout


def halves(grid_height: int, grid_width: int, channels: int = 8) -> np.ndarray:
    """Tokens whose top half of patch rows differs from the bottom half along one channel, and whose
    left half differs from the right along another (plus a little noise)."""
    tokens = np.random.default_rng(0).normal(0, 0.01, (grid_height, grid_width, channels))
    tokens[: grid_height // 2, :, 0] += 5.0
    tokens[:, : grid_width // 2, 1] += 3.0
    return tokens.reshape(grid_height * grid_width, channels)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((16, 16), (224, 224)),  # a 16x16 feature grid: 14 px patches, a 224 px encoder input's
        ((8, 8), (224, 224)),
        ((37, 37), (259, 259)),  # whole factors only: 7 px patches, not 6.05
        ((96, 96), (288, 288)),  # the Push-T sim camera, tripled
        ((480, 640), (480, 640)),  # camera frames of 224 px and more keep their size
        ((720, 1280), (720, 1280)),
        ((100, 300), (300, 900)),  # the shorter side decides, the aspect stays
    ],
)
def test_readable_size_scales_by_the_smallest_whole_factor_to_224_px(size, expected):
    assert readable_size(*size) == expected


def test_readable_size_refuses_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        readable_size(0, 16)


def test_picture_of_a_camera_frame_puts_each_patch_over_the_pixels_it_came_from():
    tokens = halves(16, 16)
    picture = feature_pca_picture(tokens, 16, 16, 480, 640)
    assert picture.shape == (480, 640, 3) and picture.dtype == np.uint8 and picture.flags.c_contiguous
    small = feature_pca_rgb(tokens, 16, 16)
    # 640x480 over a 16x16 grid: every patch a 30-row x 40-column block of one colour.
    for row in range(16):
        for column in range(16):
            block = picture[row * 30 : (row + 1) * 30, column * 40 : (column + 1) * 40]
            assert (block == small[row, column]).all(), (row, column)
    # The halves of the frame are the halves of the picture: the top/bottom split falls on row 240.
    assert np.abs(picture[239].astype(int) - picture[240].astype(int)).max() > 100
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 4  # not a constant picture


def test_picture_at_sizes_that_are_no_multiple_of_the_grid_gives_every_patch_its_share():
    tokens = halves(3, 4)
    picture = feature_pca_picture(tokens, 3, 4, 100, 101)
    small = feature_pca_rgb(tokens, 3, 4)
    rows = np.arange(100) * 3 // 100
    assert np.bincount(rows).tolist() == [34, 33, 33]  # 33 or 34 pixel rows per patch row, in order
    columns = np.arange(101) * 4 // 101
    assert (picture == small[rows][:, columns]).all()


def test_picture_refuses_non_finite_tokens_a_wrong_grid_and_an_empty_size():
    tokens = halves(4, 4)
    tokens[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        feature_pca_picture(tokens, 4, 4, 224, 224)
    with pytest.raises(ValueError, match="grid"):
        feature_pca_picture(halves(4, 4), 4, 5, 224, 224)
    with pytest.raises(ValueError, match="size"):
        feature_pca_picture(halves(4, 4), 4, 4, 0, 224)


class Shift:
    """Deterministic toy world model: every token moves by the mean of the chunk's actions (2 channels);
    records how many actions each call predicted."""

    name = "shift"

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.lengths.append(actions.shape[1])
        return current + actions.mean(dim=1)[:, None, :].to(current.dtype)


def test_predict_plan_end_is_the_rollouts_last_features_and_what_the_plan_was_scored_on():
    world = Shift()
    current = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    goal = current + torch.tensor([3.0, -2.0])
    config = PlannerConfig(
        horizon=3,
        chunk_length=2,
        num_samples=16,
        iterations=3,
        elites=4,
        action_low=(-2.0, -2.0),
        action_high=(2.0, 2.0),
    )
    result = plan(world, current, goal, config)
    end = predict_plan_end(world, current, result.actions)
    assert end.shape == (6, 2)
    assert torch.allclose(end, rollout(world, current[None], result.actions[None])[0, -1])
    # The chosen plan's cost is the distance of exactly these features to the goal.
    assert float(feature_distance(end[None], goal[None])) == pytest.approx(result.cost, rel=1e-5)


def test_predict_plan_end_predicts_prediction_chunks_at_a_time_and_refuses_bad_shapes():
    world = Shift()
    actions = torch.ones(3, 2, 2)
    predict_plan_end(world, torch.zeros(5, 2), actions, prediction_chunks=2)
    assert world.lengths == [4, 2]  # chunks 1-2 in one call, chunk 3 alone: as rollout_costs scores it
    with pytest.raises(PlanningError, match="actions"):
        predict_plan_end(world, torch.zeros(5, 2), actions[0])
    with pytest.raises(PlanningError, match="NaN"):
        predict_plan_end(world, torch.full((5, 2), float("nan")), actions)


def test_session_plans_carry_their_start_and_predicted_end_rolls_out_the_whole_plan():
    world = Shift()
    config = PlannerConfig(
        horizon=2,
        chunk_length=2,
        num_samples=8,
        iterations=2,
        elites=4,
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
    )
    planner = Planner(world, config)
    session: PlannerSession[str] = PlannerSession(planner, MPCController(planner), 1.0, 1.0)
    observed = np.array([[0.5, -0.5], [1.0, 2.0]], dtype=np.float32)
    session.observe_features("map-1", observed)
    session.observe_state(np.zeros(2))
    goal = torch.from_numpy(observed) + 1.0
    planned = session.plan_goal(goal, planner.config, execute=False)
    assert torch.equal(planned.start, torch.from_numpy(observed))
    end = session.predicted_end(planned.start, planned.plan.actions)
    expected = torch.from_numpy(observed) + planned.plan.actions.mean(dim=1).sum(dim=0)
    assert torch.allclose(end, expected, atol=1e-6)

    session.set_goal(goal)
    replan = session.replan()
    assert replan is not None and replan.observation == "map-1"
    assert torch.equal(replan.start, torch.from_numpy(observed))
    assert replan.actions.shape == (2, 2, 2) and np.allclose(replan.chunk, replan.actions[0].numpy())
    assert torch.allclose(
        session.predicted_end(replan.start, replan.actions),
        torch.from_numpy(observed) + replan.actions.mean(dim=1).sum(dim=0),
        atol=1e-6,
    )


def test_side_by_side_scales_any_number_and_stack_rows_pads_rows_to_the_widest():
    from rla_wm.evaluation.visualize import side_by_side, stack_rows

    a, b = np.full((64, 64, 3), 10, np.uint8), np.full((32, 64, 3), 200, np.uint8)
    row = side_by_side(a, b, height=128, gap=4)
    assert row.shape == (128, 128 + 4 + 256, 3)
    assert (row[:, :128] == 10).all() and (row[:, 132:] == 200).all() and (row[:, 128:132] == 255).all()
    column = stack_rows([row, a], gap=4)
    assert column.shape == (128 + 4 + 64, row.shape[1], 3)
    assert (column[132:, :64] == 10).all() and (column[132:, 64:] == 255).all()  # padded with white
    with pytest.raises(ValueError):
        stack_rows([])
    with pytest.raises(ValueError):
        side_by_side()
