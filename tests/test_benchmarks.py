"""The benchmark scripts start: each one imports and prints its usage."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def test_there_are_benchmark_scripts():
    assert {"bench_round.py", "bench_aggregators.py", "cge_table.py", "bridge_tables.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_prints_its_usage(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=BENCHMARKS,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
