"""Partitions of the training set across agents: iid, dirichlet, label_shards."""

import numpy as np
import pytest

from mpisim import datasets as data
from mpisim.datasets.partition import MAX_ATTEMPTS, PARTITIONS, partition


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


@pytest.mark.parametrize("name", PARTITIONS)
@pytest.mark.parametrize("subset", [0, 2500])
def test_shards_are_sorted_disjoint_nonempty_and_cover_the_subset(name, subset):
    labels = small_labels()

    result = partition(name, num_samples=len(labels), labels=labels, num_agents=10, seed=4,
                            subset=subset, alpha=0.3)

    shards = result.shards
    assert len(shards) == 10 and all(len(s) >= 1 for s in shards)
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # disjoint
    expected = np.arange(6000) if not subset else np.sort(old_iid_partition(6000, 1, 4, subset)[0])
    np.testing.assert_array_equal(np.sort(union), expected)  # the same subset for every scheme


@pytest.mark.parametrize("name", PARTITIONS)
def test_partitions_depend_only_on_their_arguments(name):
    labels = small_labels()
    kwargs = dict(num_samples=len(labels), labels=labels, num_agents=8, alpha=0.5)

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
                            seed=0, alpha=1000.0)

    for shard in result.shards:
        assert np.abs(class_shares(labels, shard) - overall).max() < 0.02
        assert abs(len(shard) - 600) < 40


def test_dirichlet_with_small_alpha_gives_each_agent_few_classes():
    labels = small_labels()
    kwargs = dict(num_samples=len(labels), labels=labels, num_agents=10, seed=0)

    skewed = partition("dirichlet", alpha=0.1, **kwargs)
    iid = partition("iid", **kwargs)

    skewed_top2 = np.array([top_share(labels, s, 2) for s in skewed.shards])
    iid_top2 = np.array([top_share(labels, s, 2) for s in iid.shards])
    assert skewed_top2.mean() > 0.7 and (skewed_top2 > 0.7).sum() >= 7
    assert iid_top2.max() < 0.3
    assert all(len(s) >= 1 for s in skewed.shards)


def test_dirichlet_redraws_until_every_agent_has_min_size_and_records_the_attempt():
    labels = small_labels()

    result = partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=20,
                            seed=0, alpha=0.1, min_size=50)

    assert result.attempt > 0
    assert result.sizes().min() >= 50
    first = partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=20,
                           seed=0, alpha=0.1, min_size=0)
    assert first.attempt == 0 and first.sizes().min() < 50


def test_dirichlet_gives_up_after_bounded_attempts_and_says_what_to_change():
    labels = small_labels()

    with pytest.raises(data.DataError) as info:
        partition("dirichlet", num_samples=len(labels), labels=labels, num_agents=50, seed=0,
                       alpha=0.01, min_size=100)

    message = str(info.value)
    assert f"best of {MAX_ATTEMPTS} draws" in message and "agent " in message
    assert "min_size 100" in message and "data.alpha" in message and "fewer agents" in message


def test_label_shards_on_a_hand_worked_example():
    # 12 samples, 4 classes of 3; 2 agents x 2 shards of 3: every shard is one class.
    labels = np.array([3, 0, 1, 2, 0, 3, 1, 2, 0, 1, 3, 2])

    result = partition("label_shards", num_samples=12, labels=labels, num_agents=2, seed=0,
                            shards_per_agent=2)

    for shard in result.shards:
        assert len(shard) == 6 and len(set(labels[shard].tolist())) == 2
        for c in set(labels[shard].tolist()):  # a class comes whole
            assert (labels[shard] == c).sum() == 3


def test_label_shards_follow_mcmahan_on_the_real_mnist_labels(mnist_dir):
    labels = data.labels("mnist", mnist_dir, "train")

    result = partition("label_shards", num_samples=len(labels), labels=labels, num_agents=100,
                            seed=0, shards_per_agent=2)

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
                       shards_per_agent=1, min_size=3)


def test_bad_arguments_are_refused():
    labels = np.zeros(20, dtype=np.int64)
    common = dict(num_samples=20, labels=labels, num_agents=4, seed=0)

    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition("dirichlet", alpha=0.0, **common)
    with pytest.raises(ValueError, match="shards_per_agent must be an integer >= 1"):
        partition("label_shards", shards_per_agent=0, **common)
    with pytest.raises(ValueError, match="more than the 20 samples"):
        partition("label_shards", shards_per_agent=6, **common)
    with pytest.raises(ValueError, match="unknown partition 'shards'; known: iid, dirichlet, label_shards"):
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
    # Callers write datasets.partition.partition(...) and datasets.partition.PARTITIONS.
    assert data.partition.partition is partition and data.partition.PARTITIONS == PARTITIONS
    assert data.PARTITIONS == ("iid", "dirichlet", "label_shards") and data.Partition is data.partition.Partition
