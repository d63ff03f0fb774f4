"""Every rule on a server of S ranks, one full run of the server mode each, in one MPI job.

    mpiexec -n <S + 3> python tests/sharded_runs.py OUT_DIR S

Run by tests/protocols/test_sharded_server.py with S = 1, 2 and 3; each setting is a
call of the server mode's entry point (``python -m mpisim.server_mode``)
with ``--server.ranks S`` and writes OUT_DIR/<setting>/model.npy.
"""

from __future__ import annotations

import sys

from mpisim.protocols import driver
from mpisim.protocols.server import ServerMode

AGENTS = ["--agents.n", "7", "--agents.per_rank", "3"]  # 3 agent ranks, hosting 3, 3 and 1 agents
REGRESSION = ["--data.name", "synthetic_regression", "--data.params.samples", "700", "--data.params.dim", "40",
              "--data.params.test_samples", "50", "--model.name", "least_squares", "--data.batch_size", "8",
              "--optim.lr", "0.05"]
OMNISCIENT = ["--byzantine.fault", "alie", "--byzantine.count", "1", "--aggregator.f", "1"]

# setting -> (arguments, whether the model is the same bit for bit at every S)
SETTINGS: dict[str, tuple[list[str], bool]] = {
    **{rule: (["--aggregator.name", rule], True) for rule in ("mean", "cwtm", "median", "meamed")},
    "trimmed_mean": (["--aggregator.name", "trimmed_mean", "--aggregator.params.beta", "0.3"], True),
    **{rule: (["--aggregator.name", rule], False)
       for rule in ("cge", "krum", "multikrum", "bulyan", "geomed", "mom", "norm_threshold")},
    "cc": (["--aggregator.name", "cc", "--aggregator.params.tau", "0.5", "--aggregator.params.iters", "2"], False),
    "nnm_cwtm": (["--aggregator.name", "cwtm", "--aggregator.pre", "nnm"], False),
    "bucketing_median": (["--aggregator.name", "median", "--aggregator.pre", "bucketing"], True),
    "averaging_projected": (["--aggregator.name", "cwtm", "--aggregator.averaging", "0.5",
                             "--optim.project_radius", "0.3"], False),
}
LENET = ["--data.name", "mnist-small", "--model.name", "lenet", "--data.batch_size", "4", "--optim.lr", "0.05",
         "--aggregator.name", "cwtm", "--byzantine.fault", "label_flip", "--byzantine.count", "1"]


def argv(name: str, out_dir: str, servers: int) -> list[str]:
    common = ["--run.progress", "false", "--run.rounds", "4", "--run.eval_every", "2", "--run.save_model",
              "true", "--run.seed", "5", "--run.out_dir", out_dir, "--run.name", name,
              "--server.ranks", str(servers), *AGENTS]
    if name == "lenet_cwtm":
        return [*common, *LENET]
    return [*common, *REGRESSION, *OMNISCIENT, *SETTINGS[name][0]]


def main(out_dir: str, servers: int) -> None:
    entry = driver.entry_point(ServerMode)
    for name in [*SETTINGS, "lenet_cwtm"]:
        entry(argv(name, out_dir, servers))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
