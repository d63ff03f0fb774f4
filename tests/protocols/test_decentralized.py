"""Decentralized mode: the plan (pure) and python -m mpisim.decentralized for real (MPI tier)."""

import json
import math

import numpy as np
import pytest
import torch

from mpisim import metrics
from mpisim.graphs.exchange import GraphPlan, MessagePool
from mpisim.placement import Placement

ENTRY = ["-m", "mpisim.decentralized"]
SMALL = ["--run.progress", "false", "--data.test_size", "300"]


def ring_plus_chords(n):
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for step in (1, 2):
            adj[i, (i + step) % n] = adj[(i + step) % n, i] = True
    return adj


def test_one_rank_reads_every_neighbour_from_memory():
    plan = GraphPlan(Placement(6, 6), frozenset({2}), True, ring_plus_chords(6))
    state = MessagePool(plan, 0, d=3)

    assert state.send_rows == {} and state.recv_keys == {}
    # Node 2 (two-faced) has 4 neighbours: 4 message rows after the 6 models.
    assert sorted(state.message_row) == [(2, 0), (2, 1), (2, 3), (2, 4)]
    for k in range(6):
        state.models[k].fill_(float(k))
    for (_, j), row in state.message_row.items():
        state.pool[row].fill_(100.0 + j)

    received = state.received(0)[:, 0].tolist()  # neighbours of 0: 1, 2, 4, 5

    assert received == [1.0, 100.0, 4.0, 5.0]


def test_two_ranks_split_rows_and_keep_neighbour_order():
    plan = GraphPlan(Placement(6, 3), frozenset({4}), False, ring_plus_chords(6))
    first, second = MessagePool(plan, 0, d=2), MessagePool(plan, 1, d=2)

    # Rank 0 sends node 0 (neighbour of 4, 5), node 1 (of 5) and node 2 (of 3, 4): one row each.
    assert first.send_rows == {1: [0, 1, 2]}
    # Rank 1 sends node 3 (honest, model row 0) and Byzantine node 4 (its one message row) and node 5.
    assert second.send_rows == {0: [0, 3, 2]}
    assert second.recv_keys == {0: [(0, -1), (1, -1), (2, -1)]}


pytestmark_processes = pytest.mark.processes


def run_job(mpirun, tmp_path, nprocs, *args, name="run", timeout=240):
    result = mpirun(nprocs, [*ENTRY, *SMALL, "--run.out_dir", str(tmp_path), "--run.name", name, *args],
                    timeout=timeout)
    return result, tmp_path / name


@pytestmark_processes
def test_entry_point_trains_and_reaches_consensus(mpirun, tmp_path):
    result, run_dir = run_job(mpirun, tmp_path, 4, "--nodes.n", "8", "--nodes.per_rank", "2",
                              "--screening.b", "1", "--byzantine.count", "1", "--graph.p", "0.8",
                              "--run.rounds", "60", "--run.eval_every", "30", "--graph.redraw", "5")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "honest nodes' test accuracy" in result.stdout
    records = metrics.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 30, 60]
    assert records[-1]["test_accuracy"] > 0.6
    assert records[-1]["test_accuracy_min"] <= records[-1]["test_accuracy"] <= records[-1]["test_accuracy_max"]
    assert records[0]["train_loss"] is None and records[-1]["train_loss"] < records[1]["train_loss"] * 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["byzantine_ids"]) == 1 and summary["graph"]["ok"]
    graph = json.loads((run_dir / "graph.json").read_text())
    assert graph["report"]["min_honest_degree"] > 2
    assert records[-1]["bytes"]["nodes_sent"] == records[-1]["bytes"]["nodes_received"] > 0


@pytestmark_processes
def test_packing_gives_the_same_models(mpirun, tmp_path):
    common = ["--nodes.n", "6", "--screening.b", "1", "--byzantine.count", "1", "--byzantine.two_faced",
              "true", "--graph.p", "0.9", "--graph.redraw", "5", "--run.rounds", "8",
              "--run.eval_every", "4", "--run.save_model", "true", "--run.seed", "2"]
    spread, spread_dir = run_job(mpirun, tmp_path, 6, *common, "--nodes.per_rank", "1", name="spread")
    packed, packed_dir = run_job(mpirun, tmp_path, 3, *common, "--nodes.per_rank", "2", name="packed")

    assert spread.returncode == 0, spread.stderr[-3000:]
    assert packed.returncode == 0, packed.stderr[-3000:]
    a, b = np.load(spread_dir / "models.npy"), np.load(packed_dir / "models.npy")
    byz = json.loads((spread_dir / "summary.json").read_text())["byzantine_ids"]
    honest = [j for j in range(6) if j not in byz]
    assert np.abs(a[honest]).sum() > 0
    np.testing.assert_allclose(a[honest], b[honest], rtol=1e-5, atol=1e-7)
    la = metrics.read_jsonl(spread_dir / "metrics.jsonl")
    lb = metrics.read_jsonl(packed_dir / "metrics.jsonl")
    np.testing.assert_allclose([r["test_loss"] for r in la], [r["test_loss"] for r in lb], rtol=1e-5)


@pytestmark_processes
@pytest.mark.parametrize("args, words", [
    (["--screening.b", "3"], "screening.b"),                        # 2b >= n - 1 with n = 6
    (["--graph.p", "1.5"], "graph.p"),
    (["--graph.p", "0.2", "--screening.b", "2"], "graph error"),     # too sparse for b = 2
    (["--nodes.per_rank", "1"], "need 6 MPI ranks"),
    (["--byzantine.fault", "alie"], "byzantine.fault"),
    (["--graph.kind", "torus"], "graph.kind: a torus needs rows x cols = nodes.n = 6 with both >= 3"),
    (["--graph.kind", "torus", "--nodes.n", "13", "--nodes.per_rank", "5", "--screening.b", "1"],
     "13 has no such factors (prime)"),
    (["--graph.kind", "ring", "--graph.hops", "3"], "graph.hops"),
    (["--graph.kind", "ring"], "the ring graph of 6 nodes (degrees 2 to 2) fails the check for b=2"),
    (["--graph.kind", "file"], "graph.file: graph.kind file needs an edge list"),
    (["--graph.kind", "file", "--graph.file", "/nonexistent/edges.txt"], "graph.file: cannot read"),
    (["--graph.kind", "mesh"], "graph.kind"),
])
def test_bad_input_exits_on_every_rank_with_one_message(mpirun, tmp_path, args, words):
    result, run_dir = run_job(mpirun, tmp_path, 3, "--nodes.n", "6", "--nodes.per_rank", "2", *args,
                              timeout=120)

    assert result.returncode != 0
    assert result.stderr.count("mpisim: ") == 1, result.stderr
    assert words in result.stderr
    assert not run_dir.exists()


@pytestmark_processes
def test_a_malformed_edge_list_is_refused_with_its_line(mpirun, tmp_path):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2 3\n")
    result, run_dir = run_job(mpirun, tmp_path, 3, "--nodes.n", "6", "--nodes.per_rank", "2", "--graph.kind", "file",
                              "--graph.file", str(edges), timeout=120)

    assert result.returncode == 2 and result.stderr.count("mpisim: ") == 1, result.stderr
    assert f"graph.file: {edges}: line 2: expected two node ids" in result.stderr and not run_dir.exists()


@pytestmark_processes
def test_a_graph_that_fails_runs_when_unchecked_and_says_so(mpirun, tmp_path):
    # two triangles joined by one edge, a Byzantine node in one: gossip (dgd) runs, recorded as unchecked
    result, run_dir = run_job(mpirun, tmp_path, 3, "--nodes.n", "6", "--nodes.per_rank", "2", "--graph.kind",
                              "two_cliques", "--screening.name", "dgd", "--screening.b", "1", "--byzantine.count",
                              "1", "--graph.unchecked", "true", "--run.rounds", "4", timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    graph = json.loads((run_dir / "summary.json").read_text())["graph"]
    assert graph["kind"] == "two_cliques" and graph["unchecked"] and not graph["ok"]
    assert sorted(graph["degrees"]) == [2, 2, 2, 2, 3, 3]
    assert 0 < graph["spectral_gap"] < 0.3
    assert "graph: two_cliques" in result.stdout and "UNCHECKED" in result.stdout


def test_bridge_t_step_matches_eq_7_by_hand():
    # One node with 3 neighbours, b = 1: drop the smallest and largest
    # neighbour value per coordinate, average the middle one with its own.
    from mpisim.rules import screening

    own = torch.tensor([1.0, 10.0])
    received = torch.tensor([[0.0, 40.0], [5.0, 20.0], [-7.0, 30.0]])

    screened = screening.SCREENS["bridge_t"](own, received, b=1)

    torch.testing.assert_close(screened, torch.tensor([(1.0 + 0.0) / 2, (10.0 + 30.0) / 2]))


def test_a_byzantine_node_with_few_neighbours_does_not_screen():
    # Node 4 is Byzantine with a single neighbour: too few for b = 1, which
    # the graph check only guarantees for honest nodes.
    from mpisim.protocols.decentralized import screen_all
    from mpisim.rules import screening

    adj = np.zeros((5, 5), dtype=bool)
    for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (0, 4)]:
        adj[i, j] = adj[j, i] = True
    plan = GraphPlan(Placement(5, 5), frozenset({4}), False, adj)
    state = MessagePool(plan, 0, d=1)
    for k, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        state.models[k].fill_(value)
    state.pool[state.message_row[(4, -1)]].fill_(100.0)
    out = torch.zeros(5, 1)

    screen_all(state, screening.SCREENS["bridge_t"], b=1, exchanging=True, out=out)

    # Node 0 hears 2, 3, 4 and 100: drops 2 and 100, averages 3 and 4 with its own 1;
    # node 1 hears 1, 3, 4: keeps 3. The Byzantine node keeps its own 5.
    torch.testing.assert_close(out[:, 0], torch.tensor([8 / 3, 2.5, 2.5, 3.0, 5.0]))


def test_scclip_by_hand_with_a_fixed_and_the_adaptive_radius():
    # own at the origin, neighbours at distances 5, 1 and 10, weights 1/4 each
    from mpisim.rules import screening

    own, received = torch.zeros(2), torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    weights = torch.full((4,), 0.25)
    scclip = screening.SCREENS["scclip"]

    # tau = 1: (0.6, 0.8), (0, 1), (0.6, 0.8), a quarter each
    torch.testing.assert_close(scclip(own, received, b=1, weights=weights, tau=1.0), torch.tensor([0.3, 0.65]))
    # adaptive: the second largest distance, 5: (3, 4), (0, 1), (3, 4)
    torch.testing.assert_close(scclip(own, received, b=1, weights=weights), torch.tensor([1.5, 2.25]))
    # a NaN neighbour moves nothing; no neighbour leaves own; weights are required
    broken = torch.cat([received[:2], torch.full((1, 2), math.nan)])
    torch.testing.assert_close(scclip(own, broken, b=1, weights=weights, tau=1.0), torch.tensor([0.15, 0.45]))
    torch.testing.assert_close(scclip(own, received[:0], b=1, weights=weights[:1]), own)
    with pytest.raises(ValueError, match="needs weights"):
        scclip(own, received, b=1)


@pytestmark_processes
def test_scclip_on_a_ring_gives_the_same_models_on_3_and_6_ranks(mpirun, tmp_path):
    models = []
    for ranks in (3, 6):
        result, run_dir = run_job(mpirun, tmp_path, ranks, "--data.name", "synthetic_regression",
                                  "--data.params.samples", "600", "--data.params.dim", "20", "--model.name",
                                  "least_squares", "--nodes.n", "12", "--nodes.per_rank", str(12 // ranks),
                                  "--screening.name", "scclip", "--screening.b", "1", "--byzantine.count", "2",
                                  "--byzantine.fault", "sign_flip", "--graph.kind", "ring", "--graph.hops", "2",
                                  "--graph.unchecked", "true", "--run.rounds", "20", "--run.save_model", "true",
                                  name=f"on{ranks}", timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        models.append(np.load(run_dir / "models.npy"))

    assert models[0].tobytes() == models[1].tobytes()
    assert json.loads((run_dir / "summary.json").read_text())["screening"] == "scclip"
