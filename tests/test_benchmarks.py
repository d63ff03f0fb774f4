"""The benchmark scripts start: each one imports and prints its usage."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def test_there_are_benchmark_scripts():
    assert {"bench_round.py", "bench_aggregators.py", "cge_table.py", "bridge_tables.py", "bench_codecs.py",
            "ghosh_figures.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_prints_its_usage(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=BENCHMARKS,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


MNIST = BENCHMARKS.parents[1] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST not found at {MNIST}")


@needs_mnist
@pytest.mark.parametrize("command", [["cge_table.py"], ["attack_table.py"], ["averaging_table.py"],
                                     ["bridge_tables.py", "table1"], ["bridge_tables.py", "table2"],
                                     *[["yin_tables.py", t] for t in ("table2", "table3", "table4", "sweep2", "sweep3",
                                                                     "sweep4")], ["yin_rates.py"],
                                     *[["ghosh_figures.py", c] for c in ("regression", "mnist", "lenet")]],
                         ids=" ".join)
def test_every_job_of_a_reproduction_is_a_valid_configuration(command):
    result = subprocess.run([sys.executable, str(BENCHMARKS / command[0]), *command[1:], "--check"],
                            cwd=BENCHMARKS, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "jobs checked: every configuration is valid" in result.stdout


def test_a_bad_job_stops_the_sweep_before_it_starts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    cells = {"good": ["--agents.n", "4", "--agents.per_rank", "2"],
             "typo": ["--agents.n", "4", "--agents.per_rank", "2", "--aggregator.nmae", "cge"]}
    with pytest.raises(SystemExit, match="benchmark job 'typo': config error: aggregator.nmae"):
        common.check_jobs(cells, nprocs=3)
    with pytest.raises(SystemExit, match="benchmark job 'good': config error: agents.per_rank"):
        common.check_jobs(cells, nprocs=4)
