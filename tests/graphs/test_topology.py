"""Pure-tier tests of mpisim.graphs.topology: Erdős–Rényi graphs, and the checks of
BRIDGE's conditions (degree rule, honest connectivity, Assumption 4) on
hand-built graphs whose answers are worked out by hand, with every
counterexample verified by a plain BFS written here."""

import json
import math
import time
from collections import deque

import numpy as np
import pytest

from mpisim import seeding
from mpisim.graphs import topology as T
from mpisim.rules import screening

# --------------------------------------------------------------------------
# Hand-built graphs and an independent checker
# --------------------------------------------------------------------------

def ring(n):
    return T.from_edges(n, [(i, (i + 1) % n) for i in range(n)])


def complete(n):
    return ~np.eye(n, dtype=bool)


def two_cliques(size, bridges):
    """Two cliques of ``size`` nodes (0..size-1 and size..2size-1) joined by
    the edges (i, size + i) for i < bridges."""
    edges = [(i, j) for i in range(size) for j in range(i + 1, size)]
    edges += [(size + i, size + j) for i, j in edges]
    edges += [(i, size + i) for i in range(bridges)]
    return T.from_edges(2 * size, edges)


def reaching_all(nodes, arcs):
    """Nodes with a directed path to every node of ``nodes`` (BFS from each)."""
    out = {v: [] for v in nodes}
    for i, j in arcs:
        out[i].append(j)
    result = set()
    for start in nodes:
        seen, queue = {start}, deque([start])
        while queue:
            for w in out[queue.popleft()]:
                if w not in seen:
                    seen.add(w)
                    queue.append(w)
        if seen == set(nodes):
            result.add(start)
    return result


def assert_real_counterexample(adj, report):
    """The report's counterexample is a reduced graph (Definition 2) whose
    source component has fewer than b + 1 nodes."""
    b = report.b
    honest = [v for v in range(adj.shape[0]) if v not in report.byzantine]
    arcs = {(i, j) for i in honest for j in honest if adj[i, j]}
    removed = set(report.counterexample)
    assert removed <= arcs
    for j in honest:
        assert sum(1 for _, t in removed if t == j) <= b
    source = reaching_all(honest, arcs - removed)
    assert len(source) < b + 1
    assert source == set(report.counterexample_source)


# --------------------------------------------------------------------------
# Erdős–Rényi graphs
# --------------------------------------------------------------------------

def test_erdos_renyi_is_a_simple_undirected_graph():
    # Execute
    adj = T.erdos_renyi(50, 0.3, np.random.default_rng(1))
    # Assert
    assert adj.dtype == bool and adj.shape == (50, 50)
    assert np.array_equal(adj, adj.T)
    assert not np.diagonal(adj).any()


def test_erdos_renyi_edge_frequency_is_near_p():
    # Prepare: 19,900 pairs, each an edge with probability 0.3.
    n, p = 200, 0.3
    pairs = n * (n - 1) // 2
    # Execute
    edges = T.erdos_renyi(n, p, np.random.default_rng(7)).sum() // 2
    # Assert: within 5 standard deviations of the binomial mean.
    assert abs(edges - pairs * p) < 5 * np.sqrt(pairs * p * (1 - p))


def test_erdos_renyi_fills_the_upper_triangle_from_one_draw():
    # The saved graph of a run must be reproducible from its seed: pin the
    # order in which the uniforms are used.
    n, p = 9, 0.5
    expected = np.zeros((n, n), dtype=bool)
    rows, cols = np.triu_indices(n, k=1)
    keep = np.random.default_rng(3).random(rows.size) < p
    expected[rows[keep], cols[keep]] = True
    expected |= expected.T
    assert np.array_equal(T.erdos_renyi(n, p, np.random.default_rng(3)), expected)


def test_erdos_renyi_same_stream_same_graph():
    # Execute
    first = T.erdos_renyi(30, 0.5, seeding.numpy_generator(5, seeding.GRAPH, 0))
    again = T.erdos_renyi(30, 0.5, seeding.numpy_generator(5, seeding.GRAPH, 0))
    redraw = T.erdos_renyi(30, 0.5, seeding.numpy_generator(5, seeding.GRAPH, 1))
    # Assert
    assert np.array_equal(first, again)
    assert not np.array_equal(first, redraw)


def test_erdos_renyi_extremes_and_bad_p():
    assert not T.erdos_renyi(5, 0.0, np.random.default_rng(0)).any()
    assert np.array_equal(T.erdos_renyi(5, 1.0, np.random.default_rng(0)), complete(5))
    with pytest.raises(ValueError, match="p must be in"):
        T.erdos_renyi(5, 1.5, np.random.default_rng(0))


def test_neighbours_are_sorted_ids():
    adj = T.from_edges(4, [(2, 0), (0, 3), (1, 2)])
    got = T.neighbours(adj)
    assert [list(x) for x in got] == [[2, 3], [2], [0, 1], [0]]


def test_json_round_trip():
    # Prepare
    adj = two_cliques(3, 1)
    report = T.check(adj, b=1, byzantine=[])
    # Execute
    saved = json.loads(json.dumps(T.to_json(adj, report)))
    # Assert
    assert saved["n"] == 6 and saved["edges"][0] == [0, 1]
    assert np.array_equal(T.from_json(saved), adj)
    assert saved["report"]["assumption4"] == report.assumption4
    assert saved["report"]["counterexample"] == [list(e) for e in report.counterexample]


def test_bad_inputs_are_refused():
    asym = np.zeros((3, 3), dtype=bool)
    asym[0, 1] = True
    with pytest.raises(ValueError, match="symmetric"):
        T.check(asym, b=0, byzantine=[])
    with pytest.raises(ValueError, match="self loops"):
        T.check(np.eye(3, dtype=bool), b=0, byzantine=[])
    with pytest.raises(ValueError, match="distinct and in"):
        T.check(complete(3), b=1, byzantine=[3])
    with pytest.raises(ValueError, match="b must be"):
        T.check(complete(3), b=-1, byzantine=[])


# --------------------------------------------------------------------------
# Assumption 4 on hand-built graphs
# --------------------------------------------------------------------------

METHODS = ["subsets", "enumerate", "sample"]


@pytest.mark.parametrize("method", METHODS)
def test_ring_fails_for_b1(method):
    # A ring of 6: every node has 2 neighbours, so any arc of nodes hears
    # the rest through its two end nodes only, 1 edge each; two disjoint
    # arcs can both be cut off (b = 1), and no node reaches all others.
    # Execute
    report = T.check(ring(6), b=1, byzantine=[], method=method)
    # Assert: degree 2 is not > 2b either.
    assert report.assumption4 == "failed"
    assert not report.min_degree_ok and report.honest_connected and not report.ok
    assert_real_counterexample(ring(6), report)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("b", [1, 2])
def test_complete_graph_with_b_byzantine_needs_2b_plus_1_honest(method, b):
    # With k honest nodes in a clique, a set S can be cut off when
    # k - |S| <= b: Assumption 4 holds iff k >= 2b + 1, i.e. K_{3b+1} with
    # b Byzantine nodes passes and K_{3b} fails.
    # Execute
    passing = T.check(complete(3 * b + 1), b=b, byzantine=range(b), method=method)
    failing = T.check(complete(3 * b), b=b, byzantine=range(b), method=method)
    # Assert
    assert passing.assumption4 == "passed" and passing.ok
    assert failing.assumption4 == "failed" and not failing.ok
    assert_real_counterexample(complete(3 * b), failing)


def test_degree_rule_is_not_enough():
    # K_6 with 2 Byzantine nodes: every degree is 5 > 2b = 4 and the honest
    # K_4 is connected, but Assumption 4 fails (4 < 2b + 1 honest nodes).
    report = T.check(complete(6), b=2, byzantine=[0, 5])
    assert report.min_degree_ok and report.honest_connected
    assert report.assumption4 == "failed" and report.assumption4_detail.startswith("exact")
    assert not report.ok
    assert report.failures() == [f"Assumption 4 fails: {report.assumption4_detail}"]


@pytest.mark.parametrize("method", METHODS)
def test_bottleneck_fails_and_counterexample_is_real(method):
    # Two K_5 joined by one edge: min degree 4 > 2, connected, yet cutting
    # the bridge at both ends (one incoming edge each) splits the graph.
    # Prepare
    adj = two_cliques(5, 1)
    # Execute
    report = T.check(adj, b=1, byzantine=[], method=method, rng=np.random.default_rng(0),
                     max_reduced_graphs=2_000_000)   # brute force stops at the first failure
    # Assert
    assert report.min_degree_ok and report.honest_connected
    assert report.assumption4 == "failed" and not report.ok
    assert report.counterexample_source == ()
    assert_real_counterexample(adj, report)


def circulant(n, steps):
    return T.from_edges(n, [(i, (i + s) % n) for i in range(n) for s in steps])


@pytest.mark.parametrize("method", METHODS)
def test_squared_cycle_passes_b1_and_fails_b2(method):
    # C_8(1, 2): node i is joined to i +- 1 and i +- 2. With b = 1, let S be
    # a proper set whose nodes each have at most 1 neighbour outside it, r
    # outside and s = r + 1 inside. s's neighbour r - 1 must be inside, then
    # r - 1 forces r - 2, r - 3 in, and so on around the cycle: S = V - {r}.
    # Two such sets always meet and none has <= 1 node, so Assumption 4 holds.
    # With b = 2 any arc of >= 2 nodes can be cut off: two disjoint arcs fail.
    # Prepare
    adj = circulant(8, (1, 2))
    kwargs = dict(byzantine=[], method=method, rng=np.random.default_rng(0),
                  max_reduced_graphs=2_000_000)      # brute force stops at the first failure
    # Execute
    one, two = T.check(adj, b=1, **kwargs), T.check(adj, b=2, **kwargs)
    # Assert
    assert one.assumption4 == "passed" and one.ok
    assert two.assumption4 == "failed" and not two.ok
    assert_real_counterexample(adj, two)
    # One Byzantine node still leaves a graph that passes with b = 1.
    assert T.check(adj, b=1, byzantine=[0], method=method).assumption4 == "passed"


def test_forced_enumeration_respects_its_limit():
    with pytest.raises(ValueError, match="more than max_reduced_graphs = 1,000"):
        T.check(circulant(8, (1, 2)), b=1, byzantine=[], method="enumerate",
                max_reduced_graphs=1_000)


@pytest.mark.parametrize("method", METHODS)
def test_bowtie_fails_b1(method):
    # Triangles {0, 1, 2} and {0, 3, 4} sharing node 0. With b = 1, nodes 1
    # and 2 drop their edge from 0, nodes 3 and 4 likewise: {1, 2} and
    # {3, 4} no longer hear anyone outside, so no node reaches all others.
    # (Neither side's complement can be cut off: node 0 has 2 neighbours in
    # each side; the exact check must look inside complements.)
    # Prepare
    adj = T.from_edges(5, [(0, 1), (0, 2), (1, 2), (0, 3), (0, 4), (3, 4)])
    # Execute
    report = T.check(adj, b=1, byzantine=[], method=method, rng=np.random.default_rng(0))
    # Assert
    assert report.assumption4 == "failed"
    assert report.counterexample_source == ()
    assert_real_counterexample(adj, report)


def test_a_node_with_b_honest_neighbours_is_a_cheap_proof_of_failure():
    # Prepare: 30 nodes (beyond the exact check), dense, but node 30 hears
    # only nodes 0 and 1.
    adj = np.zeros((31, 31), dtype=bool)
    adj[:30, :30] = complete(30)
    adj[30, [0, 1]] = adj[[0, 1], 30] = True
    # Execute
    report = T.check(adj, b=2, byzantine=[], samples=0)
    # Assert
    assert report.assumption4 == "failed"
    assert report.assumption4_detail.startswith("honest node 30 has only 2 honest neighbours (b=2)")
    assert report.counterexample == ((0, 30), (1, 30)) and report.counterexample_source == (30,)
    assert_real_counterexample(adj, report)


def test_byzantine_nodes_do_not_count_towards_connectivity():
    # A path 0 - 1 - 2 with node 1 Byzantine leaves 0 and 2 apart.
    adj = T.from_edges(3, [(0, 1), (1, 2)])
    report = T.check(adj, b=1, byzantine=[1])
    assert not report.honest_connected and report.assumption4 == "failed"
    assert report.degrees == (1, 2, 1) and report.honest_only_degrees == (0, 2, 0)
    assert report.min_honest_degree == 1 and report.min_honest_only_degree == 0


def test_b0_is_connectivity():
    path = T.from_edges(4, [(0, 1), (1, 2), (2, 3)])
    split = T.from_edges(4, [(0, 1), (2, 3)])
    good = T.check(path, b=0, byzantine=[])
    bad = T.check(split, b=0, byzantine=[])
    assert good.ok and good.assumption4 == "passed"
    assert not bad.ok and bad.assumption4 == "failed" and not bad.honest_connected
    assert_real_counterexample(split, bad)


def test_fewer_than_b_plus_1_honest_nodes_fail():
    report = T.check(complete(3), b=3, byzantine=[])
    assert report.assumption4 == "failed"
    assert report.assumption4_detail.startswith(
        "there are only 3 honest nodes, fewer than b + 1 = 4")


def test_more_byzantine_nodes_than_b_is_reported_but_not_a_graph_failure():
    # Prepare: K_8 with 2 Byzantine nodes, b = 1 (a run exceeding b on purpose).
    # Execute
    report = T.check(complete(8), b=1, byzantine=[0, 1])
    # Assert: the graph itself is fine; the excess is reported for the caller.
    assert not report.byzantine_within_b
    assert report.ok and report.failures() == []


def test_exact_and_exhaustive_checks_agree_on_random_graphs():
    # The set-based exact check against brute force over every reduced
    # graph, on small random graphs dense enough that both verdicts occur.
    rng = np.random.default_rng(11)
    verdicts = []
    while len(verdicts) < 60:
        k, b = int(rng.integers(4, 8)), int(rng.integers(1, 3))
        adj = T.erdos_renyi(k, rng.uniform(0.6, 1.0), rng)
        degrees = adj.sum(axis=0)
        if math.prod(math.comb(d, min(b, d)) for d in degrees) > 20_000:
            continue      # keep brute force fast
        exact = T.check(adj, b=b, byzantine=[], method="subsets")
        brute = T.check(adj, b=b, byzantine=[], method="enumerate")
        assert exact.assumption4 == brute.assumption4, adj.astype(int)
        if exact.assumption4 == "failed":
            assert_real_counterexample(adj, exact)
            assert_real_counterexample(adj, brute)
        verdicts.append(exact.assumption4)
    assert verdicts.count("passed") >= 10 and verdicts.count("failed") >= 10


def test_auto_falls_back_to_sampling_then_to_not_checked():
    # Prepare: 30 honest nodes are beyond the exact check, and a dense graph
    # has far more than max_reduced_graphs reduced graphs.
    adj = T.erdos_renyi(30, 0.8, np.random.default_rng(2))
    # Execute
    sampled = T.check(adj, b=2, byzantine=[], samples=200)
    skipped = T.check(adj, b=2, byzantine=[], samples=0)
    # Assert
    assert sampled.assumption4 == "passed" and sampled.assumption4_detail.startswith("sampled")
    assert "evidence, not proof" in sampled.assumption4_detail
    assert skipped.assumption4 == "not checked" and "samples = 0" in skipped.assumption4_detail
    assert skipped.ok   # the degree rule and connectivity still vouch for it


# --------------------------------------------------------------------------
# The papers' settings and drawing
# --------------------------------------------------------------------------

def test_paper_setup_n100_p05_b10_passes_quickly():
    # BRIDGE Section 5.1: 100 nodes, p = 0.5, 10 random Byzantine nodes, b = 10.
    # Prepare
    adj = T.erdos_renyi(100, 0.5, seeding.numpy_generator(0, seeding.GRAPH, 0))
    byz = seeding.numpy_generator(0, seeding.BYZANTINE).choice(100, 10, replace=False)
    # Execute
    start = time.perf_counter()
    report = T.check(adj, b=10, byzantine=byz, p=0.5)
    seconds = time.perf_counter() - start
    # Assert
    assert report.min_degree_ok and report.min_honest_degree > 20
    assert report.honest_connected
    assert report.assumption4 in ("passed", "not checked")
    assert report.assumption4_detail.startswith(("sampled", "not checked"))
    assert report.ok
    assert seconds < 5


def test_cnn_setup_n10_p05_b1_is_exact_and_fast():
    # BRIDGE Section 5.2: 10 nodes, p = 0.5, 1 Byzantine node, b = 1.
    start = time.perf_counter()
    for seed in range(20):
        adj = T.erdos_renyi(10, 0.5, seeding.numpy_generator(seed, seeding.GRAPH, 0))
        report = T.check(adj, b=1, byzantine=[3])
        assert report.assumption4 == "failed" or report.assumption4_detail.startswith("exact")
    assert time.perf_counter() - start < 2


def test_draw_checked_redraws_until_a_graph_passes():
    # Seed 4: attempts 0 and 1 fail (minimum degree), attempt 2 passes.
    # Execute
    adj, report, attempt = T.draw_checked(10, 0.5, b=1, byzantine=[3], seed=4, redraw=5)
    # Assert
    assert attempt == 2 and report.ok
    assert np.array_equal(adj, T.erdos_renyi(10, 0.5, seeding.numpy_generator(4, seeding.GRAPH, 2)))
    first = T.erdos_renyi(10, 0.5, seeding.numpy_generator(4, seeding.GRAPH, 0))
    assert not T.check(first, b=1, byzantine=[3]).ok
    # Same arguments, same graph (what every rank relies on).
    again, _, _ = T.draw_checked(10, 0.5, b=1, byzantine=[3], seed=4, redraw=5)
    assert np.array_equal(adj, again)


def test_draw_checked_names_the_failing_degree():
    with pytest.raises(T.GraphError, match=r"minimum honest degree is \d+, BRIDGE with b=10 needs "
                                           r"more than 20.*graph\.redraw"):
        T.draw_checked(40, 0.3, b=10, byzantine=range(10), seed=0)


def test_draw_checked_names_assumption4():
    # A complete graph passes the degree rule but K_6 with b = 2 Byzantine
    # nodes fails Assumption 4 on every draw.
    with pytest.raises(T.GraphError, match="none of the 3 graphs.*Assumption 4 fails"):
        T.draw_checked(6, 1.0, b=2, byzantine=[0, 1], seed=0, redraw=2)


def test_draw_checked_accepts_more_byzantine_nodes_than_b():
    adj, report, attempt = T.draw_checked(20, 0.9, b=2, byzantine=[0, 1, 2], seed=0)
    assert attempt == 0 and report.ok and not report.byzantine_within_b


# --------------------------------------------------------------------------
# A screening's degree bound, and the cost of failed attempts
# --------------------------------------------------------------------------

BULYAN = screening.describe("bridge_b")


def test_required_degree_is_bridges_rule_raised_by_the_screening():
    assert T.required_degree(10) == 21
    assert T.required_degree(10, min_degree=42) == 42
    assert T.required_degree(2, min_degree=4) == 5        # 2b + 1 stays the floor
    assert T.required_degree(0, min_degree=0) == 1
    with pytest.raises(ValueError, match="min_degree must be an integer >= 0"):
        T.required_degree(1, min_degree=-1)


def test_a_screening_bound_fails_a_graph_bridge_accepts_and_is_named():
    # Prepare: K_8 with 2 Byzantine nodes passes for b = 2 (degree 7 > 4,
    # 6 >= 2b + 1 honest nodes), but Bulyan at b = 2 needs degree 10.
    adj = complete(8)
    # Execute
    plain = T.check(adj, b=2, byzantine=[0, 1])
    bulyan = T.check(adj, b=2, byzantine=[0, 1], min_degree=10, screen=BULYAN)
    # Assert
    assert plain.ok and plain.required_degree == 5 and plain.screen is None
    assert not bulyan.ok and not bulyan.min_degree_ok and bulyan.required_degree == 10
    assert bulyan.assumption4 == "passed"      # searched: stop_at_degree is off by default
    assert bulyan.failures() == [
        f"the minimum honest degree is 7, {BULYAN} with b=2 needs at least 10"]
    saved = json.loads(json.dumps(bulyan.as_dict()))
    assert saved["required_degree"] == 10 and saved["screen"] == BULYAN
    assert saved["min_honest_degree"] == 7 and saved["min_degree_ok"] is False


def test_a_screening_bound_below_bridges_rule_keeps_bridges_message():
    # bridge_m needs only m >= 2b = 2; BRIDGE's degree > 2b still rules.
    report = T.check(ring(6), b=1, byzantine=[], min_degree=2, screen="bridge_m")
    assert report.required_degree == 3 and not report.min_degree_ok
    assert report.failures()[0] == "the minimum honest degree is 2, BRIDGE with b=1 needs more than 2"


def test_draw_checked_names_the_screening_bound():
    # The same graphs pass BRIDGE's degree > 20 but not Bulyan's 42 at b = 10.
    kwargs = dict(b=10, byzantine=range(10), seed=0)
    _, report, attempt = T.draw_checked(60, 0.6, **kwargs)
    assert attempt == 0 and report.ok and report.min_honest_degree == 26
    with pytest.raises(T.GraphError, match=r"the minimum honest degree is 26, bridge_b \(Bulyan: "
                                           r"m >= 4b \+ 2\) with b=10 needs at least 42\."):
        T.draw_checked(60, 0.6, **kwargs, min_degree=screening.min_degree("bridge_b", 10),
                       screen=screening.describe("bridge_b"))


def test_draw_checked_refuses_at_once_a_degree_no_graph_of_n_nodes_has():
    with pytest.raises(T.GraphError, match=r"at most n - 1 = 19 neighbours, and bridge_b \(Bulyan: "
                                           r"m >= 4b \+ 2\) with b=10 needs at least 42"):
        T.draw_checked(20, 0.5, b=10, byzantine=[], seed=0, redraw=T.MAX_REDRAW,
                       min_degree=42, screen=BULYAN)
    with pytest.raises(T.GraphError, match=r"n - 1 = 5 neighbours, and BRIDGE with b=3 needs more "
                                           r"than 6"):
        T.draw_checked(6, 1.0, b=3, byzantine=[], seed=0)


def test_stop_at_degree_skips_the_search_but_keeps_the_cheap_proofs():
    # A ring of 6 fails the degree rule for b = 1; the search would also
    # find Assumption 4 failing (test_ring_fails_for_b1).
    quick = T.check(ring(6), b=1, byzantine=[], stop_at_degree=True)
    assert quick.assumption4 == "not checked" and not quick.ok
    assert quick.assumption4_detail == ("not searched: the degree rule fails already "
                                        "(minimum honest degree 2 < 3)")
    assert quick.failures() == ["the minimum honest degree is 2, BRIDGE with b=1 needs more than 2"]
    # A disconnected graph is still a proof of failure, found for free.
    split = T.check(T.from_edges(4, [(0, 1), (2, 3)]), b=1, byzantine=[], stop_at_degree=True)
    assert split.assumption4 == "failed" and not split.honest_connected


def _must_not_run(*args, **kwargs):
    raise AssertionError("this must not run")


def test_draw_checked_never_searches_a_graph_that_fails_the_degree_rule(monkeypatch):
    # Prepare: G(22, 0.5) has honest degree ~10 < 2b + 1 = 11 for b = 5;
    # such graphs used to run the exact search over 2^22 sets (~0.14 s).
    for name in ("_assumption4_subsets", "_assumption4_enumerate", "_assumption4_sample"):
        monkeypatch.setattr(T, name, _must_not_run)
    # Execute / Assert
    with pytest.raises(T.GraphError, match="none of the 51 graphs"):
        T.draw_checked(22, 0.5, b=5, byzantine=[], seed=0, redraw=50)


def test_the_cheap_path_does_not_change_which_attempt_passes():
    # draw_checked skips reports of graphs failing the degree rule: it must
    # still return the first attempt that check() accepts.
    for seed in range(6):
        _, report, attempt = T.draw_checked(10, 0.5, b=1, byzantine=[3], seed=seed, redraw=30)
        first = next(a for a in range(31) if T.check(
            T.erdos_renyi(10, 0.5, seeding.numpy_generator(seed, seeding.GRAPH, a)), b=1,
            byzantine=[3], rng=seeding.numpy_generator(seed, seeding.GRAPH, a, 1)).ok)
        assert attempt == first and report.ok


def test_redraw_is_bounded(monkeypatch):
    # Beyond MAX_REDRAW the call fails before drawing anything.
    monkeypatch.setattr(T, "erdos_renyi", _must_not_run)
    with pytest.raises(ValueError, match=r"redraw must be at most MAX_REDRAW = 1,000, got 1,000,000"):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=1_000_000)
    with pytest.raises(ValueError, match="redraw must be an integer"):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=2.5)
    with pytest.raises(ValueError, match="redraw must be >= 0"):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=-1)


def test_redraw_up_to_the_bound_fails_fast_on_a_hopeless_p():
    # 1,001 attempts at p = 0.01: each fails on its degrees (~0.03 ms).
    start = time.perf_counter()
    with pytest.raises(T.GraphError, match=f"none of the {T.MAX_REDRAW + 1} graphs"):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=T.MAX_REDRAW)
    assert time.perf_counter() - start < 2


def test_progress_is_called_every_progress_every_failed_attempts():
    # Prepare
    calls = []
    # Execute
    with pytest.raises(T.GraphError):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=2 * T.PROGRESS_EVERY + 50,
                       progress=lambda done, total, report: calls.append((done, total, report)))
    # Assert
    total = 2 * T.PROGRESS_EVERY + 51
    assert [(done, t) for done, t, _ in calls] == [(T.PROGRESS_EVERY, total),
                                                    (2 * T.PROGRESS_EVERY, total)]
    assert all(isinstance(r, T.GraphReport) and not r.ok for _, _, r in calls)


def test_progress_may_stop_the_search():
    class Stop(Exception):
        pass

    def stop(done, total, report):
        raise Stop(done)

    with pytest.raises(Stop, match=str(T.PROGRESS_EVERY)):
        T.draw_checked(20, 0.01, b=1, byzantine=[], seed=0, redraw=T.MAX_REDRAW, progress=stop)


# ---------------------------------------------------------------- graph.kind: the other topologies


def degrees(adj):
    return sorted(adj.sum(axis=1).tolist())


def connected(adj):
    reach = np.eye(len(adj), dtype=bool)[0]
    for _ in range(len(adj)):
        reach = reach | adj[reach].any(axis=0)
    return bool(reach.all())


def test_a_ring_joins_each_node_to_those_within_its_hops():
    one, two = T.ring(6), T.ring(7, hops=2)

    assert T.edge_list(one).tolist() == [[0, 1], [0, 5], [1, 2], [2, 3], [3, 4], [4, 5]]
    assert degrees(two) == [4] * 7 and two[0, 2] and two[0, 5] and not two[0, 3]
    with pytest.raises(ValueError, match="hops"):
        T.ring(6, hops=3)  # node 0 would meet node 3 from both sides


def test_a_torus_is_the_most_square_grid_with_wrap_around():
    assert T.torus_shape(12) == (3, 4) and T.torus_shape(36) == (6, 6)
    assert T.torus_shape(12, rows=4) == (4, 3) and T.torus_shape(12, rows=2) is None
    assert T.torus_shape(13) is None and T.torus_shape(8) is None  # prime; too small

    adj = T.torus(12)  # 3 rows of 4: node 0's neighbours are 1, 3 (its row) and 4, 8 (its column)
    assert degrees(adj) == [4] * 12 and np.flatnonzero(adj[0]).tolist() == [1, 3, 4, 8]
    with pytest.raises(ValueError, match="no torus"):
        T.torus(13)


def test_two_cliques_are_joined_by_a_path_of_bridge_nodes():
    # cliques {0, 1, 2} and {3, 4, 5}, path 5 - 6 - 7 - 0
    adj = T.two_cliques(8, bridge_nodes=2)

    assert T.edge_list(adj).tolist() == [[0, 1], [0, 2], [0, 7], [1, 2], [3, 4], [3, 5], [4, 5], [5, 6],
                                                [6, 7]]
    assert T.edge_list(T.two_cliques(6)).tolist()[-1] == [4, 5] and T.two_cliques(6)[0, 5]
    with pytest.raises(ValueError, match="even"):
        T.two_cliques(7)


def test_a_dumbbell_has_its_bridge_and_the_extra_edges_drawn_from_the_seed():
    plain = T.dumbbell(8, 0, np.random.default_rng(0))
    more = T.dumbbell(8, 3, np.random.default_rng(5))

    between = lambda adj: int(adj[:4, 4:].sum())  # noqa: E731
    assert between(plain) == 1 and plain[0, 7] and degrees(plain) == [3, 3, 3, 3, 3, 3, 4, 4]
    assert between(more) == 4 and more[0, 7]
    assert np.array_equal(more, T.dumbbell(8, 3, np.random.default_rng(5)))
    assert T.complete(5).sum() == 20


def test_an_edge_list_file_is_read_with_comments_and_refused_with_the_line(tmp_path):
    good = tmp_path / "g.txt"
    good.write_text("# a triangle and a tail\n0 1\n1,2\n2\t0  # closing\n\n2 3\n")
    assert T.edge_list(T.read_edge_list(str(good), 4)).tolist() == [[0, 1], [0, 2], [1, 2], [2, 3]]

    for text, words in [("0 1\n1 x\n", "line 2: expected two node ids"), ("0 4\n", "line 1: node ids must be in"),
                        ("2 2\n", "line 1: a self loop"), ("# nothing\n", "no edges")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            T.read_edge_list(str(bad), 4)


@pytest.mark.parametrize("adj", [
    T.ring(9, hops=2), T.torus(16), T.complete(5), T.two_cliques(10, 2),
    T.dumbbell(10, 2, np.random.default_rng(1)), T.erdos_renyi(20, 0.3, np.random.default_rng(2)),
], ids=["ring", "torus", "complete", "two_cliques", "dumbbell", "erdos_renyi"])
def test_the_metropolis_weights_are_doubly_stochastic_on_the_graph(adj):
    weights = T.metropolis_weights(adj)

    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.array_equal(weights, weights.T) and (np.diag(weights) >= 0).all()
    assert ((weights > 0) == (adj | np.eye(len(adj), dtype=bool))).all()
    gap = T.spectral_gap(weights)
    assert (0 < gap <= 1) == connected(adj)


def test_the_spectral_gap_by_hand():
    # complete graph of n: W = J / n, eigenvalues 1 and 0: gap 1. Ring of 4: W has 1/3 everywhere on
    # the diagonal and the edges, eigenvalues 1, 1/3, 1/3 and -1/3: gap 2/3.
    assert T.spectral_gap(T.metropolis_weights(T.complete(6))) == pytest.approx(1.0)
    ring = T.metropolis_weights(T.ring(4))
    np.testing.assert_allclose(ring[0], [1 / 3, 1 / 3, 0, 1 / 3])
    assert T.spectral_gap(ring) == pytest.approx(2 / 3)
    # two triangles joined by one edge: the bottleneck makes the gap small
    assert T.spectral_gap(T.metropolis_weights(T.two_cliques(6))) < 0.3
