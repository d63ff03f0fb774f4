"""The one registry (mpisim.registry) and the public decorators (mpisim.register); pure, no MPI."""

import pytest
import torch

from mpisim import config, register, registry
from mpisim.config import ConfigError
from mpisim.protocols import server_config
from mpisim.protocols.server_config import ServerModeConfig
from mpisim.rules import aggregators


@pytest.fixture
def scratch():
    """Names a test registers, removed afterwards (the registry is per process)."""
    names = []
    yield names
    for kind, name in names:
        registry.KINDS[kind].remove(name)


def test_every_built_in_rule_is_an_entry_and_the_very_callable_the_protocols_use():
    assert set(registry.rules) == {"mean", "cge", "cwtm", "trimmed_mean", "geomed", "mom", "multikrum", "krum",
                                   "median", "meamed", "bulyan", "norm_threshold", "majority_vote", "cc",
                                   "mda", "smea", "caf", "monna", "dnc", "fltrust"}
    assert set(registry.pre_aggregators) == {"nnm", "bucketing", "clipping", "arc"}
    for name in registry.rules:
        entry = registry.rules.entry(name)
        assert registry.rules[name] is aggregators.REGISTRY[name]
        assert entry.kind == "rule" and entry.origin == "mpisim" and entry.description
        assert entry.params == aggregators.param_defaults(name)
        assert isinstance(entry.properties["coordinatewise"], bool)
    assert registry.rules.entry("cge").params == {"reduce": "sum"}


def test_the_registries_are_read_only_views():
    with pytest.raises(TypeError):
        registry.rules["mine"] = lambda x, *, f: x[0]
    with pytest.raises(registry.RegistryError, match="built-in rule 'cwtm' cannot be removed"):
        registry.rules.remove("cwtm")
    with pytest.raises(KeyError, match="unknown rule 'nope'; known rules: bulyan, caf, cc, cge"):
        registry.rules.entry("nope")


@pytest.mark.parametrize("name", [n for n in aggregators.REGISTRY
                                  if registry.rules.entry(n).properties["coordinatewise"]])
def test_a_rule_declared_coordinate_wise_gives_on_a_column_slice_that_slice_of_its_output(name):
    x = torch.randn(11, 40, generator=torch.Generator().manual_seed(1))
    f = 2
    whole = aggregators.REGISTRY[name](x, f=f)
    for lo, hi in ((0, 13), (13, 40)):
        assert torch.equal(aggregators.REGISTRY[name](x[:, lo:hi].contiguous(), f=f), whole[lo:hi])


def test_a_users_rule_registers_like_a_built_in_and_runs_through_build(scratch):
    @register.rule("first_row_mine", coordinatewise=True, reference="a test",
                   check=lambda n, f, scale: None if scale > 0 else f"scale must be > 0, got {scale}")
    def first_row(x, *, f, scale=1.0):
        """The first row, scaled (not robust: a test)."""
        return x[0] * scale

    scratch.append(("rule", "first_row_mine"))
    entry = registry.rules.entry("first_row_mine")
    assert entry.params == {"scale": 1.0} and entry.reference == "a test"
    assert entry.description == "The first row, scaled (not robust: a test)."
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(aggregators.build("first_row_mine", f=0, params={"scale": 2.0})(x), torch.tensor([0.0, 2.0]))
    assert aggregators.check("first_row_mine", 3, 0, {"scale": -1.0}) == "scale must be > 0, got -1.0"


def test_a_name_is_taken_once_and_the_message_names_both_origins(scratch):
    with pytest.raises(registry.RegistryError, match="rule 'cwtm' is registered twice: by mpisim and by my_defence.py"):
        with registry.origin("my_defence.py"):
            register.rule("cwtm", coordinatewise=True)(lambda x, *, f: x[0])
    with registry.origin("a.py"):
        register.rule("twice_mine", coordinatewise=True)(lambda x, *, f: x[0])
    scratch.append(("rule", "twice_mine"))
    with pytest.raises(registry.RegistryError, match="registered twice: by a.py and by b.py"):
        with registry.origin("b.py"):
            register.rule("twice_mine", coordinatewise=True)(lambda x, *, f: x[1])


def test_a_parameter_without_a_default_is_refused(scratch):
    with pytest.raises(registry.RegistryError, match="parameter 'k' of needs_k needs a default"):
        @register.rule("needs_k_mine", coordinatewise=True)
        def needs_k(x, *, f, k):
            return x[0]


def sharded(name, pre=()):
    root = ["--server.root_samples", "10"] if name == "fltrust" else []  # fltrust's own root set
    cfg, _ = config.parse_args(ServerModeConfig, ["--aggregator.name", name, "--server.ranks", "2",
                                                  "--aggregator.f", "0", "--byzantine.fault", "none", *root,
                                                  *(["--aggregator.pre", ",".join(pre)] if pre else [])],
                               prog="t", description="t")
    server_config.validate_server_mode(cfg, None)


def test_a_sharded_server_refuses_a_rule_that_is_neither_coordinate_wise_nor_takes_the_row_sums(scratch):
    @register.rule("krumlike_mine", coordinatewise=False)
    def krumlike(x, *, f):
        """Whole rows without the row sums: wrong on a slice of the columns."""
        return x[torch.argmin(x.norm(dim=1))]

    @register.rule("rowsums_mine", coordinatewise=False)
    def rowsums(x, *, f, sharding=aggregators.WHOLE):
        norms = sharding.sum(x.double().square().sum(dim=1)).sqrt()
        return x[torch.argmin(norms)]

    @register.rule("percolumn_mine", coordinatewise=True)
    def percolumn(x, *, f):
        return x.max(dim=0).values

    scratch.extend([("rule", "krumlike_mine"), ("rule", "rowsums_mine"), ("rule", "percolumn_mine")])
    with pytest.raises(ConfigError, match=r"server.ranks: 2 server ranks: rule 'krumlike_mine' is neither "
                                          r"coordinate-wise nor takes the whole-row sums"):
        sharded("krumlike_mine")
    sharded("rowsums_mine")
    sharded("percolumn_mine")
    for entry in registry.rules.entries():  # every built-in but the vote (its downlink) runs sharded
        if entry.origin == "mpisim" and entry.name != "majority_vote":
            sharded(entry.name)


def test_every_built_in_attack_is_an_entry_with_its_declared_properties():
    from mpisim.rules import attacks

    assert len(registry.attacks) == 18 and registry.attacks is attacks.REGISTRY
    alie = registry.attacks.entry("alie")
    assert alie.properties == {"kind": "message", "omniscient": True, "colludes": True}
    assert registry.attacks["alie"].fn is attacks.alie and "A Little Is Enough" in alie.reference
    assert registry.attacks.entry("label_flip").properties["kind"] == "data"
    assert registry.attacks.entry("gradient_reverse").params == {"scale": 100.0}


def test_a_users_attacks_register_like_the_built_ins(scratch):
    from mpisim.rules import attacks

    @register.attack("zero_t", omniscient=False)
    def zero(own, *, honest, f, rngs, value: float = 0.0):
        """Send a constant vector."""
        return torch.full_like(own, value)

    @register.attack("shift_labels_t", kind="data", omniscient=False)
    def shift(labels, *, num_classes, rng, by: int = 1):
        return (labels + by) % num_classes

    scratch.extend([("attack", "zero_t"), ("attack", "shift_labels_t")])
    assert attacks.param_defaults("zero_t") == {"value": 0.0}
    assert attacks.check("zero_t", 10, 2, {"nope": 1}) == "attack 'zero_t' has no parameter 'nope'; accepted: value=0.0"
    assert registry.attacks.entry("shift_labels_t").properties["kind"] == "data"
    with pytest.raises(registry.RegistryError, match="a colluding attack is omniscient"):
        register.attack("bad_t", omniscient=False, colludes=True)(zero)


def test_a_users_codec_registers_and_round_trips(scratch):
    import numpy as np

    from mpisim import compression

    @register.codec("half_t", check=lambda d, scale: None if scale > 0 else f"half_t: scale must be > 0, got {scale}")
    class Half(compression.Codec):
        """float16 coordinates, 2d bytes."""

        embeds_norm = True

        def __init__(self, *, scale: float = 1.0):
            self.scale = scale

        def nbytes(self, d):
            return 2 * d

        def _encode_into(self, X, out, gens):
            out[...] = (np.asarray(X) / self.scale).astype("<f2").view(np.uint8)

        def _decode_into(self, P, d, out):
            out[...] = np.ascontiguousarray(P).view("<f2").astype(np.float32) * self.scale

    scratch.append(("codec", "half_t"))
    assert compression.param_defaults("half_t") == {"scale": 1.0}
    assert compression.check("half_t", 8, {"scale": 0.0}) == "half_t: scale must be > 0, got 0.0"
    codec = compression.REGISTRY["half_t"](scale=2.0)
    x = torch.tensor([0.5, -1.0, 3.0])
    assert torch.equal(codec.decode(codec.encode(x), 3), x) and codec.nbytes(3) == 6


def test_every_built_in_data_set_and_partition_is_an_entry_with_its_parameters():
    from mpisim import datasets
    from mpisim.datasets import partition

    assert registry.datasets is datasets.REGISTRY and registry.partitions is partition.PARTITIONS
    assert {e.name: e.params for e in registry.datasets.entries() if e.origin == "mpisim"} == {
        "mnist": {}, "mnist-small": {}, "fashion-mnist": {}, "cifar10": {},
        "synthetic_regression": {"samples": 4000, "dim": 1000, "noise": 0.0, "test_samples": 1000}}
    assert registry.datasets.entry("mnist-small").properties["kind"] == "classification"
    assert registry.datasets.entry("synthetic_regression").properties["needs_root"] is False
    assert {e.name: e.params for e in registry.partitions.entries() if e.origin == "mpisim"} == {
        "iid": {}, "dirichlet": {"alpha": 0.5}, "label_shards": {"shards_per_agent": 2}}
    assert registry.partitions["dirichlet"] is partition.dirichlet
    assert registry.partitions.entry("iid").properties == {"needs_labels": False, "min_size": False}
    assert registry.partitions.entry("dirichlet").properties == {"needs_labels": True, "min_size": True}
    assert "McMahan" in registry.partitions.entry("label_shards").reference
    assert registry.partitions.entry("dirichlet").check({"alpha": 0}) == ("alpha", "must be a positive number, got 0")


def test_a_users_data_set_registers_like_a_built_in_and_its_counters_spare_the_loading(scratch):
    import numpy as np

    from mpisim import datasets

    loads = []

    @register.dataset("ramp_t", kind="regression", params={"rows": 5}, needs_root=False, reference="a test",
                      check=lambda p: None if p["rows"] >= 1 else ("rows", f"must be >= 1, got {p['rows']}"),
                      num_samples=lambda root, split, params, seed: params["rows"],
                      labels=lambda root, split, params, seed: None)
    def ramp(root, split, params, seed):
        """y = x on a ramp of `rows` points."""
        loads.append(split)
        x = np.arange(params["rows"], dtype=np.float32)[:, None]
        return datasets.Dataset(x, x[:, 0].copy(), None, None, None)

    scratch.append(("dataset", "ramp_t"))
    entry = registry.datasets.entry("ramp_t")
    assert entry.params == {"rows": 5} and entry.description == "y = x on a ramp of `rows` points."
    assert entry.properties == {"kind": "regression", "needs_root": False, "default_root": None}
    assert entry.origin == __name__ and entry.reference == "a test"
    assert datasets.num_samples("ramp_t", "", "train", params={"rows": 9}) == 9
    assert datasets.labels("ramp_t", "", "train") is None and loads == []  # counted without loading
    assert len(datasets.load("ramp_t", "", "test", params={"rows": 3})) == 3 and loads == ["test"]
    assert datasets.check_params("ramp_t", {"rows": 0}) == ("data.params.rows", "must be >= 1, got 0")
    assert datasets.check_params("ramp_t", {"cols": 2}) == (
        "data.params.cols", "data set 'ramp_t' has no parameter 'cols'; accepted: rows=5")


def test_a_data_set_name_is_taken_once_and_the_message_names_both_origins(scratch):
    with pytest.raises(registry.RegistryError,
                       match="dataset 'mnist' is registered twice: by mpisim and by my_data.py"):
        with registry.origin("my_data.py"):
            register.dataset("mnist", kind="classification")(lambda root, split, params, seed: None)
    assert registry.datasets["mnist"].default_root is None  # the built-in is untouched
    with pytest.raises(registry.RegistryError, match="data set 'odd_t': kind must be one of classification, "
                                                     "regression, got 'images'"):
        register.dataset("odd_t", kind="images")(lambda root, split, params, seed: None)
    assert "odd_t" not in registry.datasets
