"""Configuration: TOML and command-line overrides, and validation before any work."""

import pytest

from mpisim import config
from mpisim.config import ConfigError
from mpisim.protocols import decentralized_config, server_config
from mpisim.protocols.server_config import ServerModeConfig


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
    server_config.validate_server_mode(parse([]), world_size=11)


def test_a_sharded_server_takes_its_ranks_before_the_agents():
    server_config.validate_server_mode(parse(["--server.ranks", "3"]), world_size=13)


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
    (["--byzantine.count", "10"], 11, "byzantine.count", "at least one of the 10 agents is honest"),
    (["--byzantine.ids", "1,2"], 11, "byzantine.ids", "byzantine.count is 1"),
    (["--byzantine.ids", "12"], 11, "byzantine.ids", "[0, 9]"),
    (["--data.name", "mnist", "--data.root", "/nonexistent/dir"], 11, "data.root", "does not exist"),
    (["--data.name", "mnist"], 11, "data.root", "set data.root"),
    (["--data.batch_size", "-1"], 11, "data.batch_size", ">= 0"),
    (["--run.rounds", "0"], 11, "run.rounds", ">= 1"),
    (["--run.round_timeout", "-1"], 11, "run.round_timeout", ">= 0"),
    (["--run.round_timeout", "nan"], 11, "run.round_timeout", ">= 0"),
    (["--aggregator.averaging", "1.0"], 11, "aggregator.averaging", "[0, 1)"),
    (["--data.name", "synthetic_regression", "--model.name", "least_squares", "--byzantine.fault",
      "random_labels"], 11, "byzantine.fault", "regression"),
    # [compression] (LeNet: d = 431,080)
    (["--compression.codec", "zip"], 11, "compression.codec", "unknown codec"),
    (["--compression.codec", "topk", "--compression.params.k", "431081"], 11, "compression.params.k", "431080"),
    (["--compression.codec", "qsgd", "--compression.params.s", "0"], 11, "compression.params.s", "s"),
    (["--compression.codec", "qsgd", "--compression.params.levels", "2"], 11, "compression.params.levels",
     "levels"),
    (["--compression.side_norm", "3", "--aggregator.name", "norm_threshold"], 11, "compression.side_norm",
     "1 or 2"),
    (["--compression.side_norm", "2"], 11, "compression.side_norm", "only aggregator norm_threshold"),
    (["--compression.side_norm", "1", "--aggregator.name", "norm_threshold", "--aggregator.pre", "nnm"], 11,
     "compression.side_norm", "mix the rows"),
    (["--compression.codec", "sign", "--aggregator.name", "norm_threshold"], 11, "compression.codec",
     "carries no norm"),
    (["--compression.error_feedback", "true", "--aggregator.name", "majority_vote"], 11,
     "compression.error_feedback", "choose one"),
    (["--compression.codec", "sign", "--compression.faulty_norm", "0"], 11, "compression.faulty_norm",
     "no norm field"),
    (["--compression.codec", "qsgd", "--compression.faulty_norm", "-1"], 11, "compression.faulty_norm", ">= 0"),
    # [server]: the sharded server
    (["--server.ranks", "0"], 11, "server.ranks", ">= 1"),
    (["--server.threads", "0"], 11, "server.threads", ">= 1"),
    (["--server.ranks", "3"], 11, "agents.per_rank", "need 13 MPI ranks (3 server + 10 agent ranks)"),
    (["--server.ranks", "2", "--compression.codec", "sign", "--aggregator.name", "majority_vote"], 12,
     "server.ranks", "cannot be cut"),
    (["--server.ranks", "2", "--aggregator.name", "majority_vote"], 12, "server.ranks", "packed vote"),
    (["--server.ranks", "9", "--data.name", "synthetic_regression", "--data.params.dim", "7", "--model.name",
      "least_squares", "--byzantine.fault", "gaussian"], 19, "server.ranks", "d = 7"),
])
def test_validation_names_field_and_constraint(argv, world, field, words):
    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(parse(argv), world_size=world)
    assert info.value.field == field
    assert words in str(info.value)


# ---------------------------------------------------------------- defects found by a demanding user


def test_a_step_parameter_is_reached_with_dots_at_any_depth():
    cfg = parse(["--aggregator.name", "cwtm", "--aggregator.pre", "bucketing",
                 "--aggregator.pre_params.bucketing.s", "3"])

    assert dict(cfg.aggregator.pre_params) == {"bucketing": {"s": 3}}
    server_config.validate_server_mode(cfg, world_size=11)


def test_a_step_parameter_that_is_not_a_table_is_a_config_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[aggregator]\nname = "cwtm"\npre = ["bucketing"]\npre_params = {bucketing = 3}\n')

    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(parse(["--config", str(path)]), world_size=11)
    assert info.value.field == "aggregator.pre_params.bucketing" and "expected a table" in str(info.value)


def test_an_unknown_step_parameter_names_it():
    cfg = parse(["--aggregator.name", "cwtm", "--aggregator.pre", "bucketing",
                 "--aggregator.pre_params.bucketing.size", "3"])

    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(cfg, world_size=11)
    assert info.value.field == "aggregator.pre_params.bucketing.size"


@pytest.mark.parametrize("make_out_dir, words", [
    (lambda tmp: tmp / "a-file", "is not a directory"),
    (lambda tmp: tmp / "a-file" / "below", "lies under"),
    (lambda tmp: "/dev/null", "is not a directory"),
])
def test_an_out_dir_that_cannot_be_a_directory_is_refused(tmp_path, make_out_dir, words):
    (tmp_path / "a-file").write_text("x")

    with pytest.raises(ConfigError) as info:
        config.validate_run(config.RunConfig(out_dir=str(make_out_dir(tmp_path))))
    assert info.value.field == "run.out_dir" and words in str(info.value)


@pytest.mark.parametrize("name", ["a/b", "../escaped", "/abs/name", "..", ".", " padded", "x\0y"])
def test_a_run_name_must_be_one_directory_name(tmp_path, name):
    with pytest.raises(ConfigError) as info:
        config.validate_run(config.RunConfig(out_dir=str(tmp_path), name=name))
    assert info.value.field == "run.name"


def test_a_run_name_in_use_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()

    with pytest.raises(ConfigError, match="already exists") as info:
        config.validate_run(config.RunConfig(out_dir=str(tmp_path), name="taken"))
    assert info.value.field == "run.name"


def test_config_that_is_a_directory_or_not_utf8_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory") as info:
        parse(["--config", str(tmp_path)])
    assert info.value.field == "--config"
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        parse(["--config", str(latin)])
    assert info.value.field == "--config"


def test_test_size_beyond_the_test_set_is_refused_like_train_size():
    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(parse(["--data.test_size", "2001"]), world_size=11)
    assert info.value.field == "data.test_size" and "has 2000 samples" in str(info.value)


def test_print_config_needs_no_job_size():
    server_config.validate_server_mode(parse([]), world_size=None)


def test_a_moved_field_says_where_it_went():
    with pytest.raises(ConfigError) as info:
        config.parse_args(decentralized_config.DecentralizedConfig, ["--local.lam", "2"], prog="t", description="t")
    assert info.value.field == "local.lam" and "--optim.lr" in str(info.value)


def test_decentralized_help_names_the_models_file():
    assert "models.npy" in config._help_text(decentralized_config.DecentralizedConfig)


def test_a_model_must_learn_what_the_data_set_holds():
    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(parse(["--model.name", "least_squares"]), world_size=11)
    assert info.value.field == "model.name" and "regression" in str(info.value)


def test_a_partition_leaving_an_agent_short_of_a_batch_names_the_agent():
    # label_shards of 6,000 samples over 100 agents: 200 shards of 30, 60 samples an agent.
    cfg = parse(["--agents.n", "100", "--aggregator.name", "mean", "--data.partition", "label_shards",
                 "--data.batch_size", "61"])

    with pytest.raises(ConfigError) as info:
        server_config.validate_server_mode(cfg, world_size=101)
    assert info.value.field == "data.partition" and "agent" in str(info.value)


def test_an_impossible_bulyan_b_is_caught_at_config_time_with_bulyans_bound():
    # BRIDGE-B needs 4b + 2 = 22 neighbours at b = 5: impossible with 20 nodes, although 2b < n - 1.
    cfg, _ = config.parse_args(decentralized_config.DecentralizedConfig, ["--screening.name", "bridge_b",
                                                            "--screening.b", "5"], prog="t", description="t")

    with pytest.raises(ConfigError) as info:
        decentralized_config.validate_decentralized(cfg, world_size=20)
    assert info.value.field == "screening.b" and "4b + 2" in str(info.value) and "22" in str(info.value)


def test_graph_redraw_is_bounded():
    cfg, _ = config.parse_args(decentralized_config.DecentralizedConfig, ["--graph.redraw", "1000000"], prog="t",
                               description="t")

    with pytest.raises(ConfigError) as info:
        decentralized_config.validate_decentralized(cfg, world_size=20)
    assert info.value.field == "graph.redraw"


def test_an_older_run_directorys_moved_partition_fields_are_read_where_they_went(tmp_path):
    from mpisim.protocols.server import ServerMode

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    old = "[data]\npartition = \"dirichlet\"\nalpha = 0.2\nshards_per_agent = 2\n"
    (run_dir / "config.toml").write_text(old)
    cfg, _ = config.parse_args(ServerMode.config_class, ["--config", str(run_dir / "config.toml")],
                               prog="t", description="")
    assert dict(cfg.data.partition_params) == {"alpha": 0.2}
    (tmp_path / "mine.toml").write_text(old)  # a user's own file is told where the field went
    with pytest.raises(config.ConfigError, match="data.alpha: no longer a field.*partition_params.alpha"):
        config.parse_args(ServerMode.config_class, ["--config", str(tmp_path / "mine.toml")], prog="t",
                          description="")
