"""Pure-tier tests of the attacks that choose their factor: opt_alie and opt_ipm (a line search
against the server's pipeline, ByzFL 0.0.11) and minmax / minsum (Shejwalkar and Houmansadr, NDSS 2021)."""

import math

import pytest
import torch

from mpisim import config
from mpisim.config import ConfigError
from mpisim.protocols import decentralized_config, server_config
from mpisim.rules import aggregators as A
from mpisim.rules import attacks as T
from mpisim.rules import clipping  # noqa: F401 - registers "arc" until aggregators imports it
from mpisim.rules.attacks import REGISTRY, Context, alie_z, check, param_defaults

NEW = ("opt_alie", "opt_ipm", "minmax", "minsum")
SEARCH = {"evals": 20, "start": 0.0, "step": 10.0, "ratio": 0.8}


def honest_block(h=7, d=20, seed=0):
    """The seeded example: h honest rows N(1, I_d), generator seed 0."""
    return torch.randn(h, d, generator=torch.Generator().manual_seed(seed)) + 1.0


def context(rule="cwtm", f=3, n=10, record=None, **params):
    """A Context whose aggregate is ``rule`` built with f (and records every block it is given)."""
    agg = A.build(rule, f=f, params=params)

    def aggregate(x):
        if record is not None:
            record.append(x.clone())
        return agg(x.to(torch.float32))

    return Context(aggregate=aggregate, model=torch.zeros(3), round=1, step_size=0.1, n=n, f=f, rule=rule)


def damage(ctx, honest, row, a=3):
    """|| aggregate(honest, then a copies of row) - honest mean || in float64."""
    block = torch.cat([honest, row.expand(a, -1)])
    return float(torch.linalg.vector_norm(ctx.aggregate(block).double() - honest.double().mean(dim=0)))


# --------------------------------------------------------------------------- #
# Registry, parameters, checks

def test_flags_parameters_and_ctx():
    for name in NEW:
        a = REGISTRY[name]
        assert (a.kind, a.omniscient, a.colludes) == ("message", True, True) and a.reference and a.summary
    assert REGISTRY["opt_alie"].wants_ctx and REGISTRY["opt_ipm"].wants_ctx
    assert not REGISTRY["minmax"].wants_ctx and not REGISTRY["minsum"].wants_ctx
    assert param_defaults("opt_alie") == SEARCH and param_defaults("opt_ipm") == SEARCH
    assert param_defaults("minmax") == {"perturbation": "std", "gamma_init": 10.0, "tau": 1e-5}
    assert param_defaults("minsum") == {"perturbation": "std", "gamma_init": 10.0, "tau": 1e-5, "bound": "max"}


def test_checks_accept_valid_settings():
    for name in NEW:
        assert check(name, 10, 3) is None, name
    assert check("minmax", 3, 2, {"perturbation": "unit"}) is None   # one honest agent is enough
    assert check("minsum", 10, 3, {"bound": "min", "perturbation": "sign"}) is None


@pytest.mark.parametrize("name, params, words", [
    ("minmax", {"perturbation": "mean"}, "byzantine.params.perturbation"),
    ("minsum", {"perturbation": "gauss"}, "byzantine.params.perturbation"),
    ("minsum", {"bound": "median"}, "byzantine.params.bound"),
    ("minmax", {"gamma_init": 0.0}, "byzantine.params.gamma_init"),
    ("minmax", {"tau": -1e-5}, "byzantine.params.tau"),
    ("opt_alie", {"evals": 0}, "byzantine.params.evals"),
    ("opt_ipm", {"ratio": 1.0}, "byzantine.params.ratio"),
    ("opt_ipm", {"step": 0.0}, "byzantine.params.step"),
    ("opt_alie", {"start": math.nan}, "byzantine.params.start"),
])
def test_bad_parameters_name_the_config_field(name, params, words):
    msg = check(name, 10, 3, params)
    assert msg is not None and msg.startswith(name) and words in msg, msg


def test_too_few_honest_agents():
    assert "n=3" in check("opt_alie", 3, 2) and "f=2" in check("opt_alie", 3, 2)
    assert "n=3" in check("minmax", 3, 2) and "n=3" in check("minsum", 3, 2)   # std needs 2 honest
    assert check("opt_ipm", 3, 2) is None and check("opt_ipm", 3, 3) is not None


def test_server_mode_names_byzantine_params_for_an_unknown_perturbation():
    cfg, _ = config.parse_args(server_config.ServerModeConfig,
                               ["--byzantine.fault", "minmax", "--byzantine.count", "2",
                                "--byzantine.params.perturbation", "mean"], prog="t", description="t")

    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(cfg, world_size=11)
    assert info.value.field == "byzantine.params" and "byzantine.params.perturbation" in str(info.value)


@pytest.mark.parametrize("name", NEW)
def test_decentralized_mode_refuses_them_naming_the_fault(name):
    cfg, _ = config.parse_args(decentralized_config.DecentralizedConfig,
                               ["--byzantine.fault", name, "--byzantine.count", "1"], prog="t", description="t")

    with pytest.raises(ConfigError) as info:
        decentralized_config.validate_decentralized(cfg, world_size=20)
    assert info.value.field == "byzantine.fault"
    assert name in str(info.value) and "server-mode only" in str(info.value)


# --------------------------------------------------------------------------- #
# The line search (ByzFL 0.0.11's)

def test_line_search_by_hand():
    # objective -(x - 37)^2. Expansion: 0, 10 (better, step 20), 30 (better, step 40), 70 (worse:
    # step 40 * 0.8 = 32). Contraction from 30: 62, 55.6, 50.48, 46.384 (all worse), 43.1072 (better).
    tried = []

    def objective(x):
        tried.append(x)
        return -(x - 37.0) ** 2

    best = T._line_search(objective, **SEARCH)

    assert len(tried) == 20
    assert tried[:9] == pytest.approx([0.0, 10.0, 30.0, 70.0, 62.0, 55.6, 50.48, 46.384, 43.1072])
    assert best == max(tried, key=lambda x: -(x - 37.0) ** 2)
    # The contraction only moves forward from the best point, as ByzFL's: 37 is never approached
    # from 43.1072 (every later try is 43.1072 + 10.48576 * 0.8^j).
    assert best == pytest.approx(43.1072)


def test_line_search_ties_keep_the_earlier_point_and_nan_counts_as_minus_inf():
    assert T._line_search(lambda x: 1.0, **SEARCH) == 0.0
    assert T._line_search(lambda x: math.nan if x else -5.0, **SEARCH) == 0.0
    assert T._line_search(lambda x: x, evals=3, start=1.0, step=-2.0, ratio=0.5) == 1.0  # moves down only
    assert T._line_search(lambda x: -x, evals=3, start=1.0, step=-2.0, ratio=0.5) == -5.0


# --------------------------------------------------------------------------- #
# opt_alie, opt_ipm

@pytest.mark.parametrize("name", ["opt_alie", "opt_ipm"])
@pytest.mark.parametrize("rule", ["cwtm", "krum", "geomed"])
def test_the_factor_sent_is_the_best_of_the_evaluated_ones(name, rule):
    honest, blocks = honest_block(), []
    ctx = context(rule, record=blocks)

    out = REGISTRY[name].fn(torch.zeros(3, 20), honest=honest, f=3, ctx=ctx)

    assert out.shape == (3, 20) and torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert len(blocks) == 20
    # Every block is the honest rows, then the 3 Byzantine copies (the documented order).
    assert all(torch.equal(b[:7], honest) and torch.equal(b[7], b[9]) for b in blocks)
    damages = [damage(context(rule), honest, b[7]) for b in blocks]
    best = max(range(20), key=lambda i: (damages[i], -i))     # the first of the largest
    assert torch.equal(out[0], blocks[best][7])


@pytest.mark.parametrize("name", ["opt_alie", "opt_ipm"])
def test_opt_attacks_are_deterministic_and_leave_inputs_alone(name):
    honest, own = honest_block(), torch.randn(3, 20)
    before = (honest.clone(), own.clone())

    first = REGISTRY[name].fn(own, honest=honest, f=3, ctx=context("median"))
    second = REGISTRY[name].fn(own, honest=honest, f=3, ctx=context("median"))

    assert torch.equal(first, second)
    assert torch.equal(honest, before[0]) and torch.equal(own, before[1])


def test_opt_alie_sends_mu_minus_z_sigma_and_opt_ipm_minus_eps_mu():
    honest = honest_block()
    mu, sigma = honest.mean(dim=0), honest.std(dim=0)
    alie_row = REGISTRY["opt_alie"].fn(torch.zeros(1, 20), honest=honest, f=3, ctx=context())[0]
    ipm_row = REGISTRY["opt_ipm"].fn(torch.zeros(1, 20), honest=honest, f=3, ctx=context())[0]

    z = float(((mu - alie_row) / sigma).mean())
    eps = float((-ipm_row / mu).mean())
    torch.testing.assert_close(alie_row, mu - z * sigma)
    torch.testing.assert_close(ipm_row, -eps * mu)
    assert z > 0 and eps > 0


@pytest.mark.parametrize("rule", ["cwtm", "median", "krum", "geomed", "cc", "multikrum", "norm_threshold"])
def test_at_least_as_damaging_as_alie_and_ipm_with_their_default_factors(rule):
    # The seeded example: 7 honest rows N(1, I_20) (seed 0), 3 Byzantine, each rule with f = 3.
    # Not a theorem (the search need not try alie's z_max = Phi^-1(...) or ipm's 0.1), a check.
    honest, own, ctx = honest_block(), torch.zeros(3, 20), context(rule)

    opt_alie = REGISTRY["opt_alie"].fn(own, honest=honest, f=3, ctx=ctx)[0]
    opt_ipm = REGISTRY["opt_ipm"].fn(own, honest=honest, f=3, ctx=ctx)[0]
    alie = REGISTRY["alie"].fn(own, honest=honest, f=3)[0]       # z = alie_z(10, 3)
    ipm = REGISTRY["ipm"].fn(own, honest=honest, f=3)[0]         # epsilon = 0.1

    assert alie_z(10, 3) > 0
    assert damage(ctx, honest, opt_alie) >= damage(ctx, honest, alie)
    assert damage(ctx, honest, opt_ipm) >= damage(ctx, honest, ipm)


def test_opt_attacks_need_the_servers_pipeline():
    honest = honest_block()
    no_server = Context(aggregate=None, model=torch.zeros(3), round=1, step_size=0.1, n=10, f=3, rule="bridge")
    for name in ("opt_alie", "opt_ipm"):
        with pytest.raises(ValueError, match="server's pipeline"):
            REGISTRY[name].fn(torch.zeros(1, 20), honest=honest, f=3)
        with pytest.raises(ValueError, match="server's pipeline"):
            REGISTRY[name].fn(torch.zeros(1, 20), honest=honest, f=3, ctx=no_server)
        with pytest.raises(ValueError, match="omniscient"):
            REGISTRY[name].fn(torch.zeros(1, 20), honest=None, f=3, ctx=context())
    with pytest.raises(ValueError, match="2 honest"):
        REGISTRY["opt_alie"].fn(torch.zeros(1, 20), honest=honest[:1], f=3, ctx=context())


def test_opt_attacks_with_pre_aggregation_in_the_pipeline():
    honest = honest_block()
    # arc, then buckets of 2: 5 rows for cwtm with f = 2.
    agg = A.build("cwtm", f=2, pre=("arc", "bucketing"))
    ctx = Context(aggregate=lambda x: agg(x, torch.Generator().manual_seed(1)), model=torch.zeros(3), round=1,
                  step_size=0.1, n=10, f=2, rule="cwtm")

    out = REGISTRY["opt_ipm"].fn(torch.zeros(3, 20), honest=honest, f=3, ctx=ctx)

    assert torch.isfinite(out).all()
    assert damage(ctx, honest, out[0]) >= damage(ctx, honest, REGISTRY["ipm"].fn(out, honest=honest, f=3)[0])


# --------------------------------------------------------------------------- #
# minmax, minsum

def gamma_of(out, honest, p):
    """gamma from mu + gamma p (float64)."""
    mu = honest.double().mean(dim=0)
    return float((out.double() - mu) @ p / (p @ p))


def perturbation(honest, kind):
    g = honest.double()
    mu = g.mean(dim=0)
    return {"std": -g.std(dim=0), "unit": -mu / mu.norm(), "sign": -torch.sign(mu)}[kind]


def minmax_slack(m, honest):
    """max_{i,j} ||g_i - g_j|| - max_i ||m - g_i||, directly (>= 0: the constraint holds)."""
    g = honest.double()
    return float(torch.cdist(g, g).max() - (g - m.double()).norm(dim=1).max())


def minsum_slack(m, honest, bound="max"):
    g = honest.double()
    scores = (torch.cdist(g, g) ** 2).sum(dim=1)
    limit = scores.max() if bound == "max" else scores.min()
    return float(limit - ((g - m.double()) ** 2).sum())


def test_minmax_by_hand():
    # Honest (0, 0) and (2, 0), perturbation unit: mu = (1, 0), p = (-1, 0), m = (1 - gamma, 0).
    # max_i ||m - g_i|| = 1 + gamma <= 2 = ||g_1 - g_0||, so gamma -> 1 from below, m -> (0, 0).
    honest = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)

    out = REGISTRY["minmax"].fn(torch.zeros(2, 2, dtype=torch.float64), honest=honest, f=2, perturbation="unit")

    assert out.dtype == torch.float64 and torch.equal(out[0], out[1])
    assert 0.0 <= float(out[0, 0]) <= 2e-5 and float(out[0, 1]) == 0.0


def test_minsum_by_hand():
    # Honest (0, 0), (3, 0), (0, 3), perturbation sign: mu = (1, 1), p = (-1, -1), ||p|| = sqrt 2.
    # The c_i = g_i - mu sum to 0, so sum_i ||m - g_i||^2 = 3 * 2 gamma^2 + sum_i ||c_i||^2 and the
    # bound max_j sum_i ||g_j - g_i||^2 = 3 max_j ||c_j||^2 + sum_i ||c_i||^2: gamma* = max_j ||c_j|| / sqrt 2
    # = ||(2, -1)|| / sqrt 2 = sqrt(5/2); with bound="min", min_j ||c_j|| / sqrt 2 = 1.
    honest = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    own = torch.zeros(1, 2, dtype=torch.float64)

    high = REGISTRY["minsum"].fn(own, honest=honest, f=1, perturbation="sign")[0]
    low = REGISTRY["minsum"].fn(own, honest=honest, f=1, perturbation="sign", bound="min")[0]

    gamma_high, gamma_low = 1.0 - float(high[0]), 1.0 - float(low[0])
    assert math.sqrt(2.5) - 2e-5 <= gamma_high <= math.sqrt(2.5)
    assert 1.0 - 2e-5 <= gamma_low <= 1.0
    assert high[0] == high[1] and low[0] == low[1]


@pytest.mark.parametrize("kind", ["std", "unit", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minmax_meets_its_constraint_and_gamma_cannot_grow_by_2_tau(kind, seed):
    honest = honest_block(h=6, d=15, seed=seed).double()
    p = perturbation(honest, kind)
    tau = 1e-5

    out = REGISTRY["minmax"].fn(torch.zeros(2, 15, dtype=torch.float64), honest=honest, f=2, perturbation=kind)

    gamma = gamma_of(out[0], honest, p)
    mu = honest.mean(dim=0)
    assert 0 < gamma < 20.0                                     # below the search's cap 2 * gamma_init
    assert minmax_slack(out[0], honest) >= -1e-9
    assert minmax_slack(mu + (gamma + 2 * tau) * p, honest) < 0


@pytest.mark.parametrize("kind", ["std", "unit", "sign"])
@pytest.mark.parametrize("bound", ["max", "min"])
def test_minsum_meets_its_constraint_and_matches_the_closed_form(kind, bound):
    honest = honest_block(h=6, d=15, seed=4).double()
    p = perturbation(honest, kind)
    tau = 1e-5

    out = REGISTRY["minsum"].fn(torch.zeros(2, 15, dtype=torch.float64), honest=honest, f=2, perturbation=kind,
                                bound=bound)

    gamma = gamma_of(out[0], honest, p)
    mu = honest.mean(dim=0)
    radii = (honest - mu).norm(dim=1)
    closed = float((radii.max() if bound == "max" else radii.min()) / p.norm())
    assert minsum_slack(out[0], honest, bound) >= -1e-9
    assert minsum_slack(mu + (gamma + 2 * tau) * p, honest, bound) < 0
    assert closed - 2 * tau <= gamma <= closed + 1e-9


def test_float32_messages_are_the_float64_vector_rounded():
    honest = honest_block(h=6, d=15)

    out32 = REGISTRY["minmax"].fn(torch.zeros(2, 15), honest=honest, f=2)
    out64 = REGISTRY["minmax"].fn(torch.zeros(2, 15, dtype=torch.float64), honest=honest, f=2)

    assert out32.dtype == torch.float32
    assert torch.equal(out32, out64.to(torch.float32))


def test_gamma_never_exceeds_twice_gamma_init():
    # Honest (0, 0) and (100, 0), unit: minsum's gamma* = 50 > 2 * 10, so the search stops just below 20.
    honest = torch.tensor([[0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    own = torch.zeros(1, 2, dtype=torch.float64)

    capped = REGISTRY["minsum"].fn(own, honest=honest, f=1, perturbation="unit")[0]
    wide = REGISTRY["minsum"].fn(own, honest=honest, f=1, perturbation="unit", gamma_init=100.0)[0]

    assert 20.0 - 2e-5 <= 50.0 - float(capped[0]) < 20.0
    assert 50.0 - 2e-5 <= 50.0 - float(wide[0]) <= 50.0


def test_min_attacks_refuse_bad_input():
    honest = honest_block(h=3, d=4)
    with pytest.raises(ValueError, match="perturbation"):
        REGISTRY["minmax"].fn(torch.zeros(1, 4), honest=honest, f=1, perturbation="mean")
    with pytest.raises(ValueError, match="too few honest"):
        REGISTRY["minsum"].fn(torch.zeros(1, 4), honest=honest[:1], f=1)
    with pytest.raises(ValueError, match="bound"):
        REGISTRY["minsum"].fn(torch.zeros(1, 4), honest=honest, f=1, bound="median")
    with pytest.raises(ValueError, match="omniscient"):
        REGISTRY["minmax"].fn(torch.zeros(1, 4), honest=None, f=1)
    # one honest gradient: unit works (the bound is 0, so m = mu = that gradient)
    one = REGISTRY["minmax"].fn(torch.zeros(1, 4), honest=honest[:1], f=1, perturbation="unit")
    torch.testing.assert_close(one[0], honest[0])


def test_a_zero_mean_gives_a_zero_unit_perturbation():
    honest = torch.tensor([[1.0, -2.0], [-1.0, 2.0]])

    out = REGISTRY["minmax"].fn(torch.zeros(1, 2), honest=honest, f=1, perturbation="unit")

    assert torch.equal(out, torch.zeros(1, 2))
