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
) + ["mpisim.protocols.state", "mpisim.protocols.uplink", "mpisim.protocols.server_config",
     "mpisim.protocols.one_round_config", "mpisim.protocols.decentralized_config"]

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


def _own_sections() -> dict[str, set[str]]:
    """Each mode's sections that no other mode has (server: compression, server; ...)."""
    import dataclasses
    import importlib

    from mpisim import cli

    modes = {}
    for name, (module, _) in cli.COMMANDS.items():
        protocol = getattr(importlib.import_module(module).main, "protocol", None)
        if protocol is not None:
            modes[name] = {f.name for f in dataclasses.fields(protocol.config_class)}
    return {name: sections - set().union(*(s for other, s in modes.items() if other != name))
            for name, sections in modes.items()}


def test_the_shared_configuration_names_no_field_of_a_single_protocol():
    own = _own_sections()
    assert own["server"] >= {"compression", "server"} and own["decentralized"] >= {"graph", "screening"}
    sections = sorted(set().union(*own.values()))
    source = (PACKAGE / "config.py").read_text()
    import re

    named = sorted(set(re.findall(rf"\b(?:{'|'.join(sections)})\.[a-z_]+", source)))
    assert named == [], f"mpisim/config.py names fields of a single protocol: {named}"
    tree = ast.parse(source)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert not classes & {"ServerModeConfig", "OneRoundConfig", "DecentralizedConfig", "ServerConfig",
                          "CompressionConfig", "ErmConfig", "GraphConfig", "ScreeningConfig", "LocalConfig"}


def _method(path: Path, cls: str, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls).body
    return next(node for node in body if isinstance(node, ast.FunctionDef) and node.name == name)


@pytest.mark.parametrize("cls", ["ServerRole", "AgentHost"])
def test_the_server_and_agent_rounds_do_not_branch_on_the_transport(cls):
    step = _method(PACKAGE / "protocols" / "server.py", cls, "step")
    transport_words = {"windows", "shared", "sharded", "slices", "collectives", "transport", "bounds", "vote",
                       "broadcasts", "server_comm"}
    for node in ast.walk(step):
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
            assert not names & transport_words, f"{cls}.step branches on {sorted(names & transport_words)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "isinstance", f"{cls}.step asks for a type"


def test_the_tests_are_laid_out_like_the_package():
    tests = Path(__file__).resolve().parent
    folders = {p.relative_to(tests) for p in tests.rglob("*") if p.is_dir() and "__pycache__" not in p.parts}
    assert {Path("rules"), Path("protocols"), Path("datasets")} <= folders
    # tests/collectives runs inside mpiexec (pytest-mpi). The MPI layer's tests sit at the top: in a
    # folder named "mpi", pytest-mpi would take every test for an MPI one (the folder is a keyword).
    assert Path("mpi") not in folders
    for folder in folders - {Path("collectives")}:
        assert (PACKAGE / folder / "__init__.py").exists(), f"tests/{folder} mirrors no package of mpisim"
