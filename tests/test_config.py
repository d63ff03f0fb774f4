"""Configuration: TOML and command-line overrides, and validation before any work."""

import pytest

from mpisim import config
from mpisim.config import ConfigError, ServerModeConfig


def parse(argv):
    cfg, _ = config.parse_args(ServerModeConfig, argv, prog="t", description="t")
    return cfg


def test_defaults_are_the_default_job():
    cfg = parse([])

    assert cfg.aggregator.name == "cge" and cfg.aggregator.f == 1
    assert cfg.agents.n == 10 and cfg.agents.per_rank == 1
    assert cfg.data.name == "mnist-small" and cfg.data.batch_size == 16
    assert cfg.optim.lr == 0.01


def test_toml_file_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[aggregator]\nname = "multikrum"\nf = 2\nparams = {m = 3}\n'
                    '[byzantine]\nids = [1, 4]\ncount = 2\n')

    cfg = parse(["--config", str(path), "--aggregator.f=3", "--aggregator.params.neighbours", "n-f-1",
                 "--optim.lr", "0.05", "--run.progress", "false", "--aggregator.pre", "nnm,bucketing"])

    assert cfg.aggregator.name == "multikrum" and cfg.aggregator.f == 3
    assert dict(cfg.aggregator.params) == {"m": 3, "neighbours": "n-f-1"}
    assert cfg.byzantine.ids == (1, 4) and cfg.optim.lr == 0.05 and cfg.run.progress is False
    assert cfg.aggregator.pre == ("nnm", "bucketing")


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = parse(["--aggregator.params.m", "2", "--byzantine.ids", "[3]", "--byzantine.fault", "random"])
    path = tmp_path / "saved.toml"
    path.write_text(config.dumps(cfg))

    again = parse(["--config", str(path)])

    assert again == cfg


@pytest.mark.parametrize("argv, field, words", [
    (["--aggregator.nme", "cge"], "aggregator.nme", "unknown field"),
    (["--agent.n", "3"], "agent", "unknown section"),
    (["--agents.n", "ten"], "agents.n", "cannot read"),
    (["--run.progress", "maybe"], "run.progress", "true or false"),
    (["--agents.n"], "agents.n", "missing value"),
    (["stray"], "stray", "--section.field"),
])
def test_bad_command_lines_name_the_field(argv, field, words):
    with pytest.raises(ConfigError) as info:
        parse(argv)
    assert info.value.field == field and words in str(info.value)


def test_toml_type_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match="optim.lr: expected a value of type float"):
        parse(["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse(["--config", str(tmp_path / "missing.toml")])


def test_valid_default_passes_on_eleven_ranks():
    config.validate_server_mode(parse([]), world_size=11)


@pytest.mark.parametrize("argv, world, field, words", [
    ([], 4, "agents.per_rank", "need 11 MPI ranks"),
    (["--agents.per_rank", "4"], 11, "agents.per_rank", "need 4 MPI ranks"),
    (["--optim.lr", "-0.1"], 11, "optim.lr", "positive"),
    (["--aggregator.name", "nosuch"], 11, "aggregator.name", "nosuch"),
    (["--aggregator.f", "5"], 11, "aggregator.f", "f=5"),
    (["--aggregator.name", "multikrum", "--aggregator.params.mm", "2"], 11, "aggregator.params.mm", "mm"),
    (["--aggregator.name", "multikrum", "--aggregator.params.m", "12"], 11, "aggregator.params", "m"),
    (["--aggregator.pre", "nnm,shuffle"], 11, "aggregator.pre", "shuffle"),
    (["--byzantine.fault", "nosuch"], 11, "byzantine.fault", "nosuch"),
    (["--byzantine.count", "10"], 11, "byzantine.count", "at least one agent is honest"),
    (["--byzantine.ids", "1,2"], 11, "byzantine.ids", "byzantine.count is 1"),
    (["--byzantine.ids", "12"], 11, "byzantine.ids", "[0, 9]"),
    (["--data.name", "mnist", "--data.root", "/nonexistent/dir"], 11, "data.root", "does not exist"),
    (["--data.name", "mnist"], 11, "data.root", "set data.root"),
    (["--data.batch_size", "0"], 11, "data.batch_size", ">= 1"),
    (["--run.rounds", "0"], 11, "run.rounds", ">= 1"),
    (["--aggregator.averaging", "1.0"], 11, "aggregator.averaging", "[0, 1)"),
])
def test_validation_names_field_and_constraint(argv, world, field, words):
    with pytest.raises(ConfigError) as info:
        config.validate_server_mode(parse(argv), world_size=world)
    assert info.value.field == field
    assert words in str(info.value)
