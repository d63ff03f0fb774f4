"""The projection onto W, the l2 ball of radius R (Yin et al., Algorithm 1)."""

import math

import pytest
import torch

from mpisim.learning.projection import project_ball_


def test_a_point_outside_lands_on_the_sphere_along_its_direction():
    w = torch.tensor([3.0, 4.0])

    project_ball_(w, 2.5)

    torch.testing.assert_close(w, torch.tensor([1.5, 2.0]))


def test_points_inside_and_an_infinite_radius_are_left_alone():
    inside, anything = torch.tensor([0.3, -0.4]), torch.tensor([1e30, -1e30])

    project_ball_(inside, 1.0)
    project_ball_(anything, math.inf)

    assert torch.equal(inside, torch.tensor([0.3, -0.4])) and torch.equal(anything, torch.tensor([1e30, -1e30]))


def test_every_row_is_projected_on_its_own_without_overflow():
    rows = torch.tensor([[6.0, 8.0], [0.1, 0.0], [3e30, 4e30]])

    project_ball_(rows, 5.0)

    torch.testing.assert_close(rows, torch.tensor([[3.0, 4.0], [0.1, 0.0], [3.0, 4.0]]))


def test_a_radius_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="positive"):
        project_ball_(torch.ones(2), 0.0)
