"""Step-size schedules: the formulas, BRIDGE's rho(t) through the inverse schedule, and the range checks."""

import math

import pytest

from mpisim.learning import schedules


def test_constant_is_the_step_itself():
    eta = schedules.build("constant", lr=0.1)

    assert [eta(t) for t in (0, 1, 1000)] == [0.1, 0.1, 0.1]


def test_inverse_halves_at_t0():
    eta = schedules.build("inverse", lr=0.2, t0=10.0)

    assert eta(0) == pytest.approx(0.2) and eta(10) == pytest.approx(0.1) and eta(30) == pytest.approx(0.05)


@pytest.mark.parametrize("t", [0, 1, 7, 499, 500, 12345])
def test_inverse_gives_bridges_rho_to_the_last_bit(t):
    # BRIDGE: rho(t) = 1 / (lambda (t0 + t)) with lambda = 1, t0 = 500, i.e. lr = 1 / (lambda t0).
    eta = schedules.build("inverse", lr=1 / 500, t0=500.0)

    assert eta(t) == 1.0 / (1.0 * (500.0 + t))


def test_power_decays_as_t_plus_one_to_the_minus_p():
    eta = schedules.build("power", lr=1.0, power=0.75)

    assert eta(0) == 1.0 and eta(15) == pytest.approx(16 ** -0.75)


@pytest.mark.parametrize("schedule, kwargs, field", [
    ("cosine", {}, "optim.schedule"),
    ("constant", {"lr": 0.0}, "optim.lr"),
    ("constant", {"lr": math.inf}, "optim.lr"),
    ("inverse", {"t0": 0.0}, "optim.t0"),
    ("power", {"power": 0.5}, "optim.power"),     # the open end of (1/2, 1]
    ("power", {"power": 1.01}, "optim.power"),
])
def test_impossible_settings_name_the_field(schedule, kwargs, field):
    settings = {"lr": 0.1, "t0": 1.0, "power": 1.0, **kwargs}

    problem = schedules.check(schedule, **settings)

    assert problem is not None and problem[0] == field
    with pytest.raises(ValueError, match=field):
        schedules.build(schedule, **settings)


def test_power_one_is_allowed():
    assert schedules.check("power", lr=0.1, t0=1.0, power=1.0) is None
