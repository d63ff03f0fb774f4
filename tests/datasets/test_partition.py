"""Partitions of the training set across agents: iid, dirichlet, label_shards, and a user's."""

import numpy as np
import pytest

from mpisim import config, register, registry
from mpisim import datasets as data
from mpisim.config import ConfigError
from mpisim.datasets.partition import MAX_ATTEMPTS, PARTITIONS, partition
from mpisim.protocols.server_config import ServerModeConfig

BUILT_INS = ("iid", "dirichlet", "label_shards")


def small_labels():
    return data.labels("mnist-small", "", "train")


def old_iid_partition(num_samples, num_agents, seed, subset=0):
    # The iid partition as it was before partitions got their own module (reference).
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    perm = rng.permutation(num_samples)[:subset or num_samples]
    return [np.sort(part) for part in np.array_split(perm, num_agents)]


def class_shares(labels, shard, num_classes=10):
    counts = np.bincount(labels[shard], minlength=num_classes)
    return counts / counts.sum()


def top_share(labels, shard, k):
    return np.sort(class_shares(labels, shard))[::-1][:k].sum()


@pytest.mark.parametrize("num_samples, num_agents, seed, subset",
                         [(6000, 10, 1, 0), (103, 10, 7, 0), (6000, 7, 3, 1000), (60000, 200, 5, 0)])
def test_iid_is_bit_identical_to_the_old_iid_partition(num_samples, num_agents, seed, subset):
    expected = old_iid_partition(num_samples, num_agents, seed, subset)

    got = partition("iid", num_samples=num_samples, labels=None, num_agents=num_agents,
                    seed=seed, subset=subset)

    assert got.attempt == 0 and len(got.shards) == num_agents
    for a, b in zip(got.shards, expected):
        assert a.dtype == np.int64 and np.array_equal(a, b)


@pytest.mark.parametrize("name", BUILT_INS)
@pytest.mark.parametrize("subset", [0, 2500])
def test_shards_are_sorted_disjoint_nonempty_and_cover_the_subset(name, subset):
    labels = small_labels()

    result = partition(name, num_samples=len(labels), labels=labels, num_agents=10, seed=4,
                       subset=subset, params={"alpha": 0.3} if name == "dirichlet" else None)

    shards = result.shards
    assert len(shards) == 10 and all(len(s) >= 1 for s in shards)
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # disjoint
    expected = np.arange(6000) if not subset else np.sort(old_iid_partition(6000, 1, 4, subset)[0])
    np.testing.assert_array_equal(np.sort(union), expected)  # the same subset for every scheme


@pytest.mark.parametrize("name", BUILT_INS)
def test_partitions_depend_only_on_their_arguments(name):
    labels = small_labels()
    kwargs = dict(num_samples=len(labels), labels=labels, num_agents=8)

    first = partition(name, seed=11, **kwargs)
    again = partition(name, seed=11, **kwargs)
    other = partition(name, seed=12, **kwargs)

    assert first.attempt == again.attempt
    assert all(np.array_equal(a, b) for a, b in zip(first.shards, again.shards))
    assert not all(np.array_equal(a, b) for a, b in zip(first.shards, other.shards))


def test_dirichlet_with_large_alpha_is_close_to_iid():
    labels = small_labels()
    overall = np.bincount(labels, minlength=10) / len(labels)

    result = partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=10,
                       seed=0, params={"alpha": 1000.0})

    for shard in result.shards:
        assert np.abs(class_shares(labels, shard) - overall).max() < 0.02
        assert abs(len(shard) - 600) < 40


def test_dirichlet_with_small_alpha_gives_each_agent_few_classes():
    labels = small_labels()
    kwargs = dict(num_samples=len(labels), labels=labels, num_agents=10, seed=0)

    skewed = partition("dirichlet", params={"alpha": 0.1}, **kwargs)
    iid = partition("iid", **kwargs)

    skewed_top2 = np.array([top_share(labels, s, 2) for s in skewed.shards])
    iid_top2 = np.array([top_share(labels, s, 2) for s in iid.shards])
    assert skewed_top2.mean() > 0.7 and (skewed_top2 > 0.7).sum() >= 7
    assert iid_top2.max() < 0.3
    assert all(len(s) >= 1 for s in skewed.shards)


def test_dirichlet_redraws_until_every_agent_has_min_size_and_records_the_attempt():
    labels = small_labels()

    result = partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=20,
                       seed=0, params={"alpha": 0.1}, min_size=50)

    assert result.attempt > 0
    assert result.sizes().min() >= 50
    first = partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=20,
                      seed=0, params={"alpha": 0.1}, min_size=0)
    assert first.attempt == 0 and first.sizes().min() < 50


def test_dirichlet_gives_up_after_bounded_attempts_and_says_what_to_change():
    labels = small_labels()

    with pytest.raises(data.DataError) as info:
        partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=50, seed=0,
                  params={"alpha": 0.01}, min_size=100)

    message = str(info.value)
    assert f"best of {MAX_ATTEMPTS} draws" in message and "agent " in message
    assert "min_size 100" in message and "data.partition_params.alpha" in message and "fewer agents" in message


def test_label_shards_on_a_hand_worked_example():
    # 12 samples, 4 classes of 3; 2 agents x 2 shards of 3: every shard is one class.
    labels = np.array([3, 0, 1, 2, 0, 3, 1, 2, 0, 1, 3, 2])

    result = partition("label_shards", num_samples=12, labels=labels, num_agents=2, seed=0,
                       params={"shards_per_agent": 2})

    for shard in result.shards:
        assert len(shard) == 6 and len(set(labels[shard].tolist())) == 2
        for c in set(labels[shard].tolist()):  # a class comes whole
            assert (labels[shard] == c).sum() == 3


def test_label_shards_follow_mcmahan_on_the_real_mnist_labels(mnist_dir):
    labels = data.labels("mnist", mnist_dir, "train")

    result = partition("label_shards", num_samples=len(labels), labels=labels, num_agents=100, seed=0)

    # McMahan et al. 2017: 200 shards of 300 sorted digits, 2 per client.
    assert all(len(s) == 600 for s in result.shards)
    classes = np.array([len(np.unique(labels[s])) for s in result.shards])
    # A shard is one class unless it straddles a class boundary (9 of the 200
    # do on MNIST: no class count is a multiple of 300), so an agent has at
    # most 2 classes, except those holding a straddling shard.
    straddling = int(np.sum(np.cumsum(np.bincount(labels))[:-1] % 300 != 0))
    assert classes.max() <= 4
    assert (classes <= 2).sum() >= 100 - straddling
    assert (classes <= 2).sum() >= 90


def test_every_partition_refuses_a_shard_below_min_size_naming_the_agent():
    labels = np.repeat(np.arange(5), 2)

    with pytest.raises(data.DataError, match="iid partition: agent 1 gets 3 samples, fewer than min_size 4"):
        partition("iid", num_samples=10, labels=None, num_agents=3, seed=0, min_size=4)
    with pytest.raises(data.DataError, match="label_shards partition: agent \\d gets 2 samples"):
        partition("label_shards", num_samples=10, labels=labels, num_agents=5, seed=0,
                  params={"shards_per_agent": 1}, min_size=3)


def test_bad_arguments_are_refused():
    labels = np.zeros(20, dtype=np.int64)
    common = dict(num_samples=20, labels=labels, num_agents=4, seed=0)

    with pytest.raises(ValueError, match="data.partition_params.alpha: must be a positive number, got 0.0"):
        partition("dirichlet", params={"alpha": 0.0}, **common)
    with pytest.raises(ValueError, match="data.partition_params.shards_per_agent: must be an integer >= 1, got 0"):
        partition("label_shards", params={"shards_per_agent": 0}, **common)
    with pytest.raises(ValueError, match="more than the 20 samples"):
        partition("label_shards", params={"shards_per_agent": 6}, **common)
    with pytest.raises(ValueError, match="partition 'iid' has no parameter 'alpha'; accepted: none"):
        partition("iid", params={"alpha": 0.5}, **common)
    with pytest.raises(ValueError, match="unknown partition 'shards'; known partitions: dirichlet, iid, label_shards"):
        partition("shards", **common)
    with pytest.raises(ValueError, match="needs the labels"):
        partition("dirichlet", num_samples=20, labels=None, num_agents=4, seed=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(21,\)"):
        partition("dirichlet", num_samples=21, labels=labels, num_agents=4, seed=0)
    with pytest.raises(data.DataError, match="3 samples cannot give each of 4 agents a shard"):
        partition("iid", num_samples=3, labels=None, num_agents=4, seed=0)
    with pytest.raises(data.DataError, match="a subset of 30 samples is larger than the 20 available"):
        partition("iid", subset=30, **common)


def test_the_partition_module_is_what_the_package_exposes():
    # Callers write datasets.partition.partition(...); the partitions are the one registry's.
    assert data.partition.partition is partition and data.PARTITIONS is PARTITIONS is registry.partitions
    assert set(BUILT_INS) <= set(PARTITIONS) and data.Partition is data.partition.Partition


# ---------------------------------------------------------------- the same partitions as before the registry

# Computed with the code before the partitions were registered (data.alpha, data.shards_per_agent):
# sizes and the sum of each agent's sample indices on mnist-small, 10 agents.
BEFORE = {
    ("--data.partition", "dirichlet"): (
        0, [414, 915, 709, 384, 637, 318, 725, 669, 625, 604],
        [1247262, 2790197, 2122553, 1141110, 1955604, 959226, 2144479, 2007631, 1851818, 1777120]),
    ("--data.partition", "dirichlet", "--data.partition_params.alpha", "0.2", "--run.seed", "5"): (
        1, [437, 631, 998, 650, 578, 523, 611, 422, 440, 710],
        [1314326, 1877381, 2997875, 1943078, 1742092, 1552768, 1840392, 1231184, 1324152, 2173752]),
    ("--data.partition", "label_shards"): (
        0, [600] * 10,
        [1870705, 1073995, 2646469, 1676023, 2319833, 1782018, 1978997, 1783868, 1818977, 1046115]),
    ("--data.partition", "label_shards", "--data.partition_params.shards_per_agent", "3",
     "--data.train_size", "3000"): (
        0, [300] * 10, [747152, 1107929, 774521, 963969, 808585, 1109894, 882446, 530267, 845524, 1003376]),
}


def server_config(*args):
    cfg, _ = config.parse_args(ServerModeConfig, [*args, "--agents.n", "10"], prog="t", description="t")
    return cfg


@pytest.mark.parametrize("args", list(BEFORE))
def test_a_config_gives_the_same_partition_as_before_the_registry(args):
    attempt, sizes, index_sums = BEFORE[args]
    cfg = server_config(*args)
    labels = small_labels()

    config.validate_problem(cfg, num_shards=10)
    result = config.make_partition(cfg, 10, labels=labels, num_samples=len(labels))

    assert result.attempt == attempt and result.sizes().tolist() == sizes
    assert [int(s.sum()) for s in result.shards] == index_sums


@pytest.mark.parametrize("old, new", [("alpha", "--data.partition_params.alpha"),
                                      ("shards_per_agent", "--data.partition_params.shards_per_agent")])
def test_the_removed_fields_say_where_they_went(tmp_path, old, new):
    with pytest.raises(ConfigError) as info:
        server_config(f"--data.{old}", "2")
    assert info.value.field == f"data.{old}" and "no longer a field: " in str(info.value) and new in str(info.value)
    (tmp_path / "old.toml").write_text(f"[data]\n{old} = 2\n")
    with pytest.raises(ConfigError, match=f"data.{old}: no longer a field: .*{new}"):
        server_config("--config", str(tmp_path / "old.toml"))


@pytest.mark.parametrize("args, field, message", [
    (("--data.partition", "nope"), "data.partition",
     "unknown partition 'nope'; known partitions: dirichlet, iid, label_shards"),
    (("--data.partition", "dirichlet", "--data.partition_params.beta", "1"), "data.partition_params.beta",
     "partition 'dirichlet' has no parameter 'beta'; accepted: alpha=0.5"),
    (("--data.partition_params.alpha", "0.1"), "data.partition_params.alpha",
     "partition 'iid' has no parameter 'alpha'; accepted: none"),
    (("--data.partition", "dirichlet", "--data.partition_params.alpha", "-1"), "data.partition_params.alpha",
     "must be a positive number, got -1"),
    (("--data.partition", "dirichlet", "--data.partition_params.alpha", "inf"), "data.partition_params.alpha",
     "must be a positive number, got inf"),
    (("--data.partition", "label_shards", "--data.partition_params.shards_per_agent", "1.5"),
     "data.partition_params.shards_per_agent", "must be an integer >= 1, got 1.5"),
    (("--data.partition", "label_shards", "--data.partition_params.shards_per_agent", "601"), "data.partition",
     "label_shards: 10 agents x 601 shards = 6010 shards, more than the 6000 samples"),
    (("--data.name", "synthetic_regression", "--model.name", "least_squares", "--data.partition", "dirichlet"),
     "data.partition", "dirichlet needs class labels, but synthetic_regression is a regression data set; "
                       "partitions that need none: iid"),
])
def test_partition_params_are_checked_against_the_chosen_partition(args, field, message):
    cfg = server_config(*args)
    with pytest.raises(ConfigError) as info:
        config.validate_problem(cfg, num_shards=10)
    assert info.value.field == field and message in str(info.value)


# ---------------------------------------------------------------- a user's partition


@pytest.fixture
def scratch():
    """Partitions a test registers, removed afterwards (the registry is per process)."""
    names = []
    yield names
    for name in names:
        registry.partitions.remove(name)


def test_a_users_partition_is_dispatched_checked_and_held_to_the_contract(scratch):
    seen = {}

    @register.partition("every_kth_t", needs_labels=False, reference="a test",
                        check=lambda p: None if p["k"] >= 1 else ("k", f"must be >= 1, got {p['k']}"))
    def every_kth(pool, labels, num_agents, seed, *, k: int = 1, min_size):
        """Deal the sorted pool round robin, k samples at a time."""
        seen.update(pool=pool, labels=labels, min_size=min_size)
        owner = (np.arange(len(pool)) // k) % num_agents
        ordered = np.sort(pool)
        return [ordered[owner == i] for i in range(num_agents)]

    @register.partition("broken_t", needs_labels=False)
    def broken(pool, labels, num_agents, seed, *, overlap: bool = True):
        shards = np.array_split(pool, num_agents)
        return [np.concatenate((s, shards[0][:1])) for s in shards] if overlap else shards[1:]

    scratch.extend(["every_kth_t", "broken_t"])
    entry = registry.partitions.entry("every_kth_t")
    assert entry.params == {"k": 1} and entry.properties == {"needs_labels": False, "min_size": True}
    assert entry.description == "Deal the sorted pool round robin, k samples at a time."
    assert entry.origin == __name__ and entry.reference == "a test"
    assert registry.partitions.entry("broken_t").properties["min_size"] is False

    result = partition("every_kth_t", num_samples=20, labels=None, num_agents=3, seed=1, subset=12,
                       min_size=2, params={"k": 2})

    subset = np.random.default_rng(np.random.SeedSequence(1, spawn_key=(0,))).permutation(20)[:12]
    assert np.array_equal(seen["pool"], subset)  # the seeded subset, in its seeded order
    assert seen["labels"] is None and seen["min_size"] == 2
    ordered = np.sort(subset)
    assert [s.tolist() for s in result.shards] == [ordered[[0, 1, 6, 7]].tolist(), ordered[[2, 3, 8, 9]].tolist(),
                                                   ordered[[4, 5, 10, 11]].tolist()]
    with pytest.raises(ValueError, match="data.partition_params.k: must be >= 1, got 0"):
        partition("every_kth_t", num_samples=20, labels=None, num_agents=3, seed=1, params={"k": 0})
    with pytest.raises(data.DataError, match="every_kth_t partition: agent 2 gets 6 samples, fewer than min_size 7"):
        partition("every_kth_t", num_samples=20, labels=None, num_agents=3, seed=1, min_size=7)
    with pytest.raises(data.DataError, match="partition 'broken_t' returned shards that are not disjoint"):
        partition("broken_t", num_samples=20, labels=None, num_agents=3, seed=1)
    with pytest.raises(data.DataError, match="partition 'broken_t' returned 2 shards for 3 agents"):
        partition("broken_t", num_samples=20, labels=None, num_agents=3, seed=1, params={"overlap": False})


def test_a_partition_name_is_taken_once_and_its_parameters_need_defaults(scratch):
    with pytest.raises(registry.RegistryError, match="partition 'iid' is registered twice: by mpisim and by mine.py"):
        with registry.origin("mine.py"):
            register.partition("iid", needs_labels=False)(lambda pool, labels, num_agents, seed: [pool])
    with pytest.raises(registry.RegistryError, match="parameter 'k' of needs_k needs a default"):
        @register.partition("needs_k_t", needs_labels=False)
        def needs_k(pool, labels, num_agents, seed, *, k):
            return [pool]
    with pytest.raises(registry.RegistryError, match="needs_labels must be True or False"):
        register.partition("labels_t", needs_labels="yes")(lambda pool, labels, num_agents, seed: [pool])
    assert "needs_k_t" not in registry.partitions and "labels_t" not in registry.partitions
