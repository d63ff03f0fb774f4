"""mpisim sweep: the grid file, the cells, max-min selection and the worst case (pure), and a small
grid run for real (MPI tier): a failing cell does not stop the others, a second start runs only
what is missing, a changed cell is moved aside, the merge names the missing cells."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mpisim import sweep

BASE = """
[base]
data.name = "synthetic_regression"
data.params.samples = 300
data.params.dim = 8
data.params.test_samples = 40
model.name = "least_squares"
agents.n = 5
agents.per_rank = 3
aggregator.f = 1
byzantine.count = 1
run.rounds = 6
run.eval_every = 3
"""


def grid_file(tmp_path, body: str, *, sweep_table: str = 'mode = "server"\nranks = 3\nout_dir = "out"\n'
                                                         'seeds = [0, 1]\ntimeout = 120\n') -> str:
    path = tmp_path / "grid.toml"
    path.write_text(f"[sweep]\n{sweep_table}\n{BASE}\n{textwrap.dedent(body)}")
    return str(path)


# ---------------------------------------------------------------------------- the file and its cells


def test_cells_cross_the_axes_zip_the_groups_then_candidates_then_seeds(tmp_path):
    grid = sweep.load(grid_file(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm", "median"]
        [[zip]]
        "aggregator.pre" = [[], ["nnm"]]
        "optim.lr" = [0.1, 0.05]
        [select]
        "agents.momentum" = [0.0, 0.9]
    """))

    cells = sweep.cells(grid)

    assert len(cells) == 2 * 2 * 2 * 2
    assert [c.index for c in cells] == list(range(16))
    first, second, last = cells[0].values, cells[1].values, cells[-1].values
    assert first == {"aggregator.name": "cwtm", "aggregator.pre": [], "optim.lr": 0.1,
                     "agents.momentum": 0.0, "run.seed": 0}
    assert second == {**first, "run.seed": 1}
    assert last == {"aggregator.name": "median", "aggregator.pre": ["nnm"], "optim.lr": 0.05,
                    "agents.momentum": 0.9, "run.seed": 1}
    assert len({c.name for c in cells}) == 16
    assert cells[0].name.startswith("cwtm_none_0.1_0.0_0-")
    assert [c.name for c in sweep.cells(sweep.load(grid.path))] == [c.name for c in cells]  # stable


@pytest.mark.parametrize("body, message", [
    ("[axes]\naggregator = [1]\n", "'aggregator' is not a field"),
    ('[axes]\n"aggregator.name" = []\n', "non-empty list"),
    ('[[zip]]\n"optim.lr" = [0.1]\n"aggregator.name" = ["cwtm", "median"]\n', "one length"),
    ('[axes]\n"run.seed" = [1]\n', "run.seed is set by the sweep"),
    ('[axes]\n"optim.lr" = [0.1]\n[select]\n"optim.lr" = [0.2]\n', "optim.lr is in more than one axis"),
    ('[report]\nworst_over = ["byzantine.fault"]\n', "'byzantine.fault' is not a field of [axes]"),
    ('[report]\nmetric = "accuracy"\n', "[report] metric"),
    ('[reports]\nmetric = "x"\n', "unknown key 'reports'"),
    ('[axes]\n"aggregator.name" = ["cwtm"]\n[report]\ncurves = [{group = "aggregator.name", x = "epoch"}]\n',
     "[report] curves: x one of round, time, bytes"),
])
def test_bad_grids_name_the_key(tmp_path, body, message):
    with pytest.raises(sweep.GridError) as caught:
        sweep.load(grid_file(tmp_path, body))
    assert message in str(caught.value)


def test_bad_sweep_table_and_a_cell_whose_configuration_is_wrong(tmp_path):
    with pytest.raises(sweep.GridError, match=r"\[sweep\] ranks"):
        sweep.load(grid_file(tmp_path, "", sweep_table='ranks = 1\n'))
    with pytest.raises(sweep.GridError, match=r"\[sweep\]: unknown key 'rank'"):
        sweep.load(grid_file(tmp_path, "", sweep_table='rank = 3\n'))
    grid = sweep.load(grid_file(tmp_path, '[axes]\n"aggregator.f" = [1, 3]\n'))
    cells = sweep.cells(grid)
    sweep.resolve(grid, cells[0])
    with pytest.raises(sweep.GridError, match=r"cell 2 \(3_0-\w+\): config error: aggregator.f"):
        sweep.resolve(grid, cells[2])


def test_a_label_key_names_a_zipped_group_and_is_no_field(tmp_path):
    grid = sweep.load(grid_file(tmp_path, """
        [[zip]]
        rule = ["cwtm", "nnm+cwtm"]
        "aggregator.name" = ["cwtm", "cwtm"]
        "aggregator.pre" = [[], ["nnm"]]
        [report]
        tables = [["agents.n", "rule"]]
    """.replace('tables = [["agents.n", "rule"]]', "")))
    cells = sweep.cells(grid)

    assert [c.values["rule"] for c in cells] == ["cwtm", "cwtm", "nnm+cwtm", "nnm+cwtm"]
    cfg = sweep.resolve(grid, cells[2])
    assert cfg.aggregator.pre == ("nnm",) and not hasattr(cfg, "rule")
    with pytest.raises(sweep.GridError, match="a group of labels only"):
        sweep.load(grid_file(tmp_path, '[[zip]]\nrule = ["a", "b"]\n'))
    with pytest.raises(sweep.GridError, match="'rule' is not a field"):
        sweep.load(grid_file(tmp_path, '[axes]\nrule = ["a", "b"]\n'))


def test_a_table_keeps_a_zipped_group_in_one_table_and_can_show_another_metric(tmp_path):
    grid = sweep.load(grid_file(tmp_path, """
        [[zip]]
        filter = ["cge, f = 1", "cge, f = 2"]
        "aggregator.name" = ["cge", "cge"]
        "aggregator.f" = [1, 2]
        [axes]
        "aggregator.averaging" = [0.0, 0.5]
        [report]
        tables = [["filter", "aggregator.averaging"],
                  ["filter", "aggregator.averaging", "lowest_test_accuracy_second_half"]]
    """))
    cells = sweep.cells(grid)
    results = {c.name: {"final": {"test_accuracy": 0.9 - 0.1 * c.values["aggregator.f"]},
                        "late": {"lowest_test_accuracy": 0.5 + c.values["aggregator.averaging"] / 10}}
               for c in cells}
    grid.out_dir.mkdir(parents=True)

    md = sweep.report(grid, cells, results)["md"].read_text()

    assert ("| filter \\ aggregator.averaging | 0.0 | 0.5 |\n| --- | --- | --- |\n"
            "| cge, f = 1 | 80.00 | 80.00 |\n| cge, f = 2 | 70.00 | 70.00 |") in md
    assert "lowest_test_accuracy_second_half: filter down" in md
    assert "| cge, f = 2 | 50.00 | 55.00 |" in md


def test_array_spec_and_labels():
    assert sweep.array_spec([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    assert sweep.array_spec([5]) == "5"
    assert sweep.label([]) == "none" and sweep.label(["nnm", "arc"]) == "nnm+arc" and sweep.label(True) == "true"


# ---------------------------------------------------------------------------- max-min, by hand


def test_worst_case_over_attacks_and_max_min_selection_by_hand(tmp_path):
    grid = sweep.load(grid_file(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm"]
        "byzantine.fault" = ["alie", "ipm"]
        [select]
        "optim.lr" = [0.1, 0.05]
        [report]
        worst_over = ["byzantine.fault"]
    """))
    cells = sweep.cells(grid)
    # accuracy[(fault, lr)] for seeds 0 and 1:
    #   lr 0.1:  alie 0.90, 0.80 (mean 0.85); ipm 0.70, 0.60 (mean 0.65) -> worst 0.65 (ipm)
    #   lr 0.05: alie 0.75, 0.75 (mean 0.75); ipm 0.80, 0.70 (mean 0.75) -> worst 0.75 (alie, first)
    table = {("alie", 0.1): (0.9, 0.8), ("ipm", 0.1): (0.7, 0.6),
             ("alie", 0.05): (0.75, 0.75), ("ipm", 0.05): (0.8, 0.7)}
    results = {c.name: {"final": {"test_accuracy": table[(c.values["byzantine.fault"], c.values["optim.lr"])]
                                  [c.values["run.seed"]]}} for c in cells}

    (row,) = sweep.worst_cases(grid, cells, results)

    assert row["chosen"] == {"optim.lr": 0.05}
    assert row["worst"] == {"byzantine.fault": "alie"}
    assert row["mean"] == pytest.approx(0.75) and row["sd"] == pytest.approx(0.0) and row["seeds"] == 2
    assert row["candidates"]["0.1"] == {"worst": pytest.approx(0.65), "at": "ipm"}
    assert row["complete"]

    del results[cells[0].name]                     # one seed of (alie, 0.1) missing
    results[cells[-1].name] = {"final": {}}         # (ipm, 0.05) seed 1 diverged: no accuracy
    (row,) = sweep.worst_cases(grid, cells, results)
    assert not row["complete"] and row["cells"] == 7
    assert row["chosen"] == {"optim.lr": 0.1} and row["mean"] == pytest.approx(0.65)


def test_report_writes_markdown_csv_json_and_a_heatmap(tmp_path):
    grid = sweep.load(grid_file(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm", "median"]
        "aggregator.f" = [0, 1]
        "byzantine.fault" = ["alie", "ipm"]
        [report]
        worst_over = ["byzantine.fault"]
        heatmaps = [["aggregator.name", "aggregator.f"]]
        tables = [["aggregator.f", "aggregator.name"]]
    """))
    cells = sweep.cells(grid)
    results = {c.name: {"final": {"test_accuracy": 0.5 + 0.1 * c.values["aggregator.f"]
                                  - 0.2 * (c.values["byzantine.fault"] == "ipm")}} for c in cells}
    grid.out_dir.mkdir(parents=True)

    out = sweep.report(grid, cells, results)

    md = out["md"].read_text()
    assert "| cwtm | 1 | 40.00 | 0.00 | 2 | ipm | 4/4 |" in md
    rows = list(__import__("csv").reader(out["csv"].open()))
    assert rows[0][:3] == ["aggregator.name", "aggregator.f", "worst final_test_accuracy (%)"] and len(rows) == 5
    assert json.loads(out["json"].read_text())["rows"][0]["worst"] == {"byzantine.fault": "ipm"}
    png = out["heatmap aggregator.name x aggregator.f"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| aggregator.f \\ aggregator.name | cwtm | median |\n| --- | --- | --- |\n| 0 | 30.00 | 30.00 |\n" \
           "| 1 | 40.00 | 40.00 |" in md


# ---------------------------------------------------------------------------- for real


FAILING_PLUGIN = '''
import torch
from mpisim import register

@register.rule("always_fails", coordinatewise=True, check=lambda n, f: None, reference="a test")
def fails(x: torch.Tensor, *, f: int) -> torch.Tensor:
    raise RuntimeError("this rule always fails")
'''


def grid_with_failing_rule(tmp_path, body: str, *, sweep_table: str) -> str:
    """A grid file whose base loads a plugin registering ``always_fails``, a rule that raises."""
    (tmp_path / "fails.py").write_text(FAILING_PLUGIN)
    grid = grid_file(tmp_path, body, sweep_table=sweep_table)
    text = open(grid).read().replace("[base]\n", f'[base]\nrun.plugins = ["{tmp_path / "fails.py"}"]\n')
    open(grid, "w").write(text)
    return grid


def sweep_cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "mpisim.cli", "sweep", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.processes
@pytest.mark.timeout(900)
def test_a_small_sweep_runs_resumes_reports_and_survives_a_failing_cell(tmp_path):
    grid = grid_with_failing_rule(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm", "always_fails"]
        "byzantine.fault" = ["sign_flip", "alie"]
        [report]
        metric = "final_test_loss"
        worst_over = ["byzantine.fault"]
        curves = [{group = "aggregator.name", x = "bytes", y = "test_loss"}]
    """, sweep_table='mode = "server"\nranks = 3\nout_dir = "out"\nseeds = [0]\ntimeout = 120\n')

    first = sweep_cli(grid, "--jobs", "1", cwd=tmp_path)

    assert first.returncode == 1, first.stdout + first.stderr
    out = tmp_path / "out"
    failures = json.loads((out / "failures.json").read_text())
    assert len(failures) == 2 and all("this rule always fails" in m or "exit" in m for m in failures.values())
    listed = sweep_cli(grid, "--list", cwd=tmp_path).stdout.split("\n")
    assert listed[0].startswith("4 cells, 3 ranks each, run directories in ")
    assert [line.split()[1] for line in listed[1:] if line.strip()] == ["done", "done", "incomplete", "incomplete"]
    merged = sweep_cli(grid, "--merge", cwd=tmp_path)
    assert "--array=2-3" in merged.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["done"] == 2 and results["missing"] == [2, 3]
    report = (out / "report.md").read_text()
    assert "| cwtm |" in report and "| always_fails | no result |" in report
    assert (out / "curves_aggregator.name_test_loss_bytes.png").read_bytes()[:4] == b"\x89PNG"

    # Started again after the done cells' base changed for one of them: only that one and the failed
    # ones run; the changed cell's old directory is moved aside, not written into.
    cells = sweep.cells(sweep.load(grid))
    done_model = (out / cells[0].name / "summary.json").read_text()
    config_file = out / cells[1].name / "config.toml"
    config_file.write_text(config_file.read_text().replace("rounds = 6", "rounds = 5"))
    again = sweep_cli(grid, "--cell", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / f"{cells[1].name}.old-1" / "summary.json").is_file()
    assert (out / cells[0].name / "summary.json").read_text() == done_model
    listed = sweep_cli(grid, "--list", cwd=tmp_path).stdout.split("\n")[1:]
    assert [line.split()[1] for line in listed if line.strip()] == ["done", "done", "incomplete", "incomplete"]


@pytest.mark.processes
@pytest.mark.timeout(600)
def test_a_cell_of_a_sweep_gives_the_model_of_the_same_run_alone(tmp_path):
    from conftest import run_mpi

    grid = grid_file(tmp_path, '[axes]\n"byzantine.fault" = ["alie"]\n"run.save_model" = [true]\n',
                     sweep_table='ranks = 3\nout_dir = "out"\nseeds = [4]\n')
    assert sweep_cli(grid, cwd=tmp_path).returncode == 0
    (cell,) = sweep.cells(sweep.load(grid))
    alone = run_mpi(3, ["-m", "mpisim.server_mode", "--config", str(tmp_path / "out" / cell.name / "config.toml"),
                        "--run.out_dir", str(tmp_path / "alone"), "--run.name", "a"], timeout=240)
    assert alone.returncode == 0, alone.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / cell.name / "model.npy"),
                                  np.load(tmp_path / "alone" / "a" / "model.npy"))


def test_the_command_exits_2_naming_the_key_before_running_anything(tmp_path):
    grid = grid_file(tmp_path, '[axes]\n"aggregator.f" = [1, 3]\n')

    result = sweep_cli(grid, cwd=tmp_path, timeout=120)

    assert result.returncode == 2
    assert "config error: aggregator.f" in result.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- many runs per launch


@pytest.mark.processes
@pytest.mark.timeout(900)
def test_cells_run_in_one_job_give_the_models_of_one_job_each(tmp_path):
    # A data fault on MNIST images after an omniscient one on least squares: the data set read once
    # and shared, the generators, the windows and communicators of one run freed before the next.
    grid = grid_file(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm", "median"]
        "run.save_model" = [true]
        [[zip]]
        "data.name" = ["synthetic_regression", "mnist-small"]
        "data.params" = [{samples = 300, dim = 8, test_samples = 40}, {}]
        "data.test_size" = [0, 200]
        "model.name" = ["least_squares", "linear"]
        "byzantine.fault" = ["alie", "label_flip"]
        "optim.lr" = [0.05, 0.1]
    """, sweep_table='ranks = 3\nout_dir = "out"\nseeds = [0, 1]\n')
    text = open(grid).read().replace("data.params.samples = 300\ndata.params.dim = 8\ndata.params.test_samples = 40\n",
                                     "")
    open(grid, "w").write(text.replace('model.name = "least_squares"\n', ""))

    one_each = sweep_cli(grid, "--out-dir", str(tmp_path / "one"), cwd=tmp_path)
    blocked = sweep_cli(grid, "--out-dir", str(tmp_path / "blocked"), "--block", "16", cwd=tmp_path)

    assert one_each.returncode == 0 and blocked.returncode == 0, one_each.stdout + blocked.stdout + blocked.stderr
    cells = sweep.cells(sweep.load(grid))
    assert len(cells) == 8 and "(cells 0-7 in one job" in blocked.stdout
    for cell in cells:
        a = np.load(tmp_path / "one" / cell.name / "model.npy")
        b = np.load(tmp_path / "blocked" / cell.name / "model.npy")
        assert np.array_equal(a, b), cell.name
        assert (json.loads((tmp_path / "one" / cell.name / "summary.json").read_text())["final"]
                == json.loads((tmp_path / "blocked" / cell.name / "summary.json").read_text())["final"])


@pytest.mark.processes
@pytest.mark.timeout(900)
def test_a_cell_that_aborts_its_job_takes_no_other_cell_down(tmp_path):
    grid = grid_with_failing_rule(tmp_path, """
        [axes]
        "aggregator.name" = ["cwtm", "always_fails", "median"]
    """, sweep_table='ranks = 3\nout_dir = "out"\nseeds = [0, 1]\nblock = 6\ntimeout = 120\n')

    result = sweep_cli(grid, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    listed = sweep_cli(grid, "--list", cwd=tmp_path).stdout.split("\n")
    assert listed[0].startswith("1 blocks, 3 ranks each, of up to 6 cells (6 cells)")
    assert [line.split()[1] for line in listed[1:] if line.strip()] == ["done", "done", "incomplete",
                                                                        "incomplete", "done", "done"]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert sorted(failures) == sorted(c.name for c in sweep.cells(sweep.load(grid))[2:4])
    assert all("this rule always fails" in m for m in failures.values()), failures
    logs = sorted(p.name for p in (tmp_path / "out" / ".logs").glob("block-*.log"))
    assert logs == ["block-0-5.log", "block-3-5.log", "block-4-5.log"]  # a new job after each abort
