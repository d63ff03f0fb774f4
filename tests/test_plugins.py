"""Users' plugins (run.plugins): a file outside the repository that registers rules, run through the
entry points at 3+ ranks; and every way a plugin can fail, named, exit 2 on every rank."""

import json
import textwrap

import pytest

from conftest import run_mpi
from mpisim import plugins, registry

PLUGIN = textwrap.dedent('''
    """A user's defences, for the tests: one per-coordinate rule, one of whole rows, one pre-step."""
    import torch

    from mpisim import register


    @register.rule("clipped_mean_t", coordinatewise=True, reference="a test")
    def clipped_mean(x: torch.Tensor, *, f: int, c: float = 0.05) -> torch.Tensor:
        """Per coordinate: the mean of the values clipped to [-c, c]."""
        return x.clamp(-c, c).mean(dim=0)


    @register.rule("smallest_norm_t", coordinatewise=False)
    def smallest_norm(x: torch.Tensor, *, f: int) -> torch.Tensor:
        """The row of smallest norm (whole rows, and no 'sharding' argument)."""
        return x[torch.argmin(x.norm(dim=1))]


    @register.pre_aggregator("halve_t", out=lambda n, f: (n, f), coordinatewise=True)
    def halve(x, *, f, rng):
        return x * 0.5, f


    @register.model("tiny_mlp_t", params={"hidden": 16})
    def tiny_mlp(input_shape, num_classes, params):
        """One hidden layer of `hidden` ReLU units, cross-entropy."""
        width = 1
        for size in input_shape:
            width *= size
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width, params["hidden"]),
                                     torch.nn.ReLU(), torch.nn.Linear(params["hidden"], num_classes))
        return module, torch.nn.functional.cross_entropy


    @register.screening("clipped_average_t", check=lambda m, b: None if m > 2 * b else f"needs m > 2b, got m={m}")
    def clipped_average(own, received, *, b):
        """Average own and received models, each clipped to [-1, 1] per coordinate."""
        return torch.cat((own[None], received)).clamp(-1.0, 1.0).mean(dim=0)


    @register.attack("opposite_mean_t", omniscient=True, colludes=True, reference="a test")
    def opposite_mean(own, *, honest, f, rngs, scale: float = 2.0):
        """Every faulty agent sends -scale times the honest agents' mean."""
        return (-scale * honest.mean(dim=0)).expand(own.shape[0], -1).clone()


    @register.attack("against_rule_t", omniscient=True, colludes=True)
    def against_rule(own, *, honest, f, rngs, ctx, scales: tuple = (0.5, 2.0, 8.0)):
        """Of a few multiples of -mean(honest), send the one that moves the server's aggregate most."""
        assert ctx.round >= 1 and ctx.step_size > 0 and ctx.model.shape == (own.shape[1],), ctx
        assert ctx.n == own.shape[0] + honest.shape[0] and ctx.rule == "cwtm", ctx
        mean = honest.mean(dim=0)

        def shift(scale):
            x = torch.cat((honest, (-scale * mean).expand(own.shape[0], -1)))
            out = ctx.aggregate(x)
            assert torch.equal(out, ctx.aggregate(x))  # one stream per round: the same draw at every call
            return float((out - mean).norm())

        best = max(scales, key=shift)
        return (-best * mean).expand(own.shape[0], -1).clone()
''')

COMMON = ["-m", "mpisim.server_mode", "--agents.n", "4", "--run.rounds", "6", "--run.eval_every", "3",
          "--run.progress", "false", "--data.test_size", "100", "--run.save_model", "true",
          "--byzantine.fault", "alie", "--byzantine.count", "1", "--aggregator.f", "1"]


@pytest.fixture
def plugin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("outside")  # not under the repository
    (directory / "my_defence.py").write_text(PLUGIN)
    return directory


def job(nprocs, args, cwd, name, *extra):
    return run_mpi(nprocs, [*COMMON, *args, "--run.out_dir", str(cwd / "runs"), "--run.name", name, *extra],
                   timeout=180, cwd=cwd)


def model(cwd, name):
    return (cwd / "runs" / name / "model.npy").read_bytes()


@pytest.mark.processes
def test_a_plugin_rule_runs_packed_unpacked_and_sharded_to_the_same_model(plugin_dir):
    args = ["--run.plugins", "my_defence.py", "--aggregator.name", "clipped_mean_t", "--aggregator.pre", "halve_t",
            "--byzantine.fault", "opposite_mean_t", "--byzantine.params.scale", "3",
            "--model.name", "tiny_mlp_t", "--model.params.hidden", "24"]
    packed = job(3, [*args, "--agents.per_rank", "2"], plugin_dir, "packed")
    assert packed.returncode == 0, packed.stderr[-3000:]
    unpacked = job(5, [*args, "--agents.per_rank", "1"], plugin_dir, "unpacked")
    assert unpacked.returncode == 0, unpacked.stderr[-3000:]
    sharded = job(4, [*args, "--agents.per_rank", "2", "--server.ranks", "2"], plugin_dir, "sharded")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert model(plugin_dir, "packed") == model(plugin_dir, "unpacked") == model(plugin_dir, "sharded")

    summary = json.loads((plugin_dir / "runs" / "packed" / "summary.json").read_text())
    assert summary["d"] == 784 * 24 + 24 + 24 * 10 + 10  # the plugin's model, with its parameter
    assert summary["fault"] == "opposite_mean_t" and summary["aggregator"] == "clipped_mean_t"
    recorded = summary["plugins"][0]
    assert recorded["file"] == str(plugin_dir / "my_defence.py") and len(recorded["sha256"]) == 64
    saved = (plugin_dir / "runs" / "packed" / "config.toml").read_text()
    assert str(plugin_dir / "my_defence.py") in saved and recorded["sha256"] in saved


@pytest.mark.processes
def test_a_rule_aware_plugin_attack_gets_the_rounds_context_packed_and_unpacked(plugin_dir):
    # bucketing shuffles with the server's stream: the attack's copy of the pipeline draws from its own
    args = ["--run.plugins", "my_defence.py", "--aggregator.name", "cwtm", "--aggregator.pre", "bucketing",
            "--agents.n", "6", "--byzantine.fault", "against_rule_t"]
    packed = job(3, [*args, "--agents.per_rank", "3"], plugin_dir, "aware_packed")
    assert packed.returncode == 0, packed.stderr[-3000:]
    unpacked = job(4, [*args, "--agents.per_rank", "2"], plugin_dir, "aware_unpacked")
    assert unpacked.returncode == 0, unpacked.stderr[-3000:]
    assert model(plugin_dir, "aware_packed") == model(plugin_dir, "aware_unpacked")
    blind = job(3, [*args[:-1], "opposite_mean_t", "--agents.per_rank", "3"], plugin_dir, "blind")
    assert blind.returncode == 0, blind.stderr[-3000:]
    assert model(plugin_dir, "blind") != model(plugin_dir, "aware_packed")


@pytest.mark.processes
def test_a_plugin_screening_runs_in_the_decentralized_mode_packed_and_unpacked(plugin_dir):
    args = ["-m", "mpisim.decentralized", "--run.plugins", "my_defence.py", "--screening.name", "clipped_average_t",
            "--screening.b", "1", "--nodes.n", "6", "--byzantine.count", "1", "--graph.p", "0.9",
            "--run.rounds", "6", "--run.eval_every", "3", "--run.progress", "false", "--data.test_size", "100",
            "--run.save_model", "true", "--run.out_dir", str(plugin_dir / "runs")]
    for ranks, per_rank in ((3, 2), (6, 1)):
        result = run_mpi(ranks, [*args, "--nodes.per_rank", str(per_rank), "--run.name", f"dec{ranks}"],
                         timeout=180, cwd=plugin_dir)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (plugin_dir / "runs" / "dec3" / "models.npy").read_bytes() == \
        (plugin_dir / "runs" / "dec6" / "models.npy").read_bytes()
    summary = json.loads((plugin_dir / "runs" / "dec3" / "summary.json").read_text())
    assert summary["plugins"][0]["file"] == str(plugin_dir / "my_defence.py")


@pytest.mark.processes
def test_a_whole_row_plugin_rule_without_sharding_is_refused_on_a_sharded_server(plugin_dir):
    refused = job(4, ["--run.plugins", "my_defence.py", "--aggregator.name", "smallest_norm_t",
                      "--agents.per_rank", "2", "--server.ranks", "2"], plugin_dir, "refused")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "config error: server.ranks: 2 server ranks: rule 'smallest_norm_t' is neither coordinate-wise" \
        in refused.stderr
    assert not (plugin_dir / "runs" / "refused").exists()


BROKEN = {
    "syntax error": ("def oops(:\n", "broken.py: syntax error at line 1"),
    "import error": ("import not_a_module_anywhere\n",
                     "broken.py: importing it raised ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    "raises": ("raise RuntimeError('no GPU here')\n", "broken.py: importing it raised RuntimeError: no GPU here"),
    "clashing name": ("from mpisim import register\n\n"
                      "@register.rule('cwtm', coordinatewise=True)\n"
                      "def cwtm(x, *, f):\n    return x[0]\n",
                      "rule 'cwtm' is registered twice: by mpisim and by"),
}


@pytest.mark.processes
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_stops_every_rank_naming_it(tmp_path, case):
    source, message = BROKEN[case]
    (tmp_path / "broken.py").write_text(source)
    result = run_mpi(3, [*COMMON, "--run.plugins", "broken.py", "--agents.per_rank", "2",
                         "--run.out_dir", str(tmp_path / "runs")], timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config error: run.plugins:" in result.stderr and message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.count("config error") == 1  # rank 0 speaks for all


@pytest.mark.processes
def test_a_resume_imports_the_plugin_again_and_refuses_a_changed_one(plugin_dir):
    args = ["--run.plugins", "my_defence.py", "--aggregator.name", "clipped_mean_t", "--agents.per_rank", "2",
            "--run.checkpoint_every", "3"]
    first = job(3, args, plugin_dir, "resumed")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_mpi(3, ["-m", "mpisim.server_mode", "--run.resume", str(plugin_dir / "runs" / "resumed"),
                        "--run.rounds", "9"], timeout=180, cwd=plugin_dir.parent)  # another directory
    assert again.returncode == 0, again.stderr[-3000:]
    (plugin_dir / "my_defence.py").write_text(PLUGIN.replace("c: float = 0.05", "c: float = 0.5"))
    changed = run_mpi(3, ["-m", "mpisim.server_mode", "--run.resume", str(plugin_dir / "runs" / "resumed"),
                          "--run.rounds", "12"], timeout=180, cwd=plugin_dir)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert f"run.plugins: {plugin_dir / 'my_defence.py'} changed since the run started" in changed.stderr


def test_loading_names_what_is_wrong(tmp_path):
    with pytest.raises(plugins.PluginError, match="missing.py: no such file"):
        plugins.load(["missing.py"])
    with pytest.raises(plugins.PluginError, match="no_such_pkg_xyz.attacks: no such module"):
        plugins.load(["no_such_pkg_xyz.attacks"])
    path = tmp_path / "fine.py"
    path.write_text("from mpisim import register\n\n@register.rule('fine_t', coordinatewise=True)\n"
                    "def fine(x, *, f):\n    return x.mean(dim=0)\n")
    try:
        first = plugins.load([str(path)])
        assert plugins.load([str(path)]) == first  # once per process
        assert registry.rules.entry("fine_t").origin == str(path)
    finally:
        registry.rules.remove("fine_t")


@pytest.mark.processes
def test_the_example_plugin_runs_and_its_whole_row_rule_runs_sharded(tmp_path):
    import numpy as np

    from conftest import ROOT

    example = ROOT / "examples" / "plugins" / "my_defence.py"
    args = ["-m", "mpisim.server_mode", "--run.plugins", str(example), "--agents.n", "4", "--agents.per_rank", "2",
            "--model.name", "small_mlp", "--aggregator.pre", "shrink_to_median", "--aggregator.name",
            "norm_weighted", "--aggregator.f", "1", "--byzantine.fault", "scaled_negative", "--byzantine.count", "1",
            "--run.rounds", "5", "--run.eval_every", "5", "--run.progress", "false", "--data.test_size", "100",
            "--run.save_model", "true", "--run.out_dir", str(tmp_path)]
    for ranks, servers in ((3, 1), (4, 2)):
        result = run_mpi(ranks, [*args, "--server.ranks", str(servers), "--run.name", f"s{servers}"], timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (np.load(tmp_path / f"s{s}" / "model.npy") for s in (1, 2))
    assert np.allclose(one, two, rtol=1e-5, atol=1e-7)  # whole-row sums added in another order
