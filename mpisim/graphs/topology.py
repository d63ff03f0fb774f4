"""Communication graphs of the decentralized mode, and their checks against
BRIDGE's assumptions (Yang and Bajwa, BRIDGE, Section 2.2).

Every rank draws the same Erdős–Rényi graph from the run's seed
(:func:`draw_checked`), checks it before training, and saves it with the
results (:func:`to_json`). Everything here is pure numpy: no MPI.

Conventions
-----------
- A graph is a symmetric ``(n, n)`` bool adjacency matrix without self loops;
  ``adj[i, j]`` means nodes i and j exchange messages.
- For Assumption 4 an undirected edge {i, j} is two directed edges, i -> j
  (j hears i) and j -> i; a reduced graph may remove one without the other.
  An edge i -> j is an *incoming* edge of j.
- "Degree" is the number of neighbours in the full graph G, Byzantine ones
  included (that is what node j's screening sees, and what the paper's
  empirical rule speaks of); "honest-only degree" counts honest neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from .. import seeding

__all__ = [
    "GraphError", "GraphReport", "erdos_renyi", "neighbours", "edge_list", "from_edges",
    "KINDS", "ring", "torus", "torus_shape", "complete", "two_cliques", "dumbbell", "read_edge_list", "build",
    "metropolis_weights", "spectral_gap",
    "required_degree", "check", "draw_checked", "to_json", "from_json",
    "MAX_REDRAW", "PROGRESS_EVERY",
]

# A batch of reduced graphs holds at most this many matrix entries (float32:
# 4 bytes each), so that memory stays bounded whatever the batch count.
_BATCH_ENTRIES = 1 << 22


# draw_checked draws at most this many graphs beyond the first. A failed
# attempt costs 0.03-0.05 ms (n = 20 to 100) when the graph fails the degree
# rule, which draw_checked tests before anything else; 0.2-1 ms when it
# passes that rule but is not connected; and 0.1-0.5 s when Assumption 4 must
# be searched (exact over 2^22 sets of 22 honest nodes, or 2,000 sampled
# reduced graphs at n = 100, b = 10). So 1,000 redraws take well under a
# second on a too-sparse graph and minutes at worst, while a setting whose
# graphs pass less than once in 1,000 draws wants a larger p or a smaller b.
MAX_REDRAW = 1_000

# draw_checked calls its progress callback after every this many failed attempts.
PROGRESS_EVERY = 100


class GraphError(ValueError):
    """No graph drawn for the run satisfies the checks."""


# ---------------------------------------------------------------- graphs

def erdos_renyi(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """An Erdős–Rényi graph G(n, p) as a symmetric (n, n) bool adjacency matrix.

    Each of the n(n-1)/2 pairs {i, j}, i < j, is an edge independently with
    probability p (BRIDGE Section 5: n = 100, p = 0.5); no self loops. One
    draw of n(n-1)/2 uniforms fills the upper triangle in ``np.triu_indices``
    order, so the graph depends only on the generator's state.
    """
    _check_n_p("erdos_renyi", n, p)
    rows, cols = np.triu_indices(n, k=1)
    present = rng.random(rows.size) < p
    adj = np.zeros((n, n), dtype=bool)
    adj[rows[present], cols[present]] = True
    adj |= adj.T
    return adj


# The graph kinds of graph.kind. Every one but erdos_renyi is fixed by its parameters (dumbbell's
# extra edges are drawn from the run's seed).
KINDS = ("erdos_renyi", "ring", "torus", "complete", "two_cliques", "dumbbell", "file")


def ring(n: int, hops: int = 1) -> np.ndarray:
    """A ring lattice: node i is joined to the nodes within ``hops`` steps of it (degree 2 hops)."""
    if not (_is_int(n) and n >= 3):
        raise ValueError(f"ring: n must be an integer >= 3, got {n!r}")
    if not (_is_int(hops) and 1 <= hops and 2 * hops < n):
        raise ValueError(f"ring: hops must be in [1, {(n - 1) // 2}] for n = {n} (degree 2 hops < n), got {hops!r}")
    i = np.arange(n)
    adj = np.zeros((n, n), dtype=bool)
    for h in range(1, hops + 1):
        adj[i, (i + h) % n] = True
    return adj | adj.T


def torus_shape(n: int, rows: int = 0) -> tuple[int, int] | None:
    """(rows, cols) of a 2-D torus of n nodes, both >= 3; the most square when ``rows`` is 0.
    None when there is none (n prime, n < 9, or ``rows`` not a fitting divisor)."""
    if rows:
        return (rows, n // rows) if rows >= 3 and n % rows == 0 and n // rows >= 3 else None
    fits = [r for r in range(3, math.isqrt(n) + 1) if n % r == 0 and n // r >= 3]
    return (fits[-1], n // fits[-1]) if fits else None


def torus(n: int, rows: int = 0) -> np.ndarray:
    """A 2-D torus (the grid of rows x cols with wrap-around): every node has degree 4."""
    shape = torus_shape(n, rows)
    if shape is None:
        raise ValueError(f"torus: {n} nodes make no torus of at least 3 x 3"
                         + (f" with {rows} rows" if rows else " (n prime or too small)"))
    r, c = shape
    node = np.arange(n).reshape(r, c)
    adj = np.zeros((n, n), dtype=bool)
    adj[node, np.roll(node, -1, axis=1)] = True
    adj[node, np.roll(node, -1, axis=0)] = True
    return adj | adj.T


def complete(n: int) -> np.ndarray:
    if not (_is_int(n) and n >= 2):
        raise ValueError(f"complete: n must be an integer >= 2, got {n!r}")
    return ~np.eye(n, dtype=bool)


def two_cliques(n: int, bridge_nodes: int = 0) -> np.ndarray:
    """Two cliques of (n - m) / 2 nodes joined by a path through m = ``bridge_nodes`` nodes (He,
    Karimireddy and Jaggi's bottleneck graph): clique 0..c-1, clique c..2c-1, path nodes 2c..n-1
    from node 2c - 1 to node 0 (m = 0: the single edge {2c - 1, 0})."""
    m = bridge_nodes
    if not (_is_int(m) and m >= 0 and (n - m) % 2 == 0 and (n - m) // 2 >= 2):
        raise ValueError(f"two_cliques: n - bridge_nodes must be even and leave two cliques of at least 2 "
                         f"nodes, got n = {n}, bridge_nodes = {m!r}")
    c = (n - m) // 2
    adj = np.zeros((n, n), dtype=bool)
    adj[:c, :c] = adj[c:2 * c, c:2 * c] = True
    path = [2 * c - 1, *range(2 * c, n), 0]
    adj[path[:-1], path[1:]] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def dumbbell(n: int, extra_edges: int, rng: np.random.Generator) -> np.ndarray:
    """Two cliques of n / 2 nodes joined by the edge {0, n - 1} and ``extra_edges`` more edges
    between them, drawn uniformly without replacement from ``rng``."""
    if not (_is_int(n) and n >= 4 and n % 2 == 0):
        raise ValueError(f"dumbbell: n must be an even integer >= 4, got {n!r}")
    c = n // 2
    if not (_is_int(extra_edges) and 0 <= extra_edges <= c * c - 1):
        raise ValueError(f"dumbbell: extra_edges must be in [0, {c * c - 1}] for n = {n}, got {extra_edges!r}")
    adj = np.zeros((n, n), dtype=bool)
    adj[:c, :c] = adj[c:, c:] = True
    np.fill_diagonal(adj, False)
    between = np.setdiff1d(np.arange(c * c), [c - 1])  # pairs (i, c + j) as i * c + j; {0, n - 1} is 0 * c + c - 1
    chosen = np.concatenate([[c - 1], rng.choice(between, size=extra_edges, replace=False)]).astype(np.int64)
    adj[chosen // c, c + chosen % c] = True
    return adj | adj.T


def read_edge_list(path: str, n: int) -> np.ndarray:
    """The graph of an edge-list file: one edge "i j" a line (spaces, tabs or a comma), node ids in
    [0, n - 1], "#" starts a comment. ValueError naming the line for anything else."""
    edges = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            text = line.split("#", 1)[0].replace(",", " ").split()
            if not text:
                continue
            if len(text) != 2 or not all(t.lstrip("-").isdigit() for t in text):
                raise ValueError(f"line {number}: expected two node ids, got {line.strip()!r}")
            i, j = int(text[0]), int(text[1])
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"line {number}: node ids must be in [0, {n - 1}] (nodes.n = {n}), got {i} {j}")
            if i == j:
                raise ValueError(f"line {number}: a self loop ({i} {j}); a node always keeps its own model")
            edges.append((i, j))
    if not edges:
        raise ValueError("no edges in the file")
    return from_edges(n, edges)


def build(kind: str, n: int, *, p: float = 0.5, hops: int = 1, rows: int = 0, bridge_nodes: int = 0,
          extra_edges: int = 0, file: str = "", rng: np.random.Generator | None = None) -> np.ndarray:
    """The graph of ``kind`` (one of :data:`KINDS`) on n nodes; ``rng`` for the random kinds."""
    if kind == "erdos_renyi":
        return erdos_renyi(n, p, rng)
    if kind == "ring":
        return ring(n, hops)
    if kind == "torus":
        return torus(n, rows)
    if kind == "complete":
        return complete(n)
    if kind == "two_cliques":
        return two_cliques(n, bridge_nodes)
    if kind == "dumbbell":
        return dumbbell(n, extra_edges, rng)
    if kind == "file":
        return read_edge_list(file, n)
    raise ValueError(f"unknown graph kind {kind!r}; known: {', '.join(KINDS)}")


def metropolis_weights(adj: np.ndarray) -> np.ndarray:
    """The Metropolis-Hastings mixing matrix: W_ij = 1 / (1 + max(deg_i, deg_j)) on every edge,
    W_ii = 1 - sum_j W_ij. Symmetric and doubly stochastic, with a non-negative diagonal."""
    adj = _as_adjacency(adj)
    degrees = adj.sum(axis=1)
    weights = np.where(adj, 1.0 / (1.0 + np.maximum.outer(degrees, degrees)), 0.0)
    weights[np.diag_indices_from(weights)] = 1.0 - weights.sum(axis=1)
    return weights


def spectral_gap(weights: np.ndarray) -> float:
    """1 - the second largest eigenvalue modulus of a symmetric mixing matrix (0: disconnected)."""
    moduli = np.sort(np.abs(np.linalg.eigvalsh(weights)))
    return float(1.0 - moduli[-2]) if moduli.size > 1 else 1.0


def neighbours(adj: np.ndarray) -> list[np.ndarray]:
    """The sorted neighbour ids (int64 arrays) of every node."""
    adj = _as_adjacency(adj)
    return [np.flatnonzero(row) for row in adj]


def edge_list(adj: np.ndarray) -> np.ndarray:
    """The edges as an (m, 2) int64 array of pairs i < j, in row-major order."""
    adj = _as_adjacency(adj)
    rows, cols = np.nonzero(np.triu(adj, k=1))
    return np.stack([rows, cols], axis=1).astype(np.int64)


def from_edges(n: int, edges) -> np.ndarray:
    """The adjacency matrix of n nodes with the given undirected edges."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"from_edges: node ids must be in [0, {n - 1}]")
    if np.any(edges[:, 0] == edges[:, 1]):
        raise ValueError("from_edges: self loops are not allowed")
    adj = np.zeros((n, n), dtype=bool)
    adj[edges[:, 0], edges[:, 1]] = True
    adj |= adj.T
    return adj


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_n_p(who: str, n, p) -> None:
    if not (_is_int(n) and n >= 1):
        raise ValueError(f"{who}: n must be a positive integer, got {n!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{who}: p must be in [0, 1], got {p}")


def _as_adjacency(adj) -> np.ndarray:
    adj = np.asarray(adj)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be a square matrix, got shape {adj.shape}")
    if adj.dtype != bool:
        if not np.all((adj == 0) | (adj == 1)):
            raise ValueError("adjacency entries must be 0/1 or bool")
        adj = adj.astype(bool)
    if not np.array_equal(adj, adj.T):
        raise ValueError("adjacency must be symmetric (an undirected graph)")
    if np.any(np.diagonal(adj)):
        raise ValueError("adjacency must have no self loops")
    return adj


def _components(adj: np.ndarray) -> np.ndarray:
    """Connected-component label of every node (labels 0, 1, ...)."""
    n = adj.shape[0]
    label = np.full(n, -1)
    current = 0
    for start in range(n):
        if label[start] >= 0:
            continue
        frontier = np.zeros(n, dtype=bool)
        frontier[start] = True
        label[start] = current
        while frontier.any():
            frontier = adj[frontier].any(axis=0) & (label < 0)
            label[frontier] = current
        current += 1
    return label


# ---------------------------------------------------------------- report

@dataclass(frozen=True)
class GraphReport:
    """What :func:`check` found about a graph, for the run's results.

    Degrees count every neighbour in G, Byzantine ones included; the
    ``honest_only_*`` fields count honest neighbours only.

    - ``min_honest_degree``: the smallest degree among honest nodes;
      ``min_degree_ok`` is ``min_honest_degree >= required_degree``.
      ``required_degree`` is 2b + 1 by default, the paper's empirical rule
      for Assumption 4 ("the degree of the least connected node is larger
      than 2b"), applied to the honest nodes, the ones that screen; a
      screening that needs more (``min_degree`` of :func:`check`, e.g.
      Bulyan's 4b + 2) raises it, and ``screen`` names that screening in
      messages (None when none was given).
    - ``honest_connected``: the honest subgraph (Byzantine nodes removed) is
      connected.
    - ``byzantine_within_b``: at most b nodes are Byzantine, as BRIDGE
      assumes. Reported, but not part of ``ok``: it is a setting of the run,
      not a property of the graph (no redraw changes it), and runs may exceed
      b on purpose (stress tests, baselines); the caller decides.
    - ``assumption4``: "passed", "failed" or "not checked"; how in
      ``assumption4_detail``. "passed" is a proof when the detail says
      "exact" or "exhaustive", and only evidence when it says "sampled";
      "not checked" when the graph is too large for the search, or when
      ``check(stop_at_degree=True)`` skipped it on a graph that fails the
      degree rule anyway.
    - ``counterexample``: when Assumption 4 failed, the directed edges
      (i, j) (j stops hearing i) that a failing reduced graph removes beyond
      the Byzantine nodes' edges, and ``counterexample_source`` the nodes
      that reach every other node in it (fewer than b + 1).
    - ``ok``: minimum degree rule, honest subgraph connected, and
      Assumption 4 not failed.
    """

    n: int
    p: float | None
    b: int
    byzantine: tuple[int, ...]
    edges: int
    degrees: tuple[int, ...]
    honest_only_degrees: tuple[int, ...]
    min_honest_degree: int
    min_honest_only_degree: int
    required_degree: int
    screen: str | None
    byzantine_within_b: bool
    min_degree_ok: bool
    honest_connected: bool
    assumption4: str
    assumption4_detail: str
    counterexample: tuple[tuple[int, int], ...] | None
    counterexample_source: tuple[int, ...] | None
    ok: bool
    kind: str = "erdos_renyi"
    spectral_gap: float | None = None  # of the Metropolis-Hastings weights of the whole graph
    unchecked: bool = False  # run on although ok is False (graph.unchecked)

    def failures(self) -> list[str]:
        """One sentence per failed condition (empty when ``ok``)."""
        out = []
        if not self.min_degree_ok:
            out.append(f"the minimum honest degree is {self.min_honest_degree}, "
                       f"{_degree_rule(self.b, self.required_degree, self.screen)}")
        if not self.honest_connected:
            out.append("the honest nodes are not connected once the Byzantine nodes are removed")
        if self.assumption4 == "failed":
            out.append(f"Assumption 4 fails: {self.assumption4_detail}")
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        for key in ("byzantine", "degrees", "honest_only_degrees", "counterexample_source"):
            if out[key] is not None:
                out[key] = list(out[key])
        if out["counterexample"] is not None:
            out["counterexample"] = [list(edge) for edge in out["counterexample"]]
        return out


def _degree_rule(b: int, required: int, screen: str | None) -> str:
    """What the degree rule asks, for messages: BRIDGE's > 2b, or the
    screening's larger bound."""
    if required > 2 * b + 1:
        return f"{screen or 'the screening'} with b={b} needs at least {required}"
    return f"BRIDGE with b={b} needs more than {2 * b}"


# ---------------------------------------------------------------- check

def required_degree(b: int, min_degree: int | None = None) -> int:
    """The smallest honest degree :func:`check` accepts: max(2b + 1, min_degree).

    2b + 1 is BRIDGE's rule (degree > 2b, Section 2.2), kept as the floor
    whatever the screening; ``min_degree`` is the screening's own bound,
    ``mpisim.rules.screening.min_degree(name, b)`` (None: no bound beyond
    BRIDGE's). No node has more than n - 1 neighbours, so a run of n nodes
    is possible only if this is at most n - 1.
    """
    if not (_is_int(b) and b >= 0):
        raise ValueError(f"required_degree: b must be an integer >= 0, got {b!r}")
    if min_degree is None:
        return 2 * int(b) + 1
    if not (_is_int(min_degree) and min_degree >= 0):
        raise ValueError(f"required_degree: min_degree must be an integer >= 0 or None, "
                         f"got {min_degree!r}")
    return max(2 * int(b) + 1, int(min_degree))


def _split_nodes(who: str, n: int, byzantine: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """(sorted Byzantine ids, honest ids) of n nodes, or ValueError."""
    byz = tuple(sorted(int(i) for i in byzantine))
    if len(set(byz)) != len(byz) or any(not 0 <= i < n for i in byz):
        raise ValueError(f"{who}: Byzantine ids must be distinct and in [0, {n - 1}], "
                         f"got {list(byz)}")
    if len(byz) >= n:
        raise ValueError(f"{who}: every node is Byzantine; there is nothing to check")
    return byz, np.setdiff1d(np.arange(n), np.asarray(byz, dtype=np.int64))


def check(adj, *, b: int, byzantine: Sequence[int], p: float | None = None,
          min_degree: int | None = None, screen: str | None = None,
          stop_at_degree: bool = False,
          max_reduced_graphs: int = 200_000, samples: int = 2_000,
          rng: np.random.Generator | None = None, method: str = "auto",
          max_subset_nodes: int = 22, max_sample_work: float = 5e9) -> GraphReport:
    """Check a graph against BRIDGE's conditions for b Byzantine nodes.

    1. Degrees: the minimum degree of the honest nodes must exceed 2b (the
       paper's empirical rule, Section 2.2; degree in G, Byzantine
       neighbours included). Required even when Assumption 4 is proven:
       BRIDGE's trimmed mean at node j (eq 7) drops 2b of its |N_j| values
       and keeps at least one neighbour's only if |N_j| > 2b. A screening
       that needs more neighbours passes its bound as ``min_degree``
       (``mpisim.rules.screening.min_degree(name, b)``; Bulyan needs 4b + 2)
       and its name as ``screen``, for the message: the rule becomes
       degree >= :func:`required_degree` (b, min_degree).
    2. The honest subgraph is connected.
    3. Assumption 4 (Definition 2): every reduced graph (Byzantine nodes
       and their edges removed, then up to b incoming edges of each honest
       node removed) has a source component (nodes with a directed path to
       every other node) of at least b + 1 nodes. b = 0 is allowed: the only
       reduced graph is the honest subgraph, and the assumption is its
       connectivity.

    How Assumption 4 is decided (``method="auto"``), and what it guarantees:

    - proofs of failure found cheaply on any size: fewer than b + 1 honest
      nodes; a disconnected honest subgraph; an honest node with at most b
      honest neighbours (b >= 1; cutting its incoming edges isolates it);
    - ``"exact"`` (``method="subsets"``, up to ``max_subset_nodes`` honest
      nodes): an equivalent condition on sets of honest nodes (see
      :func:`_assumption4_subsets`) checked over all 2^k of them. A proof
      either way, for all reduced graphs at once;
    - ``"exhaustive"`` (``method="enumerate"``): every reduced graph that
      removes exactly min(b, in-degree) incoming edges per honest node, when
      there are at most ``max_reduced_graphs`` of them (a forced
      ``method="enumerate"`` raises ValueError beyond). A proof either way
      (removing fewer edges cannot do worse; see :func:`_count_reduced`);
    - ``"sampled"`` (``method="sample"``): ``samples`` such maximal reduced
      graphs drawn uniformly at random from ``rng``. A failure is a proof; a pass is
      evidence, not a proof: a rare bad reduced graph can be missed;
    - ``"not checked"``: too large for the above (``samples = 0``, or
      ``samples * k**3 > max_sample_work`` multiply-adds per boolean matrix
      product). Then only the degree rule and connectivity vouch for it.

    With more than b honest nodes, a failing graph always has a reduced
    graph in which no node reaches all others (proof in
    :func:`_assumption4_subsets`), so the "b + 1" matters only through the
    count of honest nodes.

    With ``stop_at_degree``, a graph that fails the degree rule gets only the
    cheap proofs above, and "not checked" otherwise: it fails whatever the
    search would find, and the search costs up to ~1000 times the rest
    (what :func:`draw_checked` wants of a failed attempt).

    ``rng`` (for sampling) defaults to a fixed generator, so that every rank
    reaches the same verdict. Nothing here depends on timing.
    """
    adj = _as_adjacency(adj)
    n = adj.shape[0]
    if not (_is_int(b) and b >= 0):
        raise ValueError(f"check: b must be an integer >= 0, got {b!r}")
    if min_degree is not None and not (_is_int(min_degree) and min_degree >= 0):
        raise ValueError(f"check: min_degree must be an integer >= 0 or None, got {min_degree!r}")
    if not (screen is None or isinstance(screen, str)):
        raise ValueError(f"check: screen must be a str naming the screening, or None, "
                         f"got {screen!r}")
    byz, honest = _split_nodes("check", n, byzantine)
    if method not in ("auto", "subsets", "enumerate", "sample"):
        raise ValueError(f"check: method must be auto, subsets, enumerate or sample, "
                         f"got {method!r}")
    b = int(b)
    required = required_degree(b, min_degree)

    is_honest = np.zeros(n, dtype=bool)
    is_honest[honest] = True
    degrees = adj.sum(axis=1)
    honest_only = adj[:, is_honest].sum(axis=1)
    sub = adj[np.ix_(honest, honest)]          # honest subgraph, local ids 0..k-1
    connected = bool(_components(sub).max() == 0)
    min_honest_degree = int(degrees[honest].min())
    degree_ok = min_honest_degree >= required

    skip = None
    if stop_at_degree and not degree_ok:
        skip = (f"not searched: the degree rule fails already (minimum honest degree "
                f"{min_honest_degree} < {required})")
    verdict, detail, removed, source = _assumption4(
        sub, b, honest, connected=connected, method=method, max_reduced_graphs=max_reduced_graphs,
        samples=samples, rng=rng if rng is not None else np.random.default_rng(0),
        max_subset_nodes=max_subset_nodes, max_sample_work=max_sample_work, skip=skip)
    if removed is not None:                     # local ids -> graph ids
        counterexample = tuple(sorted((int(honest[i]), int(honest[j])) for i, j in removed))
        source = tuple(int(honest[i]) for i in source)
    else:
        counterexample = None

    within_b = len(byz) <= b
    return GraphReport(
        n=n, p=None if p is None else float(p), b=b, byzantine=byz, edges=int(adj.sum()) // 2,
        degrees=tuple(int(d) for d in degrees),
        honest_only_degrees=tuple(int(d) for d in honest_only),
        min_honest_degree=min_honest_degree, min_honest_only_degree=int(honest_only[honest].min()),
        required_degree=required, screen=screen, byzantine_within_b=within_b,
        min_degree_ok=degree_ok, honest_connected=connected,
        assumption4=verdict, assumption4_detail=detail, counterexample=counterexample,
        counterexample_source=source,
        ok=degree_ok and connected and verdict != "failed")


def _assumption4(sub, b, ids, *, connected, method, max_reduced_graphs, samples, rng,
                 max_subset_nodes, max_sample_work, skip=None):
    """(verdict, detail, removed local edges or None, source component or None).

    ``skip``: when a str, stop after the cheap proofs of failure, with
    "not checked" and that detail."""
    k = sub.shape[0]
    indeg = sub.sum(axis=0)

    # Cheap proofs of failure, valid at any size.
    if k <= b:
        return _failed(sub, [], f"there are only {k} honest nodes, fewer than b + 1 = {b + 1}")
    if not connected:
        return _failed(sub, [], "the honest subgraph is disconnected, so even with no edge "
                                "removed no node reaches every other")
    if b >= 1 and indeg.min() <= b:
        j = int(np.argmin(indeg))
        has = _nodes(indeg[j], "honest neighbour")
        return _failed(sub, [1 << j], f"honest node {ids[j]} has only {has} (b={b}); "
                                      f"removing its incoming edges cuts it off")
    if skip is not None:
        return "not checked", skip, None, None

    count = _count_reduced(sub, b)
    if b == 0:   # one reduced graph, the honest subgraph itself
        return _assumption4_enumerate(sub, b, count)
    if method == "subsets" and k > 30:
        raise ValueError(f"check: {k} honest nodes have 2^{k} sets, too many to check them all")
    if method in ("auto", "subsets") and (k <= max_subset_nodes or method == "subsets"):
        return _assumption4_subsets(sub, b, ids, count)
    if method == "enumerate" and count > max_reduced_graphs:
        raise ValueError(f"check: {_big(count)} reduced graphs to enumerate, more than "
                         f"max_reduced_graphs = {max_reduced_graphs:,}")
    if method in ("auto", "enumerate") and count <= max_reduced_graphs:
        return _assumption4_enumerate(sub, b, count)
    if samples <= 0:
        why = (f"{_big(count)} reduced graphs, more than max_reduced_graphs = "
               f"{max_reduced_graphs:,}, and sampling is off (samples = 0)")
        return "not checked", why, None, None
    if samples * k ** 3 > max_sample_work:
        why = (f"{_big(count)} reduced graphs of {k} honest nodes: too many to enumerate, and "
               f"{samples:,} samples would cost {samples * k ** 3:.3g} > max_sample_work = "
               f"{max_sample_work:.3g} multiply-adds per matrix product")
        return "not checked", why, None, None
    return _assumption4_sample(sub, b, count, samples, rng)


def _failed(sub, cut_sets, why):
    """The verdict for a proof of failure: cut every edge entering each set of
    ``cut_sets`` (bitmasks of local ids) from outside it."""
    reduced = sub.copy()
    for mask in cut_sets:
        inside = _mask_members(mask, sub.shape[0])
        outside = np.setdiff1d(np.arange(sub.shape[0]), inside)
        reduced[np.ix_(outside, inside)] = False
    removed = [(int(i), int(j)) for i, j in zip(*np.nonzero(sub & ~reduced))]
    source = tuple(int(i) for i in np.flatnonzero(_source_rows(reduced[None])[0]))
    return "failed", f"{why} (source component of {_nodes(len(source))})", removed, source


def _mask_members(mask: int, k: int) -> np.ndarray:
    return np.array([i for i in range(k) if mask >> i & 1], dtype=np.int64)


def _count_reduced(sub, b) -> int:
    """Number of reduced graphs that remove exactly min(b, in-degree) incoming
    edges of every honest node: prod_j C(indeg_j, min(b, indeg_j)).

    These suffice. A reduced graph H that removes fewer edges at some node
    can be extended by removing more, to a reduced graph H' whose edges are
    a subset of H's. Every directed path of H' is a path of H, so each node
    that reaches all others in H' does so in H: the source component of H'
    is contained in that of H (both graphs keep the same honest nodes).
    Hence if every maximal reduced graph has a source component of at least
    b + 1 nodes, every reduced graph has.
    """
    count = 1
    for d in sub.sum(axis=0):
        count *= math.comb(int(d), min(b, int(d)))
    return count


# ---------------------------------------------------------------- exact: sets of nodes

def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
    return table[x & 0xFFFF] + table[(x >> 16) & 0xFFFF]


def _assumption4_subsets(sub, b, ids, count):
    """Assumption 4, exactly, over the 2^k sets of honest nodes (k > b).

    Call a nonempty set S of honest nodes *separable* when every node of S
    has at most b honest neighbours outside S: a reduced graph may then cut
    every edge entering S. With more than b honest nodes, Assumption 4
    fails if and only if two disjoint sets are both separable.

    If: cut the edges entering L and those entering R. No path enters L
    or R from outside it, so a node of L cannot reach R, one of R cannot
    reach L, and one outside both reaches neither: no node reaches every
    other, the source component is empty.

    Only if: take a reduced graph whose source component T has at most b
    nodes, and its source strongly connected components (those no edge
    enters from outside; there is at least one). Every edge entering one of
    them was cut, at most b per node, so each is separable; two of them are
    the disjoint pair. If there is only one, C, every node is reachable from
    C (walk back along edges: the walk ends in a source component, C), so
    C lies in T and |C| <= b < k. Then every node outside C has at most
    |C| <= b neighbours in C, so the complement of C is separable too.

    So once k > b the bound b + 1 adds nothing: Assumption 4 says that
    every reduced graph has a node reaching all the others. A subset-OR
    transform (k passes over a table of 2^k flags) tells, for every
    separable S at once, whether its complement holds a separable set.
    """
    k = sub.shape[0]
    size = 1 << k
    masks = np.arange(size, dtype=np.uint32 if k <= 32 else np.uint64)
    separable = np.ones(size, dtype=bool)
    for j in range(k):
        nb = sum(1 << int(i) for i in np.flatnonzero(sub[:, j]))
        # j's neighbours outside S are at most b: at least deg_j - b inside S.
        enough_inside = _popcount(masks & masks.dtype.type(nb)) >= int(sub[:, j].sum()) - b
        in_set = ((masks >> j) & 1).astype(bool)
        separable &= ~in_set | enough_inside
    separable[0] = False
    sizes = _popcount(masks)
    how = (f"exact: all {size:,} sets of the {k} honest nodes (equivalent to all "
           f"{_big(count)} reduced graphs)")

    # has_sub[m]: m contains a nonempty separable set.
    has_sub = separable.copy()
    for bit in range(k):
        view = has_sub.reshape(-1, 2, 1 << bit)
        view[:, 1, :] |= view[:, 0, :]
    full = size - 1
    pair = np.flatnonzero(separable & has_sub[full ^ masks])
    if pair.size:
        left = int(pair[np.argmin(sizes[pair])])
        inside = np.flatnonzero(separable & ((masks & masks.dtype.type(left)) == 0))
        right = int(inside[np.argmin(sizes[inside])])
        return _failed(sub, [left, right],
                       f"{how}; the disjoint sets {_names(left, ids)} and {_names(right, ids)} "
                       f"can both be cut off from the rest")
    return "passed", how, None, None


def _names(mask: int, ids: np.ndarray) -> str:
    return "{" + ", ".join(str(int(ids[i])) for i in _mask_members(mask, ids.size)) + "}"


def _nodes(count, noun: str = "node") -> str:
    return f"{int(count)} {noun}{'' if count == 1 else 's'}"


def _big(count: int) -> str:
    """An exact count with thousands separators, or its order of magnitude
    (counts of reduced graphs overflow a float: C(45, 10)^90 ~ 10^850)."""
    if count < 10 ** 9:
        return f"{count:,}"
    digits = str(count)
    return f"{digits[0]}.{digits[1:3]}e{len(digits) - 1}"


# ---------------------------------------------------------------- reduced graphs

def _source_rows(batch: np.ndarray) -> np.ndarray:
    """(B, k) bool: which nodes of each directed graph (B, k, k) reach every node.

    Reachability by repeated squaring of (I + A) as float32 (counts are exact
    far below 2^24), stopping when a product changes nothing: at most
    ceil(log2 k) + 1 products, fewer on graphs of small diameter.
    """
    k = batch.shape[-1]
    reach = batch.astype(np.float32)
    reach[:, np.arange(k), np.arange(k)] = 1.0
    for _ in range(max(1, math.ceil(math.log2(max(k, 2)))) + 1):
        nxt = (np.matmul(reach, reach) > 0).astype(np.float32)
        if np.array_equal(nxt, reach):
            break
        reach = nxt
    return reach.all(axis=2)


def _first_failure(sub, batch, b, offset, how, what="reduced graph"):
    """The verdict if some graph of ``batch`` has a source component under b + 1."""
    source = _source_rows(batch)
    bad = np.flatnonzero(source.sum(axis=1) <= b)
    if not bad.size:
        return None
    i = int(bad[0])
    removed = [(int(s), int(t)) for s, t in zip(*np.nonzero(sub & ~batch[i]))]
    members = tuple(int(v) for v in np.flatnonzero(source[i]))
    return ("failed", f"{how}; {what} {offset + i:,} has a source component of "
                      f"{_nodes(len(members))}", removed, members)


def _assumption4_enumerate(sub, b, count):
    """Assumption 4 over every reduced graph removing exactly min(b, in-degree)
    incoming edges per honest node (mixed-radix numbering, in batches)."""
    k = sub.shape[0]
    tables = []                                  # per node: kept in-neighbours of each choice
    for j in range(k):
        col = np.flatnonzero(sub[:, j])
        r = min(b, col.size)
        choices = list(combinations(col, r))
        cut = np.array(choices, dtype=np.int64).reshape(len(choices), r)
        kept = np.repeat(sub[None, :, j], cut.shape[0], axis=0)
        kept[np.arange(cut.shape[0])[:, None], cut] = False
        tables.append(kept)
    radices = np.array([t.shape[0] for t in tables], dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(radices[:-1])])
    how = f"exhaustive over {count:,} reduced graphs"
    step = max(1, _BATCH_ENTRIES // (k * k))
    for start in range(0, count, step):
        index = np.arange(start, min(count, start + step), dtype=np.int64)
        batch = np.empty((index.size, k, k), dtype=bool)
        for j, table in enumerate(tables):
            batch[:, :, j] = table[(index // strides[j]) % radices[j]]
        failure = _first_failure(sub, batch, b, start, how)
        if failure:
            return failure
    return "passed", how, None, None


def _assumption4_sample(sub, b, count, samples, rng):
    """Assumption 4 on ``samples`` reduced graphs drawn uniformly from the
    maximal ones: each honest node drops min(b, in-degree) incoming edges
    chosen uniformly, independently of the other nodes."""
    k = sub.shape[0]
    how = f"sampled: {samples:,} random reduced graphs out of {_big(count)} (evidence, not proof)"
    step = max(1, _BATCH_ENTRIES // (k * k))
    into = sub.T                                 # into[j, i]: edge i -> j
    for start in range(0, samples, step):
        m = min(step, samples - start)
        # A uniform key per incoming edge (non-edges get 2, never chosen);
        # each node drops the edges holding its b smallest keys.
        keys = rng.random((m, k, k))
        keys[:, ~into] = 2.0
        cut_below = np.partition(keys, b - 1, axis=2)[:, :, b - 1:b]
        batch = (into & ~(keys <= cut_below)).transpose(0, 2, 1)
        failure = _first_failure(sub, batch, b, start, how, what="sample")
        if failure:
            return failure
    return "passed", how, None, None


# ---------------------------------------------------------------- drawing and saving

def draw_checked(n: int, p: float, *, b: int, byzantine: Sequence[int], seed: int,
                 redraw: int = 0, min_degree: int | None = None, screen: str | None = None,
                 progress: Callable[[int, int, GraphReport], None] | None = None,
                 **check_kwargs) -> tuple[np.ndarray, GraphReport, int]:
    """Draw G(n, p) until it passes :func:`check`; return (adj, report, attempt).

    Attempt a = 0, 1, ..., ``redraw`` draws from the stream
    ``(seeding.GRAPH, a)`` of ``seed`` and samples reduced graphs (if it comes
    to that) from ``(seeding.GRAPH, a, 1)``, so every rank that calls this
    with the same arguments gets the same graph and verdict. ``min_degree``
    and ``screen`` go to :func:`check` (the screening's bound and name).
    Raises :class:`GraphError` naming what failed if no attempt passes, at
    once if no graph of n nodes can meet :func:`required_degree` (degrees
    are at most n - 1), and ValueError if ``redraw`` exceeds
    :data:`MAX_REDRAW`.

    A failed attempt is made cheap: a graph failing the degree rule is
    rejected on its degrees alone, without a report, and the reports that
    are built skip the Assumption 4 search on such graphs
    (``stop_at_degree=True`` unless given). None of this changes which
    attempt passes. ``progress(done, total, report)``, if given, is called
    after every :data:`PROGRESS_EVERY` failed attempts with the number done,
    ``redraw + 1`` and the last attempt's report; it is called alike on
    every rank, and may raise to stop the search (then on every rank).
    """
    if not _is_int(redraw):
        raise ValueError(f"draw_checked: redraw must be an integer, got {redraw!r}")
    if redraw < 0:
        raise ValueError(f"draw_checked: redraw must be >= 0, got {redraw}")
    if redraw > MAX_REDRAW:
        raise ValueError(f"draw_checked: redraw must be at most MAX_REDRAW = {MAX_REDRAW:,}, got "
                         f"{redraw:,}; a setting whose graphs fail that many draws needs a larger "
                         f"p or a smaller b")
    _check_n_p("draw_checked", n, p)
    if not (_is_int(b) and b >= 0):
        raise ValueError(f"draw_checked: b must be an integer >= 0, got {b!r}")
    _, honest = _split_nodes("draw_checked", n, byzantine)
    required = required_degree(b, min_degree)
    if required > n - 1:
        raise GraphError(f"no graph of n={n} nodes passes the check for b={b}: a node has at most "
                         f"n - 1 = {n - 1} neighbours, and {_degree_rule(b, required, screen)}. "
                         f"Lower screening.b or raise nodes.n")
    total = redraw + 1
    kwargs = dict(check_kwargs, min_degree=min_degree, screen=screen)
    kwargs.setdefault("stop_at_degree", True)
    report = None
    for attempt in range(total):
        adj = erdos_renyi(n, p, seeding.numpy_generator(seed, seeding.GRAPH, attempt))
        due = attempt == redraw or (progress is not None and (attempt + 1) % PROGRESS_EVERY == 0)
        if not due and adj.sum(axis=1)[honest].min() < required:
            continue                            # fails check's degree rule: no report needed
        rng = kwargs.get("rng")
        if rng is None:
            rng = seeding.numpy_generator(seed, seeding.GRAPH, attempt, 1)
        report = check(adj, b=b, byzantine=byzantine, p=p, **dict(kwargs, rng=rng))
        if report.ok:
            return adj, report, attempt
        if progress is not None and (attempt + 1) % PROGRESS_EVERY == 0:
            progress(attempt + 1, total, report)
    drawn = "the graph" if redraw == 0 else f"none of the {total} graphs drawn; the last one"
    raise GraphError(f"G(n={n}, p={p}) with seed {seed} fails the check for b={b} ({drawn}): "
                     f"{'; '.join(report.failures())}. Raise graph.p, lower screening.b, or allow "
                     f"(more) redraws with graph.redraw")


def to_json(adj, report: GraphReport | None = None) -> dict[str, Any]:
    """A JSON-ready dict of the graph (n and its edge list, pairs i < j) and its report."""
    adj = _as_adjacency(adj)
    return {"n": int(adj.shape[0]), "edges": edge_list(adj).tolist(),
            "report": None if report is None else report.as_dict()}


def from_json(data: dict[str, Any]) -> np.ndarray:
    """The adjacency matrix saved by :func:`to_json`."""
    return from_edges(int(data["n"]), data["edges"])
