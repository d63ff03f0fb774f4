"""The mpisim command (mpisim.cli): each subcommand is its python -m form, arguments passed through unchanged;
one real 3-rank server run through the installed script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_mpi
from mpisim import cli

SCRIPT = Path(sys.executable).parent / "mpisim"


@pytest.fixture
def script():
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: reinstall the package (./launch/setup.sh)"
    return str(SCRIPT)


def run(*args, timeout=120):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_the_help_lists_every_subcommand_and_its_module(script):
    result = run(script, "--help")

    assert result.returncode == 0, result.stderr
    for name, (module, _) in cli.COMMANDS.items():
        assert f"  {name} " in result.stdout and f"python -m {module}" in result.stdout
    assert list(cli.COMMANDS) == ["server", "decentralized", "one-round", "sweep", "plot", "fetch", "testing"]


def test_server_print_config_is_that_of_python_m(script):
    ours = run(script, "server", "--print-config", "--agents.n", "4")
    theirs = run(sys.executable, "-m", "mpisim.server_mode", "--print-config", "--agents.n", "4")

    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and "n = 4" in ours.stdout


@pytest.mark.parametrize("argv,message", [(["bogus"], "unknown command 'bogus'"), ([], "a COMMAND is required"),
                                          (["--agents.n", "4", "server"], "unknown command '--agents.n'")])
def test_a_missing_or_unknown_subcommand_is_a_usage_error(capsys, argv, message):
    status = cli.main(argv)

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("usage: mpisim COMMAND") and message in err


def test_arguments_reach_the_subcommand_unchanged(capsys):
    status = cli.main(["testing", "rule", "median", "--d", "3", "--f", "1"])

    out = capsys.readouterr().out
    assert status == 0, out
    assert "rule 'median'" in out and "d=3, f=1" in out


@pytest.mark.processes
def test_mpiexec_runs_the_server_through_the_script(script, tmp_path):
    # run_mpi starts `python ARGS`: the script is the program, so its own code (the generated wrapper
    # around mpisim.cli.main) runs on every rank; the shebang is exercised by the tests above.
    result = run_mpi(3, [script, "server", "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "2",
                         "--run.progress", "false", "--data.test_size", "100", "--run.out_dir", str(tmp_path),
                         "--run.name", "cli"], timeout=240)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert len(summary["ranks"]) == 3
    assert "final test accuracy" in result.stdout
