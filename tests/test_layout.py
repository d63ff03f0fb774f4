"""The architecture holds: pure modules import no MPI, and every MPI call goes through mpisim.mpi."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mpisim"
MPI_LAYER = PACKAGE / "mpi"

# Everything but the MPI layer, the protocols on top of it and the two thin entry points.
def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PURE = sorted(
    _module(path)
    for path in PACKAGE.rglob("*.py")
    if MPI_LAYER not in path.parents and "protocols" not in path.parts
    and path.name not in ("server_mode.py", "decentralized.py", "one_round.py", "__main__.py")
) + ["mpisim.protocols.state", "mpisim.protocols.uplink"]

# mpi4py methods that communicate or change communicators.
COMMUNICATING = {
    "Bcast", "bcast", "Ibcast", "Gather", "Gatherv", "Igatherv", "gather", "allgather", "Allgather",
    "Scatter", "Scatterv", "Iscatterv", "scatter", "Reduce", "Allreduce", "allreduce", "Barrier",
    "barrier", "Send", "Recv", "Isend", "Irecv", "send", "recv", "isend", "irecv", "Split", "Dup",
    "Abort", "Neighbor_alltoallw", "Ineighbor_alltoallw", "Create_dist_graph_adjacent", "Waitall",
    "Testall",
}


def test_the_pure_modules_are_found():
    assert {"mpisim.rules.aggregators", "mpisim.learning.models", "mpisim.datasets",
            "mpisim.graphs.topology", "mpisim.config"} <= set(PURE)


def test_importing_every_pure_module_does_not_import_mpi4py():
    code = (f"import importlib, sys\nfor name in {PURE!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('mpi4py')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _modules_outside_the_mpi_layer():
    return [p for p in PACKAGE.rglob("*.py") if MPI_LAYER not in p.parents]


@pytest.mark.parametrize("path", _modules_outside_the_mpi_layer(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_mpi_layer_talks_mpi(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in imports if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in imports if isinstance(node, ast.ImportFrom)]
    calls = [node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr in COMMUNICATING and not _is_mpi_layer_call(node.func)]

    assert not [n for n in names if n.startswith("mpi4py")], "import mpi4py only in mpisim/mpi"
    assert calls == [], f"MPI calls outside mpisim/mpi: {calls}"


def _is_mpi_layer_call(func: ast.Attribute) -> bool:
    """``mpi.barrier(...)`` and the like: a function of the MPI layer, imported as ``mpi``."""
    return isinstance(func.value, ast.Name) and func.value.id == "mpi"
