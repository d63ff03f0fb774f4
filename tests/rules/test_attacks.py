"""Pure-tier tests of mpisim.rules.attacks: hand-worked examples from the papers' definitions."""

import math
import sys

import pytest
import torch

from mpisim.rules import attacks
from mpisim.rules.attacks import REGISTRY, alie_z, check, param_defaults

MESSAGE = sorted(name for name, a in REGISTRY.items() if a.kind == "message")
DATA = sorted(name for name, a in REGISTRY.items() if a.kind == "data")
NON_OMNISCIENT_MESSAGE = sorted(n for n in MESSAGE if not REGISTRY[n].omniscient)
OMNISCIENT = sorted(n for n in MESSAGE if REGISTRY[n].omniscient)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def call(name, own, *, honest=None, f=1, seeds=None, **params):
    seeds = seeds if seeds is not None else range(100, 100 + own.shape[0])
    return REGISTRY[name].fn(own, honest=honest, f=f, rngs=gens(*seeds), **params)


def extra(name):
    """The round's Context for a rule-aware attack (the server's pipeline: the mean), else nothing."""
    if not REGISTRY[name].wants_ctx:
        return {}
    return {"ctx": attacks.Context(aggregate=lambda x: x.mean(dim=0), model=torch.zeros(3), round=1,
                                   step_size=None, n=6, f=2, rule="mean")}


HONEST_4x3 = torch.tensor([[4.0, 0.0, -1.0],
                           [1.0, 6.0, -3.0],
                           [3.0, 3.0, -2.0],
                           [2.0, 9.0, 7.0]])


# --------------------------------------------------------------------------- #
# Registry, flags, parameters

def test_registry_has_every_fault_with_the_stated_flags():
    # Prepare: (kind, omniscient, colludes) as stated in the brief and the papers
    expected = {
        "gradient_reverse": ("message", False, False),
        "coordinate_wise": ("message", True, True),
        "norm_confusing": ("message", True, False),
        "label_flip": ("data", False, False),
        "random": ("message", False, False),
        "sign_flip": ("message", False, False),
        "gaussian": ("message", False, False),
        "random_labels": ("data", False, False),
        "alie": ("message", True, True),
        "ipm": ("message", True, True),
        "mimic": ("message", True, True),
        "opt_alie": ("message", True, True),
        "opt_ipm": ("message", True, True),
        "minmax": ("message", True, True),
        "minsum": ("message", True, True),
        "nan": ("message", False, False),
        "inf": ("message", False, False),
        "huge": ("message", False, False),
    }

    # Execute
    got = {name: (a.kind, a.omniscient, a.colludes) for name, a in REGISTRY.items()}

    # Assert
    assert got == expected
    assert all(a.name == name and a.reference and a.summary for name, a in REGISTRY.items())


def test_param_defaults():
    assert param_defaults("gradient_reverse") == {"scale": 100.0}
    assert param_defaults("random") == {"std": 200.0}
    assert param_defaults("sign_flip") == {"scale": 1.0}
    assert param_defaults("gaussian") == {"var": 10.0}
    assert param_defaults("alie") == {"z": None, "stats": "honest", "unbiased": True}
    assert param_defaults("ipm") == {"epsilon": 0.1}
    assert param_defaults("mimic") == {"target": 0}
    assert param_defaults("inf") == {"sign": 1}
    assert param_defaults("huge") == {"value": 1e30}
    assert param_defaults("coordinate_wise") == {}
    assert param_defaults("label_flip") == {}
    with pytest.raises(ValueError, match="known attacks"):
        param_defaults("nope")


def test_module_does_not_import_mpi4py():
    # The pure tier must run without MPI; a fresh interpreter shows what attacks pulls in.
    import subprocess
    code = "import sys, mpisim.rules.attacks; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- #
# check()

def test_check_accepts_valid_settings():
    assert check("norm_confusing", 10, 3) is None          # 7 honest >= f+1 = 4
    assert check("coordinate_wise", 4, 2) is None          # 2 honest >= f = 2
    assert check("alie", 10, 2) is None
    assert check("mimic", 5, 2, {"target": 2}) is None
    assert check("random", 10, 3, {"std": 1.5}) is None
    assert check("label_flip", 10, 1) is None


def test_check_unknown_name_lists_known_attacks():
    msg = check("gradient_reversed", 10, 2)
    assert "gradient_reversed" in msg
    assert "gradient_reverse" in msg and "norm_confusing" in msg and "alie" in msg


def test_check_unknown_param_names_it_and_lists_accepted():
    msg = check("random", 10, 2, {"sigma": 3.0})
    assert "'sigma'" in msg
    assert "std=200.0" in msg


def test_check_unknown_param_of_attack_without_params():
    msg = check("nan", 10, 2, {"value": 1.0})
    assert "'value'" in msg and "none" in msg


def test_check_norm_confusing_needs_f_plus_one_honest():
    msg = check("norm_confusing", 4, 2)
    assert msg is not None
    assert "n=4" in msg and "f=2" in msg
    assert check("norm_confusing", 5, 2) is None            # 3 honest = f+1: just enough


def test_check_coordinate_wise_needs_f_honest():
    msg = check("coordinate_wise", 5, 3)
    assert msg is not None and "n=5" in msg and "f=3" in msg


def test_check_alie_z_infinite_when_byzantine_majority():
    # n=10, f=6: s = floor(6) - 6 = 0, so (n - s)/n = 1 and z = inf
    msg = check("alie", 10, 6)
    assert msg is not None and "n=10" in msg and "f=6" in msg
    assert check("alie", 10, 6, {"z": 1.0}) is None         # an explicit z is fine


def test_check_alie_faulty_stats_need_two_faulty_agents():
    msg = check("alie", 10, 1, {"stats": "faulty"})
    assert msg is not None and "f=1" in msg
    assert check("alie", 10, 1, {"stats": "faulty", "unbiased": False}) is None
    assert check("alie", 10, 2, {"stats": "median"}) is not None


def test_check_mimic_target_must_be_honest_index():
    msg = check("mimic", 5, 2, {"target": 3})
    assert msg is not None and "n=5" in msg and "f=2" in msg


def test_check_bad_values_name_attack_and_param():
    for name, params, word in [("random", {"std": -1.0}, "std"),
                               ("gaussian", {"var": float("nan")}, "var"),
                               ("gradient_reverse", {"scale": "big"}, "scale"),
                               ("inf", {"sign": 0}, "sign"),
                               ("huge", {"value": 1e39}, "float32"),
                               ("ipm", {"epsilon": float("inf")}, "epsilon")]:
        msg = check(name, 10, 2, params)
        assert msg is not None and msg.startswith(name) and word in msg, (name, msg)


def test_check_bad_counts():
    assert "f=11" in check("random", 10, 11)
    assert check("random", 10, -1) is not None
    assert check("ipm", 3, 3) is not None                   # no honest agent to average


# --------------------------------------------------------------------------- #
# CGE paper, Section 3.3

def test_gradient_reverse_is_minus_100_times_own():
    # Prepare
    own = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])

    # Execute
    out = call("gradient_reverse", own)

    # Assert
    assert torch.equal(out, torch.tensor([[-100.0, 200.0, -50.0], [0.0, -300.0, 100.0]]))


def test_coordinate_wise_is_fth_smallest_honest_value_per_coordinate():
    # Prepare: columns sorted are (1,2,3,4), (0,3,6,9), (-3,-2,-1,7); f=2 -> 2nd smallest
    own = torch.zeros(2, 3)

    # Execute
    out = call("coordinate_wise", own, honest=HONEST_4x3, f=2)

    # Assert: the same vector for both colluding faulty agents
    assert torch.equal(out, torch.tensor([[2.0, 3.0, -2.0], [2.0, 3.0, -2.0]]))


def test_coordinate_wise_f1_is_minimum_and_counts_ties():
    honest = torch.tensor([[5.0, 1.0], [5.0, 2.0], [7.0, 2.0]])
    assert torch.equal(call("coordinate_wise", torch.zeros(1, 2), honest=honest, f=1),
                       torch.tensor([[5.0, 1.0]]))
    assert torch.equal(call("coordinate_wise", torch.zeros(1, 2), honest=honest, f=2),
                       torch.tensor([[5.0, 2.0]]))


def test_coordinate_wise_rejects_too_few_honest():
    with pytest.raises(ValueError, match="f=3"):
        call("coordinate_wise", torch.zeros(3, 3), honest=HONEST_4x3[:2], f=3)


def test_norm_confusing_reverses_own_and_takes_f_plus_1_th_largest_honest_norm():
    # Prepare: honest norms 5, 13, 1, 10; f=2 -> 3rd largest = 5
    honest = torch.tensor([[3.0, 4.0], [5.0, 12.0], [1.0, 0.0], [6.0, 8.0]])
    own = torch.tensor([[0.0, 2.0], [3.0, -4.0], [0.0, 0.0]])

    # Execute
    out = call("norm_confusing", own, honest=honest, f=2)

    # Assert: -(5/2)[0,2], -(5/5)[3,-4], and a zero gradient stays zero
    assert torch.allclose(out, torch.tensor([[0.0, -5.0], [-3.0, 4.0], [0.0, 0.0]]))


def test_norm_confusing_f1_uses_second_largest_norm():
    honest = torch.tensor([[3.0, 4.0], [5.0, 12.0], [1.0, 0.0], [6.0, 8.0]])
    out = call("norm_confusing", torch.tensor([[1.0, 0.0]]), honest=honest, f=1)
    assert torch.allclose(out, torch.tensor([[-10.0, 0.0]]))


def test_norm_confusing_rejects_too_few_honest():
    with pytest.raises(ValueError, match="f\\+1"):
        call("norm_confusing", torch.ones(2, 2), honest=torch.ones(2, 2), f=2)


def test_label_flip_on_mnist_labels():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3], dtype=torch.long)
    out = REGISTRY["label_flip"].fn(labels, num_classes=10, rng=torch.Generator())
    assert torch.equal(out, torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 6, 6]))
    assert out.dtype == torch.long


def test_label_flip_other_class_count_and_int32_input():
    out = REGISTRY["label_flip"].fn(torch.tensor([0, 1, 2], dtype=torch.int32), num_classes=3, rng=None)
    assert torch.equal(out, torch.tensor([2, 1, 0]))
    assert out.dtype == torch.long


def test_label_flip_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="0, 10"):
        REGISTRY["label_flip"].fn(torch.tensor([3, 10]), num_classes=10, rng=None)


def test_random_has_mean_0_and_std_200():
    # Prepare: one agent, a large draw; the sample mean has std 200/sqrt(2e5) ~ 0.45
    own = torch.full((1, 200_000), 7.0)

    # Execute
    out = call("random", own, seeds=[1])

    # Assert: the true gradient plays no part; 5-sigma bounds
    assert abs(out.mean().item()) < 5 * 200 / math.sqrt(200_000)
    assert abs(out.std().item() - 200.0) < 200.0 * 5 * math.sqrt(1 / (2 * 200_000))


def test_random_std_parameter():
    out = call("random", torch.zeros(1, 100_000), seeds=[2], std=3.0)
    assert abs(out.std().item() - 3.0) < 0.05


def test_random_is_deterministic_given_the_seed_and_differs_across_agents():
    own = torch.zeros(2, 50)
    first = call("random", own, seeds=[5, 6])
    again = call("random", own, seeds=[5, 6])
    other = call("random", own, seeds=[5, 7])
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])
    assert torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


# --------------------------------------------------------------------------- #
# Other papers and current practice

def test_sign_flip():
    own = torch.tensor([[1.0, -2.0]])
    assert torch.equal(call("sign_flip", own), torch.tensor([[-1.0, 2.0]]))
    assert torch.equal(call("sign_flip", own, scale=3.0), torch.tensor([[-3.0, 6.0]]))


def test_gaussian_adds_noise_of_variance_10():
    # Prepare: N(0, 10 I) -> per-coordinate std sqrt(10) ~ 3.162
    own = torch.full((1, 200_000), 5.0)

    # Execute
    noise = call("gaussian", own, seeds=[3]) - own

    # Assert: the true gradient is kept, and the noise variance is 10, not 100
    assert abs(noise.mean().item()) < 5 * math.sqrt(10 / 200_000)
    assert abs(noise.var().item() - 10.0) < 10.0 * 5 * math.sqrt(2 / 200_000)


def test_gaussian_var_zero_returns_own():
    own = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = call("gaussian", own, var=0.0)
    assert torch.equal(out, own)
    assert out.data_ptr() != own.data_ptr()


def test_random_labels_are_uniform_and_reproducible():
    # Prepare
    labels = torch.zeros(20_000, dtype=torch.long)

    # Execute
    out = REGISTRY["random_labels"].fn(labels, num_classes=10, rng=torch.Generator().manual_seed(9))
    again = REGISTRY["random_labels"].fn(labels, num_classes=10, rng=torch.Generator().manual_seed(9))

    # Assert: each class ~ 2000 draws (binomial std ~ 42), in range, reproducible
    counts = torch.bincount(out, minlength=10)
    assert out.dtype == torch.long and out.shape == labels.shape
    assert counts.numel() == 10 and (counts - 2000).abs().max() < 5 * 43
    assert torch.equal(out, again)


def test_alie_z_for_n10_f2_by_hand():
    # s = floor(10/2 + 1) - 2 = 4; (n - s)/n = 0.6; Phi^-1(0.6) = 0.2533 from a normal table
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)
    # s = floor(11/2 + 1) - 3 = 3; 8/11 = 0.7273; Phi(0.60) = 0.7257, Phi(0.61) = 0.7291 -> ~0.6046
    assert alie_z(11, 3) == pytest.approx(0.6046, abs=1e-3)


def test_alie_z_rejects_byzantine_majority():
    with pytest.raises(ValueError, match="n=10"):
        alie_z(10, 6)


def test_alie_is_mean_minus_z_std_of_honest():
    # Prepare: column means (3, 2), sample stds (2, 0); n = 2 + 3 = 5 would give another z
    honest = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    own = torch.zeros(2, 2)

    # Execute
    out = call("alie", own, honest=honest, f=2, z=1.5)

    # Assert: 3 - 1.5*2 = 0, one vector for both agents
    assert torch.allclose(out, torch.tensor([[0.0, 2.0], [0.0, 2.0]]))


def test_alie_default_z_comes_from_n_and_f():
    # Prepare: 8 honest + 2 faulty = n=10 -> z = 0.2533; column 0 has mean 0 and sample std 1
    col = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]) * math.sqrt(7 / 8)
    honest = torch.stack([col, torch.full((8,), 4.0)], dim=1)

    # Execute
    out = call("alie", torch.zeros(2, 2), honest=honest, f=2)

    # Assert
    assert torch.allclose(out, torch.tensor([[-0.2533471, 4.0]] * 2), atol=1e-5)


def test_alie_population_std_and_faulty_stats():
    honest = torch.tensor([[1.0], [3.0], [5.0]])
    out = call("alie", torch.zeros(1, 1), honest=honest, f=1, z=1.0, unbiased=False)
    assert torch.allclose(out, torch.tensor([[3.0 - math.sqrt(8 / 3)]]))
    own = torch.tensor([[10.0], [14.0]])                     # mean 12, sample std 2*sqrt(2)
    out = call("alie", own, honest=honest, f=2, z=1.0, stats="faulty")
    assert torch.allclose(out, torch.tensor([[12.0 - 2 * math.sqrt(2)]] * 2))


def test_ipm_is_minus_epsilon_honest_mean():
    honest = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])           # mean (2, 3, 4)
    out = call("ipm", torch.zeros(3, 3), honest=honest, f=3)
    assert torch.allclose(out, torch.tensor([[-0.2, -0.3, -0.4]] * 3))
    out = call("ipm", torch.zeros(1, 3), honest=honest, f=1, epsilon=2.0)
    assert torch.allclose(out, torch.tensor([[-4.0, -6.0, -8.0]]))


def test_mimic_copies_the_target_honest_gradient():
    out0 = call("mimic", torch.zeros(2, 3), honest=HONEST_4x3, f=2)
    out2 = call("mimic", torch.zeros(2, 3), honest=HONEST_4x3, f=2, target=2)
    assert torch.equal(out0, torch.tensor([[4.0, 0.0, -1.0]] * 2))
    assert torch.equal(out2, torch.tensor([[3.0, 3.0, -2.0]] * 2))
    with pytest.raises(ValueError, match="target=4"):
        call("mimic", torch.zeros(2, 3), honest=HONEST_4x3, f=2, target=4)


def test_nan_inf_huge():
    own = torch.tensor([[1.0, -2.0]])
    assert torch.isnan(call("nan", own)).all()
    assert torch.equal(call("inf", own), torch.tensor([[math.inf, math.inf]]))
    assert torch.equal(call("inf", own, sign=-1), torch.tensor([[-math.inf, -math.inf]]))
    big = call("huge", own)
    assert torch.isfinite(big).all() and torch.equal(big, torch.full((1, 2), 1e30))
    # the point of "huge": the float32 squared norm overflows
    assert math.isinf((big * big).sum().item())


def test_omniscient_attacks_require_honest():
    for name in OMNISCIENT:
        with pytest.raises(ValueError, match="omniscient"):
            call(name, torch.zeros(1, 3), honest=None, f=1)


# --------------------------------------------------------------------------- #
# Properties over every fault

@pytest.mark.parametrize("name", NON_OMNISCIENT_MESSAGE)
def test_non_omniscient_attacks_are_row_independent(name):
    # Prepare: three faulty agents hosted on one rank vs. each on its own rank
    own = torch.tensor([[1.0, -2.0, 0.5, 4.0],
                        [0.0, 3.0, -1.0, 2.0],
                        [-5.0, 0.25, 8.0, -1.0]])
    seeds = [11, 12, 13]

    # Execute
    packed = REGISTRY[name].fn(own, honest=None, f=3, rngs=gens(*seeds))
    single = [REGISTRY[name].fn(own[i:i + 1], honest=None, f=3, rngs=gens(seeds[i]))
              for i in range(3)]

    # Assert
    assert packed.shape == own.shape and packed.dtype == own.dtype
    torch.testing.assert_close(packed, torch.cat(single), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", MESSAGE)
def test_message_attacks_do_not_modify_inputs(name):
    # Prepare
    own = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    honest = HONEST_4x3.clone()
    own_before, honest_before = own.clone(), honest.clone()
    use_honest = honest if REGISTRY[name].omniscient else None

    # Execute
    out = REGISTRY[name].fn(own, honest=use_honest, f=2, rngs=gens(1, 2), **extra(name))
    out.add_(1.0)          # writing into the result must not reach the inputs either

    # Assert
    assert torch.equal(own, own_before) and torch.equal(honest, honest_before)
    assert out.shape == own.shape


@pytest.mark.parametrize("name", DATA)
def test_data_attacks_do_not_modify_inputs(name):
    labels = torch.tensor([0, 4, 9, 2])
    before = labels.clone()
    out = REGISTRY[name].fn(labels, num_classes=10, rng=torch.Generator().manual_seed(0))
    out.add_(1)
    assert torch.equal(labels, before)


def test_every_message_attack_accepts_the_interface_arguments():
    for name in MESSAGE:
        defaults = param_defaults(name)
        out = REGISTRY[name].fn(torch.ones(2, 3), honest=HONEST_4x3, f=2, rngs=gens(1, 2), **defaults,
                                **extra(name))
        assert out.shape == (2, 3), name


def test_a_rule_aware_attack_takes_ctx_which_is_not_a_parameter_and_gets_the_servers_pipeline():
    from types import SimpleNamespace

    from mpisim import registry, seeding
    from mpisim.rules import aggregators

    def aware(own, *, honest, f, rngs, ctx, scale: float = 1.0):
        return own

    entry = attacks.add("aware_t", "message", True, False, aware, "a test")
    try:
        assert entry.wants_ctx and not attacks.REGISTRY["sign_flip"].wants_ctx
        assert registry.attacks.entry("aware_t").params == {"scale": 1.0}  # ctx is the interface's
    finally:
        registry.attacks.remove("aware_t")
    agg = SimpleNamespace(name="cwtm", f=1, params={}, pre=("bucketing",), pre_params={"bucketing": {"s": 2}})
    for_round = attacks.pipeline(SimpleNamespace(aggregator=agg), seed=5)
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(0))
    server = aggregators.build("cwtm", f=1, pre=("bucketing",), pre_params={"bucketing": {"s": 2}})
    for t in (1, 2):
        want = server(x, seeding.torch_generator(5, seeding.ATTACK_PIPELINE, t))
        assert torch.equal(for_round(t)(x), want) and torch.equal(for_round(t)(x), want)
    assert not torch.equal(for_round(1)(x), for_round(2)(x))  # a fresh shuffle every round
