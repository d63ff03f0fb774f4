"""mpisim.plot: curves from run directories (pure tier), and from real runs of every protocol (MPI tier)."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from mpisim import config, metrics, plot
from mpisim.protocols import decentralized_config
from mpisim.protocols import server_config as server_mode_config

PNG = b"\x89PNG\r\n\x1a\n"


def server_config(*, seed=0, aggregator="cge", fault="gradient_reverse"):
    base = server_mode_config.ServerModeConfig()
    return dataclasses.replace(base, run=dataclasses.replace(base.run, seed=seed),
                               aggregator=dataclasses.replace(base.aggregator, name=aggregator),
                               byzantine=dataclasses.replace(base.byzantine, fault=fault))


def server_record(t, accuracy, *, time=None, uplink=None):
    """One line as the driver writes it in server mode."""
    return {"round": t, "time": 0.5 * t if time is None else time, "train_loss": None if t == 0 else 1.0 / t,
            "test_loss": 2.0 - t / 10, "test_accuracy": accuracy,
            "bytes": {"server_sent": 100 * t, "server_received": 300 * t,
                      "agents_sent": 300 * t if uplink is None else uplink, "agents_received": 100 * t,
                      "adversary_sent": 0, "adversary_received": 0}}


def write_run(root, name, cfg, records):
    run_dir = root / name
    run_dir.mkdir()
    metrics.atomic_write(run_dir / "config.toml", config.dumps(cfg))
    metrics.atomic_write(run_dir / "metrics.jsonl", "".join(metrics.to_json(r) + "\n" for r in records))
    return run_dir


def accuracy_run(root, name, accuracies, **cfg):
    return write_run(root, name, server_config(**cfg),
                     [server_record(t, a) for t, a in zip(range(0, 10 * len(accuracies), 10), accuracies)])


def legend_labels(fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]


# ---------------------------------------------------------------- pure tier: curves and figures


def test_one_curve_per_run_named_by_the_label_field(tmp_path):
    a = accuracy_run(tmp_path, "a", [0.1, 0.5, 0.9], aggregator="cge")
    b = accuracy_run(tmp_path, "b", [0.1, 0.3, 0.4], aggregator="mean", fault="random")
    out = tmp_path / "fig.png"

    fig = plot.plot_runs([a, b], out=out, label=["aggregator.name"])

    assert out.read_bytes().startswith(PNG)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 0
    assert legend_labels(fig) == ["cge", "mean"]
    assert fig.legends[0].get_title().get_text() == "aggregator.name"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [10, 50, 90])  # accuracy in percent
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 10, 20])
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "test accuracy (%)"


def test_default_labels_are_the_fields_that_differ_else_the_directory_names(tmp_path):
    a = accuracy_run(tmp_path, "a", [0.1, 0.5], aggregator="cge", fault="random")
    b = accuracy_run(tmp_path, "b", [0.1, 0.3], aggregator="mean", fault="random")
    same = accuracy_run(tmp_path, "same", [0.1, 0.2], aggregator="mean", fault="random", seed=0)

    fig = plot.plot_runs([a, b], out=tmp_path / "differ.png")
    assert legend_labels(fig) == ["cge", "mean"]
    assert fig.legends[0].get_title().get_text() == "aggregator.name"

    series, title = plot.run_curves([plot.load_run(b), plot.load_run(same)])  # same config, same seed
    assert [s.label for s in series] == ["mean of 2 seeds"]

    series, title = plot.run_curves([plot.load_run(b), plot.load_run(same)], label=["run.seed"])
    assert [s.label for s in series] == ["0 [b]", "0 [same]"]  # the label does not tell them apart

    fig = plot.plot_runs([a], out=tmp_path / "one.png")
    assert legend_labels(fig) == ["a"]


def test_three_seeds_give_one_mean_curve_and_a_min_max_band(tmp_path):
    dirs = [accuracy_run(tmp_path, f"s{seed}", acc, seed=seed)
            for seed, acc in enumerate([[0.1, 0.5, 0.8], [0.1, 0.7, 0.9], [0.1, 0.6, None]])]
    other = accuracy_run(tmp_path, "mean", [0.1, 0.2, 0.3], aggregator="mean")

    fig = plot.plot_runs([*dirs, other], out=tmp_path / "seeds.png", label=["aggregator.name"])

    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1
    assert legend_labels(fig) == ["cge (3 seeds)", "mean"]
    assert "band: min-max over seeds" in fig.legends[0].get_title().get_text()
    # The diverged seed's null is left out of the last round's mean and band.
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [10, 60, 85])
    alone = plot.plot_runs(dirs, out=tmp_path / "alone.png").axes[0]
    assert len(alone.lines) == 1 and len(alone.collections) == 1
    assert legend_labels(alone.figure) == ["mean of 3 seeds"]
    series, _ = plot.run_curves([plot.load_run(d) for d in dirs])
    low, high = series[0].band
    np.testing.assert_allclose(low, [10, 50, 80])
    np.testing.assert_allclose(high, [10, 70, 90])


def test_the_std_band_is_the_sample_standard_deviation(tmp_path):
    dirs = [accuracy_run(tmp_path, f"s{seed}", [acc], seed=seed) for seed, acc in enumerate([0.2, 0.4, 0.6])]

    series, title = plot.run_curves([plot.load_run(d) for d in dirs], band="std")

    assert series[0].y == pytest.approx([40.0])
    assert series[0].band[1] - series[0].y == pytest.approx([20.0])  # sqrt((400 + 0 + 400) / 2)
    assert "mean ± std" in title


def test_x_time_and_bytes_take_the_log_s_values(tmp_path):
    records = [server_record(t, 0.1 * t, time=1.5 * t + 0.25, uplink=4_000_000 * t) for t in range(4)]
    run = write_run(tmp_path, "run", server_config(), records)

    by_time = plot.plot_runs([run], out=tmp_path / "t.png", x="time").axes[0]
    by_bytes = plot.plot_runs([run], out=tmp_path / "b.png", x="bytes").axes[0]
    by_server = plot.plot_runs([run], out=tmp_path / "s.png", x="bytes", bytes_key="server_sent").axes[0]

    np.testing.assert_allclose(by_time.lines[0].get_xdata(), [0.25, 1.75, 3.25, 4.75])
    assert by_time.get_xlabel().startswith("wall time") and "(s" in by_time.get_xlabel()
    np.testing.assert_allclose(by_bytes.lines[0].get_xdata(), [0, 4, 8, 12])  # in MB
    assert by_bytes.get_xlabel() == "uplink: bytes sent by the agents, cumulative (MB)"
    np.testing.assert_allclose(by_server.lines[0].get_xdata(), [0, 100, 200, 300])
    assert by_server.get_xlabel() == "bytes sent by the server, cumulative (B)"


def test_a_decentralized_run_plots_its_consensus_against_the_nodes_bytes(tmp_path):
    cfg = decentralized_config.DecentralizedConfig()
    records = [{"round": t, "time": 0.1 * t, "train_loss": None, "test_loss": 1.0, "test_accuracy": 0.5,
                "test_accuracy_min": 0.4, "test_accuracy_max": 0.6, "consensus_distance": 2.0 ** -t if t else 0.0,
                "consensus_relative": None, "bytes": {"nodes_sent": 1000 * t, "nodes_received": 1000 * t}}
               for t in range(4)]
    run = write_run(tmp_path, "dec", cfg, records)

    fig = plot.plot_runs([run], out=tmp_path / "c.png", x="bytes", y="consensus")

    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 1, 2, 3])  # kB
    assert ax.get_xlabel() == "uplink: bytes sent by the nodes, cumulative (kB)"
    assert ax.get_yscale() == "log" and "consensus distance" in ax.get_ylabel()


def test_missing_and_non_finite_values_leave_gaps(tmp_path):
    records = [server_record(t, a) for t, a in enumerate([0.1, None, 0.5])]
    records[2]["test_loss"] = float("nan")  # written as null
    del records[1]["test_loss"]
    run = write_run(tmp_path, "gaps", server_config(), records)

    ax = plot.plot_runs([run], out=tmp_path / "g.png", y="test_loss").axes[0]
    acc = plot.plot_runs([run], out=tmp_path / "a.png").axes[0]

    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, np.nan, np.nan])
    np.testing.assert_allclose(acc.lines[0].get_ydata(), [10, np.nan, 50])
    assert (tmp_path / "g.png").read_bytes().startswith(PNG)


def test_the_cli_writes_the_png_atomically(tmp_path):
    run = accuracy_run(tmp_path, "run", [0.1, 0.9])
    out = tmp_path / "figs" / "acc.png"
    out.parent.mkdir()

    result = subprocess.run([sys.executable, "-m", "mpisim.plot", str(run), "--x", "time", "--label",
                             "aggregator.name", "-o", str(out)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(PNG)
    assert [p.name for p in out.parent.iterdir()] == ["acc.png"]  # no temporary file left


@pytest.mark.parametrize("args, words", [
    (["{tmp}/nope"], "nope: no such run directory"),
    (["{tmp}/empty"], "empty: no metrics.jsonl"),
    (["{tmp}/run", "--y", "accuracy"], "invalid choice: 'accuracy'"),
    (["{tmp}/run", "--label", "aggregator.nmae"], "run: no config field 'aggregator.nmae' in config.toml "
                                                   "([aggregator] has: name, f, "),
    (["{tmp}/run", "--label", "agg.name"], "no config field 'agg.name' in config.toml (its sections are: run,"),
    (["{tmp}/run", "--y", "distance_to_optimum"], "run: no 'distance_to_optimum' in its metrics.jsonl "
                                                  "(it has: time, train_loss, test_loss, test_accuracy, bytes."),
    (["{tmp}/run", "--x", "bytes", "--bytes", "upstream"], "no 'bytes.upstream'"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, words):
    accuracy_run(tmp_path, "run", [0.1, 0.9])
    (tmp_path / "empty").mkdir()

    code = exit_code([a.format(tmp=tmp_path) for a in args] + ["-o", str(tmp_path / "fig.png")])

    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "fig.png").exists()


def exit_code(argv):
    try:
        return plot.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return exc.code


def test_the_output_must_be_a_png_in_an_existing_directory(tmp_path, capsys):
    run = accuracy_run(tmp_path, "run", [0.1])

    assert plot.main([str(run), "-o", str(tmp_path / "fig.svg")]) == 2
    assert "must be a .png file" in capsys.readouterr().err
    assert plot.main([str(run), "-o", str(tmp_path / "no" / "fig.png")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_series_draw_without_run_directories(tmp_path):
    one = plot.Series("a", [0, 1, 2], [1.0, None, 3.0])
    two = plot.Series("b", [0, 1, 2], [2.0, 2.0, 2.0], band=([1, 1, 1], [3, 3, 3]))

    fig = plot.draw([one, two], xlabel="round", ylabel="loss", out=tmp_path / "d.png", title="t", logy=True)

    assert (tmp_path / "d.png").read_bytes().startswith(PNG)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[0].collections) == 1
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_title() == "t"
    with pytest.raises(ValueError, match="x and y must be 1-D of one length"):
        plot.Series("bad", [0, 1], [1.0])


def test_panels_keep_a_label_s_colour_and_share_one_legend(tmp_path):
    def curves(shift):
        return [plot.Series(name, [0, 1], [shift, shift + k]) for k, name in enumerate(["cge", "mean", "cwtm"])]

    fig = plot.draw_panels({"none": curves(0), "random": curves(1)[::-1], "alie": curves(2)[:1]},
                           xlabel="round", ylabel="acc", out=tmp_path / "p.png", ncols=2)

    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["none", "random", "alie"]
    assert [len(ax.lines) for ax in visible] == [3, 3, 1]
    colour = {line.get_label(): line.get_color() for line in visible[0].lines}
    assert all(line.get_color() == colour[line.get_label()] for ax in visible for line in ax.lines)
    assert len(fig.legends) == 1 and legend_labels(fig) == ["cge", "mean", "cwtm"]


def test_mean_band_aligns_curves_on_x():
    merged = plot.mean_band([plot.Series("s0", [0, 1, 2], [1, 2, 3]), plot.Series("s1", [0, 1], [3, 4])],
                            label="mean")

    np.testing.assert_allclose(merged.x, [0, 1, 2])
    np.testing.assert_allclose(merged.y, [2, 3, 3])
    np.testing.assert_allclose(merged.band[0], [1, 2, 3])
    np.testing.assert_allclose(merged.band[1], [3, 4, 3])


# ---------------------------------------------------------------- MPI tier: what every protocol writes

TINY_REGRESSION = ["--data.name", "synthetic_regression", "--data.params.samples", "300",
                   "--data.params.dim", "20", "--model.name", "least_squares", "--run.progress", "false"]


def real_run(mpirun, tmp_path, module, name, *args):
    result = mpirun(3, ["-m", module, *args, "--run.out_dir", str(tmp_path), "--run.name", name], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name


@pytest.mark.processes
def test_plots_of_real_runs_of_every_protocol(mpirun, tmp_path):
    server = real_run(mpirun, tmp_path, "mpisim.server_mode", "server", *TINY_REGRESSION,
                      "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "4", "--run.eval_every", "2")
    nodes = real_run(mpirun, tmp_path, "mpisim.decentralized", "nodes", "--run.progress", "false",
                     "--data.test_size", "300", "--nodes.n", "6", "--nodes.per_rank", "2", "--screening.b", "1",
                     "--byzantine.count", "1", "--graph.p", "0.9", "--run.rounds", "4", "--run.eval_every", "2")
    once = real_run(mpirun, tmp_path, "mpisim.one_round", "once", *TINY_REGRESSION, "--data.params.dim", "10",
                    "--agents.n", "4", "--agents.per_rank", "2", "--model.init", "zero",
                    "--aggregator.name", "median", "--byzantine.fault", "huge")

    uplink = plot.plot_runs([server], out=tmp_path / "server.png", x="bytes", y="distance_to_optimum").axes[0]
    dec = plot.plot_runs([nodes], out=tmp_path / "nodes.png", y="consensus").axes[0]
    both = plot.plot_runs([server, once], out=tmp_path / "both.png", y="distance_to_optimum")

    assert len(uplink.lines) == 1 and len(uplink.lines[0].get_xdata()) == 3  # rounds 0, 2, 4
    sent = metrics.read_jsonl(server / "metrics.jsonl")[-1]["bytes"]["agents_sent"]
    assert sent == 4 * 4 * 20 * 4  # 4 rounds, 4 agents, d = 20 float32
    assert uplink.lines[0].get_xdata()[-1] == pytest.approx(sent / 1000)  # kB
    assert "agents" in uplink.get_xlabel() and uplink.get_yscale() == "log"
    assert len(dec.lines) == 1 and np.isfinite(dec.lines[0].get_ydata()[1:]).all()
    assert len(both.axes[0].lines) == 2 and legend_labels(both) == ["server", "once"]
    assert json.loads((once / "summary.json").read_text())["mode"] == "one_round"
    result = subprocess.run([sys.executable, "-m", "mpisim.plot", str(nodes), str(server), "--x", "bytes",
                             "--y", "test_loss", "-o", str(tmp_path / "mixed.png")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # each run's own uplink: nodes_sent and agents_sent
    assert (tmp_path / "mixed.png").read_bytes().startswith(PNG)


def test_log_axes_are_drawn_when_asked():
    from mpisim import plot

    fig = plot.draw([plot.Series("a", [1, 10, 100], [1.0, 0.1, 0.01])], xlabel="n", ylabel="error",
                    logx=True, logy=True)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert plot.draw([plot.Series("a", [1, 2], [3, 4])], xlabel="x", ylabel="y").axes[0].get_xscale() == "linear"
