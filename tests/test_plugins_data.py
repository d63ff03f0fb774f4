"""A user's data set and partition (run.plugins): registered like the built-ins, checked like them, and used
by a real run at 3 ranks; a name taken by a built-in data set is refused naming both."""

import json
import textwrap

import numpy as np
import pytest

from conftest import run_mpi
from mpisim import config, plugins, registry
from mpisim.config import ConfigError
from mpisim.protocols.server_config import ServerModeConfig

PLUGIN = textwrap.dedent('''
    """A user's data set and partition, for the tests."""
    import numpy as np

    from mpisim import register
    from mpisim.datasets import Dataset

    CLASSES = 3


    @register.dataset("mydata", kind="classification", params={"samples": 600, "dim": 8}, needs_root=False,
                      check=lambda p: None if p["samples"] >= 10 else ("samples", f"must be >= 10, got {p['samples']}"),
                      reference="a test")
    def blobs(root, split, params, seed):
        """Gaussian blobs in `dim` dimensions, one per class."""
        centres = 3.0 * np.random.default_rng(seed).standard_normal((CLASSES, params["dim"]))
        rng = np.random.default_rng([seed, 1 if split == "train" else 2])
        rows = params["samples"] if split == "train" else 200
        labels = rng.integers(0, CLASSES, rows)
        inputs = (centres[labels] + rng.standard_normal((rows, params["dim"]))).astype(np.float32)
        return Dataset(inputs, labels.astype(np.int64), CLASSES, None, None)


    @register.partition("mypart", needs_labels=True,
                        check=lambda p: None if isinstance(p["reverse"], bool) else
                        ("reverse", f"must be true or false, got {p['reverse']!r}"))
    def sorted_chunks(pool, labels, num_agents, seed, *, reverse: bool = False):
        """Sort by label and cut into near-equal contiguous pieces (agent 0: the smallest labels)."""
        order = np.sort(pool)
        order = order[np.argsort(labels[order], kind="stable")]
        return np.array_split(order[::-1] if reverse else order, num_agents)
''')

COMMON = ["-m", "mpisim.server_mode", "--run.plugins", "my_data.py", "--data.name", "mydata",
          "--data.partition", "mypart", "--data.params.samples", "400", "--model.name", "logreg",
          "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "6", "--run.eval_every", "3",
          "--run.progress", "false", "--run.save_model", "true"]


@pytest.fixture
def plugin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("outside")  # not under the repository
    (directory / "my_data.py").write_text(PLUGIN)
    return directory


def job(cwd, name, *extra):
    return run_mpi(3, [*COMMON, "--run.out_dir", str(cwd / "runs"), "--run.name", name, *extra],
                   timeout=180, cwd=cwd)


@pytest.mark.processes
def test_a_plugin_data_set_and_partition_run_with_their_parameters(plugin_dir):
    forward = job(plugin_dir, "forward", "--data.params.dim", "5")
    assert forward.returncode == 0, forward.stderr[-3000:]
    backward = job(plugin_dir, "backward", "--data.params.dim", "5", "--data.partition_params.reverse", "true")
    assert backward.returncode == 0, backward.stderr[-3000:]

    summary = json.loads((plugin_dir / "runs" / "forward" / "summary.json").read_text())
    assert summary["d"] == 5 * 3 + 3  # logreg on the plugin's 5 features and 3 classes
    assert summary["test_samples"] == 200 and summary["plugins"][0]["file"] == str(plugin_dir / "my_data.py")
    saved = config.load_toml(plugin_dir / "runs" / "backward" / "config.toml")
    assert saved["data"]["partition"] == "mypart" and saved["data"]["partition_params"] == {"reverse": True}
    # The partition's parameter reached it: other shards for the agents, another model.
    one, two = (np.load(plugin_dir / "runs" / name / "model.npy") for name in ("forward", "backward"))
    assert one.shape == two.shape == (18,) and not np.array_equal(one, two)


@pytest.mark.processes
def test_a_plugin_partitions_check_stops_every_rank_naming_the_parameter(plugin_dir):
    refused = job(plugin_dir, "refused", "--data.partition_params.reverse", "3")

    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "config error: data.partition_params.reverse: must be true or false, got 3" in refused.stderr
    assert refused.stderr.count("config error") == 1 and "Traceback" not in refused.stderr
    assert not (plugin_dir / "runs" / "refused").exists()


@pytest.fixture
def loaded(plugin_dir):
    """The plugin imported into this process; its entries removed afterwards."""
    yield plugins.load([str(plugin_dir / "my_data.py")])
    registry.datasets.remove("mydata")
    registry.partitions.remove("mypart")


def test_the_plugins_entries_carry_its_name_and_are_validated_like_the_built_ins(plugin_dir, loaded):
    origin = str(plugin_dir / "my_data.py")
    assert registry.datasets.entry("mydata").origin == registry.partitions.entry("mypart").origin == origin
    assert registry.datasets.entry("mydata").params == {"samples": 600, "dim": 8}
    assert registry.partitions.entry("mypart").params == {"reverse": False}

    def validate(*args):
        cfg, _ = config.parse_args(ServerModeConfig, ["--data.name", "mydata", "--model.name", "logreg",
                                                      "--agents.n", "4", *args], prog="t", description="t")
        return config.validate_problem(cfg, num_shards=4)

    assert validate("--data.partition", "mypart") == 600
    with pytest.raises(ConfigError, match="data.params.samples: must be >= 10, got 5"):
        validate("--data.params.samples", "5")
    with pytest.raises(ConfigError, match=r"data.partition_params.skew: partition 'mypart' has no parameter "
                                          r"'skew'; accepted: reverse=False"):
        validate("--data.partition", "mypart", "--data.partition_params.skew", "1")
    with pytest.raises(ConfigError, match="model.name: least_squares is a regression model but mydata is a "
                                          "classification data set"):
        validate("--model.name", "least_squares")


def test_a_plugin_data_set_named_as_a_built_in_is_refused_naming_both(tmp_path):
    path = tmp_path / "clash.py"
    path.write_text("from mpisim import register\n\n"
                    "@register.dataset('mnist-small', kind='classification')\n"
                    "def mine(root, split, params, seed):\n    raise RuntimeError('never loaded')\n")

    with pytest.raises(plugins.PluginError) as info:
        plugins.load([str(path)])

    assert str(info.value) == (f"{path}: dataset 'mnist-small' is registered twice: by mpisim and by {path}; "
                               f"choose another name")
    assert registry.datasets.entry("mnist-small").origin == "mpisim"
