"""SLURM: the batch scripts of launch/slurm/ on a real one-node cluster, and what they rely on.

Pure tier: the world-size check of mpisim.mpi.comm on the environments srun
and mpiexec give their processes (as measured under SLURM 22.05); a sweep's
--list-cells / --cell K / --merge with a fake job runner; the scripts parse.

SLURM tier: launch/slurm/test_cluster.sh starts a real cluster (slurmctld,
slurmd, munge; installed with apt-get when missing and root) once per session
in a directory and on ports of its own, and stops it at the end; the tests
skip, saying why, only where it cannot be had. Every job is tiny (3 ranks,
least squares on 300 samples) and runs alone, under a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mpisim.mpi import comm

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "launch" / "slurm"
BENCHMARKS = ROOT / "benchmarks"
MNIST = ROOT.parent / "shared" / "data" / "mnist"

TINY = ["--data.name", "synthetic_regression", "--data.params.samples", "300", "--data.params.dim", "20",
        "--model.name", "least_squares", "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "3"]


# ---------------------------------------------------------------- the world-size check (pure)

# What srun gives each task of `srun -n 3 --mpi=pmi2` in a 3-task allocation.
SRUN_TASK = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_PROCID": "2",
             "SLURM_NTASKS": "3", "SLURM_STEP_NUM_TASKS": "3", "PMI_SIZE": "3", "PMI_RANK": "2"}
# What a rank of `mpiexec -n 3` (MPICH's hydra) inside a 3-task allocation has: its proxy is
# step 1 of the job with one task, and the launcher's own PMI_SIZE.
HYDRA_RANK = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
              "SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "3", "PMI_RANK": "1", "MPI_LOCALNRANKS": "3"}
# The batch script itself (and anything started from it by hand): no step variables.
BATCH_SHELL = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_NPROCS": "3"}


@pytest.mark.parametrize("size, environ", [
    (3, SRUN_TASK),
    (3, HYDRA_RANK),
    (1, {**HYDRA_RANK, "PMI_SIZE": "1", "MPI_LOCALNRANKS": "1"}),  # mpiexec -n 1
    (1, BATCH_SHELL),  # python -m ... run by hand in the batch script: the config check speaks
    (1, {}),  # not under SLURM at all
    (4, {"SLURM_STEP_ID": "1", "SLURM_STEP_NUM_TASKS": "1", "OMPI_COMM_WORLD_SIZE": "4"}),  # Open MPI mpirun
], ids=["srun pmi2", "mpiexec in an allocation", "mpiexec -n 1", "batch shell", "no slurm", "open mpi mpirun"])
def test_a_world_that_matches_its_launcher_passes(size, environ):
    assert comm.srun_world_error(size, environ) is None


@pytest.mark.parametrize("environ", [
    {k: v for k, v in SRUN_TASK.items() if not k.startswith("PMI")},  # srun --mpi=none
    SRUN_TASK,  # srun --mpi=pmi2 for an MPI that does not speak PMI-2
], ids=["no pmi", "pmi the MPI ignores"])
def test_srun_tasks_that_are_singletons_are_stopped_with_both_numbers_and_the_fix(environ):
    error = comm.srun_world_error(1, environ)

    assert error is not None
    assert "srun task 2 of 3" in error and "world has 1 rank:" in error
    assert "srun --mpi=pmi2" in error and "--mpi=pmix" in error and "mpiexec -n 3" in error


def test_world_exits_with_the_message_in_a_singleton_that_srun_started(tmp_path):
    code = "from mpisim.mpi import comm; print('world of', comm.world().Get_size())"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "MPISIM_WORLD"))}
    fake = {**base, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "11", "SLURM_PROCID": "0"}

    stopped = subprocess.run([sys.executable, "-c", code], env=fake, capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    other = subprocess.run([sys.executable, "-c", code], env={**fake, "SLURM_PROCID": "5"},
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    unchecked = subprocess.run([sys.executable, "-c", code], env={**fake, "MPISIM_WORLD_CHECK": "0"},
                               capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert stopped.returncode == 1 and "srun task 0 of 11" in stopped.stderr and "Fix:" in stopped.stderr
    assert other.returncode == 1 and "srun task 5 of 11" in other.stderr and "Fix:" not in other.stderr
    assert unchecked.returncode == 0 and "world of 1" in unchecked.stdout


# ---------------------------------------------------------------- --list-cells, --cell K, --merge (pure)


@pytest.fixture
def common(monkeypatch, tmp_path):
    """benchmarks/common.py with results in tmp_path, no machine probe, and a fake job runner.

    The fake job "runs" a cell by writing its run directory; its result is the
    cell's ``--value``. ``jobs`` records the calls; ``exit_codes`` (a list)
    makes the next calls fail with those codes.
    """
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common as module

    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "machine", lambda: {"cpu": "test"})
    monkeypatch.setattr(module, "check_jobs", lambda cells, *, nprocs, module: None)
    jobs, exit_codes = [], []

    def run_job(nprocs, args, *, out_dir, name, module="mpisim.server_mode", resume=False, stream=False,
                timeout=None):
        run_dir = Path(out_dir) / name
        jobs.append({"args": args, "run_dir": run_dir, "resume": resume, "module": module, "nprocs": nprocs})
        if resume:
            assert (run_dir / "checkpoint").exists()
        else:
            run_dir.mkdir(parents=True)
        if exit_codes:
            (run_dir / "checkpoint").write_text("")
            code = exit_codes.pop(0)
            raise module_ref.JobFailed(f"job failed ({code})", code)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 0}) + "\n")
        return {"run_dir": str(run_dir), "final": {"test_accuracy": float(args[args.index("--value") + 1])}}

    module_ref = module
    monkeypatch.setattr(module, "run_job", run_job)
    module.jobs, module.exit_codes = jobs, exit_codes
    return module


CELLS = {"a|x": ["--value", "0.1"], "a|y": ["--value", "0.2"], "b|x": ["--value", "0.3"]}


def keep(summary, records):
    return {"final_test_accuracy": summary["final"]["test_accuracy"]}


def grid(common, *, cell=None, merge=False, list_cells=False, settings=None, **kwargs):
    return common.run_grid("sweep.json", CELLS, nprocs=3, settings=settings or {"rounds": 5}, keep=keep,
                           cluster=SimpleNamespace(cell=cell, merge=merge, list_cells=list_cells), **kwargs)


def test_list_cells_prints_the_count_the_ranks_and_the_keys_in_order(common, capsys):
    with pytest.raises(SystemExit) as stop:
        grid(common, list_cells=True)

    out = capsys.readouterr().out.splitlines()
    assert stop.value.code == 0
    assert out[0].startswith("3 cells, 3 ranks each")
    assert [line.split(None, 1) for line in out[1:4]] == [["0", "a|x"], ["1", "a|y"], ["2", "b|x"]]
    assert "--array=0-2" in out[4]
    assert common.jobs == []


def test_a_cell_runs_alone_into_its_own_file_and_leaves_the_result_file_alone(common):
    with pytest.raises(SystemExit) as stop:
        grid(common, cell=1)

    assert stop.value.code == 0
    assert [job["args"] for job in common.jobs] == [CELLS["a|y"]]
    record = json.loads((common.RESULTS / "sweep.json.cells" / "1.json").read_text())
    assert record["index"] == 1 and record["key"] == "a|y" and record["settings"] == {"rounds": 5}
    assert record["args"] == CELLS["a|y"] and record["module"] == "mpisim.server_mode"
    assert record["result"]["final_test_accuracy"] == 0.2
    assert not (common.RESULTS / "sweep.json").exists()
    assert not common.jobs[0]["run_dir"].exists()  # its run directory is removed once the file holds the result


def test_a_cell_already_done_is_not_run_again_unless_fresh(common):
    for _ in range(2):
        with pytest.raises(SystemExit):
            grid(common, cell=0)
    with pytest.raises(SystemExit):
        grid(common, cell=0, fresh=True)

    assert len(common.jobs) == 2


def test_a_cell_number_outside_the_grid_is_refused(common):
    with pytest.raises(SystemExit, match="--cell 3: this sweep has 3 cells, numbered 0 to 2"):
        grid(common, cell=3)


def test_merge_gathers_the_cells_keeps_what_was_there_and_lists_what_is_missing(common, capsys):
    common.RESULTS.mkdir()
    older = {"old|cell": {"settings": {"rounds": 1}, "final_test_accuracy": 0.9}}
    (common.RESULTS / "sweep.json").write_text(json.dumps({"cells": older}))
    for index in (0, 2):
        with pytest.raises(SystemExit):
            grid(common, cell=index)
    capsys.readouterr()

    results = grid(common, merge=True)

    out = capsys.readouterr().out
    assert {key: r["final_test_accuracy"] for key, r in results.items()} == {"old|cell": 0.9, "a|x": 0.1,
                                                                             "b|x": 0.3}
    saved = json.loads((common.RESULTS / "sweep.json").read_text())["cells"]
    assert set(saved) == {"old|cell", "a|x", "b|x"}
    assert "1 of 3 cells have no result yet" in out and re.search(r"^\s+1\s+a\|y$", out, re.M)
    assert "--array=1" in out
    assert len(common.jobs) == 2  # merging runs nothing


def test_merge_ignores_cell_files_made_with_other_settings(common, capsys):
    with pytest.raises(SystemExit):
        grid(common, cell=0, settings={"rounds": 50})
    capsys.readouterr()

    results = grid(common, merge=True)

    out = capsys.readouterr().out
    assert results == {}
    assert "1 other files ignored" in out and "3 of 3 cells have no result yet" in out


def test_a_checkpointed_cell_exits_75_and_its_next_attempt_resumes_the_same_run(common):
    common.exit_codes.append(75)
    with pytest.raises(SystemExit) as stop:
        grid(common, cell=2)
    first = common.jobs[-1]["run_dir"]

    assert stop.value.code == 75
    assert (common.RESULTS / "sweep.json.cells" / "2.resume").read_text().strip() == str(first)
    assert not (common.RESULTS / "sweep.json.cells" / "2.json").exists()

    with pytest.raises(SystemExit) as stop:
        grid(common, cell=2)

    assert stop.value.code == 0
    assert common.jobs[-1]["resume"] and common.jobs[-1]["run_dir"] == first
    assert json.loads((common.RESULTS / "sweep.json.cells" / "2.json").read_text())["key"] == "b|x"
    assert not (common.RESULTS / "sweep.json.cells" / "2.resume").exists()


def test_a_cell_that_fails_otherwise_raises_and_writes_nothing(common):
    common.exit_codes.append(1)
    with pytest.raises(common.JobFailed):
        grid(common, cell=0)

    assert not (common.RESULTS / "sweep.json.cells" / "0.json").exists()
    assert common.jobs[-1]["run_dir"].exists()  # kept for a look


def test_each_cell_runs_its_own_module(common):
    modules = {"b|x": "mpisim.one_round"}
    for index in range(3):
        with pytest.raises(SystemExit):
            grid(common, cell=index, modules=modules)

    assert [job["module"] for job in common.jobs] == ["mpisim.server_mode"] * 2 + ["mpisim.one_round"]


def test_add_cluster_options_passes_the_options_to_run_grid(common):
    parser = common.add_cluster_options(__import__("argparse").ArgumentParser())

    args = parser.parse_args(["--cell", "2"])

    assert args.cell == 2 and common.CLUSTER.cell == 2 and not common.CLUSTER.merge
    with pytest.raises(SystemExit):
        common.run_grid("sweep.json", CELLS, nprocs=3, settings={}, keep=keep)
    assert [job["args"] for job in common.jobs] == [CELLS["b|x"]]
    with pytest.raises(SystemExit):
        parser.parse_args(["--cell", "1", "--merge"])  # one of them at a time
    common.add_cluster_options(__import__("argparse").ArgumentParser()).parse_args([])
    assert common.CLUSTER == common.ClusterOptions()  # a new command line starts afresh


@pytest.mark.parametrize("command, count", [
    pytest.param(["attack_table.py"], 96, id="attack_table",
                 marks=pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST not found at {MNIST}")),
    pytest.param(["yin_rates.py", "--seeds", "1"], None, id="yin_rates"),
])
def test_the_sweep_scripts_list_their_cells(command, count):
    result = subprocess.run([sys.executable, str(BENCHMARKS / command[0]), *command[1:], "--list-cells"],
                            cwd=BENCHMARKS, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0].split()
    assert first[1:4] == ["cells,", "3", "ranks"]
    if count is not None:
        assert int(first[0]) == count
    else:  # both modules' cells, numbered together
        assert "(mpisim.one_round)" in result.stdout and "(mpisim.server_mode)" in result.stdout


# ---------------------------------------------------------------- the scripts (pure)

SCRIPTS = sorted([*SLURM.glob("*.sbatch"), *SLURM.glob("*.sh")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", sorted(SLURM.glob("*.sbatch")), ids=lambda p: p.name)
def test_the_batch_scripts_ask_for_the_warning_signal_and_can_be_requeued(script):
    text = script.read_text()

    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --open-mode=append" in text  # a requeued attempt adds to the log
    assert "mpisim_supervise" in text and "EDIT" in text


def bash_job_sh(snippet: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run SNIPPET in bash after sourcing launch/slurm/job.sh, with ARGS as "$@"."""
    script = f'MPISIM_ROOT={ROOT}; source {SLURM / "job.sh"}; {snippet}'
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MPISIM_"))}
    return subprocess.run(["bash", "-c", script, "bash", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=30)


def test_the_run_is_named_after_the_job_and_resumed_when_its_directory_exists(tmp_path):
    show = 'mpisim_run_args "$@"; printf "%s\\n" "${RUN_ARGS[@]}"'
    fresh = bash_job_sh(show, {"SLURM_JOB_ID": "41", "MPISIM_OUT_DIR": str(tmp_path)})
    array = bash_job_sh(show, {"SLURM_JOB_ID": "45", "SLURM_ARRAY_JOB_ID": "44", "SLURM_ARRAY_TASK_ID": "3",
                               "MPISIM_OUT_DIR": str(tmp_path)})
    (tmp_path / "other" / "slurm-41").mkdir(parents=True)
    again = bash_job_sh(show, {"SLURM_JOB_ID": "41"}, "--agents.n", "4", f"--run.out_dir={tmp_path / 'other'}")

    assert fresh.stdout.split() == ["--run.out_dir", str(tmp_path), "--run.name", "slurm-41"]
    assert array.stdout.split() == ["--run.out_dir", str(tmp_path), "--run.name", "slurm-44_3"]
    assert again.stdout.split() == ["--run.out_dir", str(tmp_path / "other"), "--run.resume",
                                    str(tmp_path / "other" / "slurm-41")]
    assert "resuming it" in again.stderr
    assert bash_job_sh(show, {"SLURM_JOB_ID": "41"}, "--run.resume", "somewhere").stdout.split() == []


def fnv1a(text: str) -> str:
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return f"{value:x}"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_requeued_attempt_removes_the_mpich_segments_its_killed_steps_left():
    # MPICH names a world's segment mpich_shm_<FNV-1a of the PMI kvsname>_<node>; under
    # srun the kvsname is JOBID.STEPID (measured: job 1 step 0 -> eb421bf2).
    assert fnv1a("1.0") == "eb421bf2"
    job = "987654321"
    stale = [Path(f"/dev/shm/mpich_shm_{fnv1a(f'{job}.3')}_0"), Path(f"/dev/shm/mpich_vci_{fnv1a(f'{job}.0')}_0")]
    other = Path(f"/dev/shm/mpich_shm_{fnv1a('987654322.0')}_0")
    try:
        for path in (*stale, other):
            path.touch()
        first = bash_job_sh("mpisim_clean_stale_shm", {"SLURM_JOB_ID": job})
        assert first.returncode == 0 and all(p.exists() for p in stale)  # a first attempt leaves them
        again = bash_job_sh("mpisim_clean_stale_shm", {"SLURM_JOB_ID": job, "SLURM_RESTART_COUNT": "1"})
        assert again.returncode == 0 and not any(p.exists() for p in stale) and other.exists()
    finally:
        for path in (*stale, other):
            path.unlink(missing_ok=True)


def test_the_launcher_labels_every_line_with_the_rank():
    show = 'mpisim_launcher; echo "${LAUNCHER[*]}"'

    assert bash_job_sh(show, {}).stdout.strip() == "srun --label --mpi=pmi2"
    assert bash_job_sh(show, {"MPISIM_SRUN_MPI": "pmix"}).stdout.strip() == "srun --label --mpi=pmix"
    assert bash_job_sh(show, {"MPISIM_MPIEXEC": "mpirun -x"}).stdout.strip() == "mpirun -x"
    venv_path = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # MPICH's hydra (the wheel) or Open MPI's mpiexec (a cluster's, with MPISIM_MPI=system)
    assert bash_job_sh(show, {"MPISIM_LAUNCH": "mpiexec", **venv_path}).stdout.strip() in ("mpiexec -l",
                                                                                         "mpiexec --tag-output")


def test_auto_starts_the_mpich_wheel_with_mpiexec_on_more_than_one_node_and_srun_otherwise():
    show = 'mpisim_launcher; echo "${LAUNCHER[*]}"'
    venv_path = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    two_nodes = bash_job_sh(show, {"SLURM_JOB_NUM_NODES": "2", **venv_path})
    assert two_nodes.stdout.strip() == "mpiexec -l" and "2 nodes with the MPICH wheel" in two_nodes.stderr
    assert bash_job_sh(show, {"SLURM_JOB_NUM_NODES": "1"}).stdout.strip() == "srun --label --mpi=pmi2"
    assert bash_job_sh(show, {"SLURM_JOB_NUM_NODES": "2", "MPISIM_MPI": "system"}).stdout.strip() \
        == "srun --label --mpi=pmi2"
    assert bash_job_sh(show, {"SLURM_JOB_NUM_NODES": "2", "MPISIM_LAUNCH": "srun"}).stdout.strip() \
        == "srun --label --mpi=pmi2"


# ---------------------------------------------------------------- a real SLURM cluster


def free_port_pair() -> int:
    """A port P with P and P + 1 free on this machine (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 65000:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports")


def start_cluster(folder: Path, *nodes: str):
    """Start launch/slurm/test_cluster.sh start [NODES] in FOLDER/cluster, on free ports; the
    environment its clients need, or a skip saying why it cannot be had here."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "MPISIM_SLURM_DIR": str(folder / "cluster"), "MPISIM_SLURM_PORT": str(free_port_pair())}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))
           and k not in ("MPISIM_MPIEXEC", "MPISIM_LAUNCH", "MPISIM_SRUN_MPI", "MPISIM_OUT_DIR")}
    try:
        started = subprocess.run(["bash", str(SLURM / "test_cluster.sh"), "start", *nodes], env=env,
                                 capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        started = None
    if started is None or started.returncode == 3:
        # whatever did start (munged, slurmctld, hosts) goes again
        subprocess.run(["bash", str(SLURM / "test_cluster.sh"), "stop"], env=env, capture_output=True, timeout=120)
        reason = ("launch/slurm/test_cluster.sh start took more than 10 minutes" if started is None else
                  (started.stderr.strip().splitlines() or ["test_cluster.sh start exited with 3"])[-1])
        pytest.skip(f"no SLURM cluster on this machine: {reason}")
    assert started.returncode == 0, started.stderr[-3000:]
    env["SLURM_CONF"] = started.stdout.strip().split("=", 1)[1]
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}:/usr/sbin"
    env["MPISIM_ROOT"] = str(ROOT)
    return SimpleNamespace(env=env, dir=folder, jobs=[], logs=folder / "cluster" / "log")


def stop_cluster(cluster) -> None:
    if cluster.jobs:  # only the jobs these tests submitted
        subprocess.run(["scancel", *cluster.jobs], env=cluster.env, capture_output=True, timeout=60)
    subprocess.run(["bash", str(SLURM / "test_cluster.sh"), "stop"], env=cluster.env, capture_output=True,
                   timeout=120)
    # A killed step leaves MPICH's segment (named after JOBID.STEPID) in /dev/shm: remove
    # those of this cluster's jobs, whose ids start at its first_job_id.
    first = int((cluster.dir / "cluster" / "first_job_id").read_text())
    for job in range(first, first + 200):
        for step in range(4):
            for prefix in ("mpich_shm", "mpich_vci"):
                for path in Path("/dev/shm").glob(f"{prefix}_{fnv1a(f'{job}.{step}')}_*"):
                    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster of this session's own; yields the environment its clients need."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(scope="module")
def slurm_hosts(tmp_path_factory):
    """A SLURM cluster of two nodes, each a test host of launch/hosts.sh (its own network and
    hostname), started with the hosts and removed with them."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("a cluster of test hosts needs root, ip (iproute2), unshare and nsenter")
    if "mpisim-h" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        pytest.fail("test hosts from an earlier run are still up: launch/hosts.sh stop")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm-hosts"), "2")
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "mpisim-h" not in left and "mpisim test host" not in Path("/etc/hosts").read_text()


def sbatch(slurm, *args, env=None, timeout=180) -> tuple[subprocess.CompletedProcess, str]:
    """sbatch --parsable ARGS; returns the result and the job id."""
    try:
        result = subprocess.run(["sbatch", "--parsable", *args], env={**slurm.env, **(env or {})},
                                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"sbatch {' '.join(args)} took more than {timeout} s: {exc.stderr}")
    job = result.stdout.strip().split(";")[0]
    slurm.jobs.append(job)
    return result, job


def job_field(slurm, job: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=slurm.env, capture_output=True, text=True,
                         timeout=30).stdout
    found = re.search(rf"\b{field}=(\S*)", out)
    return found.group(1) if found else None


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def assert_labelled(log: str) -> None:
    """No carriage returns; every line a rank printed starts with its rank (srun --label)."""
    assert "\r" not in log
    rank_lines = [line for line in log.splitlines() if "[rank " in line or "mpisim server mode" in line]
    assert rank_lines and all(re.match(r"\d+: ", line) for line in rank_lines), rank_lines


@pytest.mark.timeout(240)
def test_one_run_completes_under_sbatch_with_its_ranks_from_the_allocation(slurm):
    # with a user's plugin, which the batch script carries to every rank like any other option
    out_dir, plugin = slurm.dir / "one", slurm.dir / "halving.py"
    plugin.write_text("from mpisim import register\n\n\n"
                      "@register.rule('halved_mean_t', coordinatewise=True)\n"
                      "def halved_mean(x, *, f):\n"
                      "    return 0.5 * x.mean(dim=0)\n")
    result, job = sbatch(slurm, "--wait", "--ntasks=3", f"--output={slurm.dir}/one-%j.out",
                         str(SLURM / "server_mode.sbatch"), *TINY, "--run.plugins", str(plugin),
                         "--aggregator.name", "halved_mean_t", env={"MPISIM_OUT_DIR": str(out_dir)})

    log = (slurm.dir / f"one-{job}.out").read_text()
    assert result.returncode == 0, log + result.stderr
    summary = json.loads((out_dir / f"slurm-{job}" / "summary.json").read_text())
    assert summary["world_size"] == 3 and summary["rounds"] == 3
    assert summary["aggregator"] == "halved_mean_t" and summary["plugins"][0]["file"] == str(plugin)
    assert "srun --label --mpi=pmi2 -n 3" in log
    assert_labelled(log)


@pytest.mark.timeout(240)
def test_a_sweep_runs_as_a_job_array_and_merges_into_a_table(slurm):
    results, logs = slurm.dir / "sweep-results", slurm.dir / "sweep-logs"
    logs.mkdir()
    env = {**slurm.env, "MPISIM_RESULTS": str(results), "MPISIM_SLURM_LOGS": str(logs), "MPISIM_SWEEP_WAIT": "1"}

    done = subprocess.run(["bash", str(SLURM / "submit_sweep.sh"), "launch/slurm/examples/tiny_sweep.py"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=220, stdin=subprocess.DEVNULL)
    slurm.jobs += re.findall(r"job array (\d+)", done.stdout)

    text = {p.name: p.read_text() for p in logs.iterdir()}
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{text}"
    cell_logs = sorted(name for name in text if name.startswith("slurm-mpisim-sweep-"))
    assert [name.rsplit("_", 1)[1] for name in cell_logs] == ["0.out", "1.out"]
    for name in cell_logs:
        assert_labelled(text[name])
    cells = sorted((results / "tiny_sweep.json.cells").glob("*.json"))
    assert [p.name for p in cells] == ["0.json", "1.json"]
    merged = json.loads((results / "tiny_sweep.json").read_text())
    assert set(merged["cells"]) == {"cge", "cwtm"}
    assert all(cell["world_size"] == 3 for cell in merged["cells"].values())
    assert "| cge |" in merged["table"] and "| cwtm |" in merged["table"] and " - |" not in merged["table"]
    merge_log = next(text[name] for name in text if name.startswith("slurm-mpisim-merge-"))
    assert "merge: all 2 cells have a result" in merge_log


@pytest.mark.timeout(240)
@pytest.mark.parametrize("block", [1, 2])  # two tasks of one cell, or one task running both in one job
def test_a_grid_file_sweep_runs_as_a_job_array_and_merges(slurm, block):
    out, logs = slurm.dir / f"grid-runs-{block}", slurm.dir / f"grid-logs-{block}"
    logs.mkdir()
    env = {**slurm.env, "MPISIM_SLURM_LOGS": str(logs), "MPISIM_SWEEP_WAIT": "1"}

    done = subprocess.run(["bash", str(SLURM / "submit_sweep.sh"), "-m", "mpisim.sweep",
                           "launch/slurm/examples/tiny_grid.toml", "--out-dir", str(out), "--block", str(block)],
                          env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=220, stdin=subprocess.DEVNULL)
    slurm.jobs += re.findall(r"job array (\d+)", done.stdout)

    text = {p.name: p.read_text() for p in logs.iterdir()}
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{text}"
    cell_logs = sorted(name for name in text if name.startswith("slurm-mpisim-sweep-"))
    assert [name.rsplit("_", 1)[1] for name in cell_logs] == (["0.out", "1.out"] if block == 1 else ["0.out"])
    for name in cell_logs:
        assert_labelled(text[name])
    merged = json.loads((out / "results.json").read_text())
    assert merged["done"] == 2 and merged["missing"] == []
    assert {r["values"]["aggregator.name"] for r in merged["results"].values()} == {"cge", "cwtm"}
    merge_log = next(text[name] for name in text if name.startswith("slurm-mpisim-merge-"))
    assert "2 of 2 cells done" in merge_log


@pytest.mark.timeout(240)
def test_a_job_with_a_bad_config_ends_failed_with_the_message_in_its_log(slurm):
    result, job = sbatch(slurm, "--wait", "--ntasks=3", f"--output={slurm.dir}/bad-%j.out",
                         str(SLURM / "server_mode.sbatch"), *TINY, "--aggregator.name", "nosuch",
                         env={"MPISIM_OUT_DIR": str(slurm.dir / "bad")})

    log = (slurm.dir / f"bad-{job}.out").read_text()
    assert result.returncode != 0
    assert job_field(slurm, job, "JobState") == "FAILED"
    assert re.search(r"^0: .*config error: aggregator.name: unknown rule 'nosuch'", log, re.M), log


@pytest.mark.timeout(240)
def test_srun_tasks_without_a_shared_pmi_stop_instead_of_running_alone(slurm):
    result, job = sbatch(slurm, "--wait", "--ntasks=3", f"--output={slurm.dir}/nopmi-%j.out",
                         str(SLURM / "server_mode.sbatch"), *TINY,
                         env={"MPISIM_OUT_DIR": str(slurm.dir / "nopmi"), "MPISIM_SRUN_MPI": "none"})

    log = (slurm.dir / f"nopmi-{job}.out").read_text()
    assert result.returncode != 0 and job_field(slurm, job, "JobState") == "FAILED"
    assert "0: mpisim: this process is srun task 0 of 3 (SLURM_STEP_NUM_TASKS=3) but its MPI world has 1 rank" in log
    assert "srun --mpi=pmi2" in log
    assert "mpisim server mode" not in log  # no task ran a job by itself
    assert not (slurm.dir / "nopmi").exists() or not any((slurm.dir / "nopmi").iterdir())


@pytest.mark.timeout(240)
def test_mpiexec_inside_an_allocation_of_another_size_is_not_refused(slurm):
    out_dir = slurm.dir / "mpiexec"
    command = " ".join([sys.executable, "-m", "mpisim.server_mode", *TINY, "--run.out_dir", str(out_dir),
                        "--run.name", "run"])
    result, job = sbatch(slurm, "--wait", "--ntasks=1", f"--output={slurm.dir}/mpiexec-%j.out",
                         f"--wrap=cd {ROOT} && mpiexec -n 3 {command}")

    log = (slurm.dir / f"mpiexec-{job}.out").read_text()
    assert result.returncode == 0, log
    assert json.loads((out_dir / "run" / "summary.json").read_text())["world_size"] == 3


@pytest.mark.timeout(300)
def test_warned_jobs_checkpoint_requeue_themselves_and_resume(slurm):
    """One run (the batch shell forwards the warning to srun) and one sweep cell (to the sweep
    script's launcher), at the same time: both stop with a checkpoint (exit 75), requeue, resume."""
    rounds = 2500
    out_dir, results = slurm.dir / "requeue", slurm.dir / "requeue-results"
    _, run = sbatch(slurm, "--ntasks=3", f"--output={slurm.dir}/requeue-%j.out", str(SLURM / "server_mode.sbatch"),
                    *TINY[:-1], str(rounds), "--run.eval_every", "500", env={"MPISIM_OUT_DIR": str(out_dir)})
    _, cell = sbatch(slurm, "--array=1", "--ntasks=3", f"--output={slurm.dir}/requeue-%A_%a.out",
                     str(SLURM / "sweep.sbatch"), "launch/slurm/examples/tiny_sweep.py", "--rounds", str(rounds),
                     env={"MPISIM_RESULTS": str(results)})
    logs = {run: slurm.dir / f"requeue-{run}.out", cell: slurm.dir / f"requeue-{cell}_1.out"}
    for job, log in logs.items():
        wait_for(lambda: log.exists() and re.search(rf"round \d+/{rounds}", log.read_text()), timeout=120,
                 what=f"the first progress line of job {job}")
        # What --signal=B:USR1@120 does 120 s before the time limit: SIGUSR1 to the batch shell only.
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm.env, check=True, timeout=30)
    for job in logs:
        wait_for(lambda: job_field(slurm, job, "JobState") == "PENDING" and job_field(slurm, job, "Restarts") == "1",
                 timeout=120, what=f"job {job} to be requeued")
    # SLURM holds a requeued job for about two minutes; lift that, a little after the requeue
    # (a start in the same second as the requeue meets the revoked credential of the first attempt).
    time.sleep(3)
    for job in logs:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm.env, check=True,
                       timeout=30)
    for job, log in logs.items():
        state = wait_for(lambda: (s := job_field(slurm, job, "JobState")) in ("COMPLETED", "FAILED", "CANCELLED")
                         and s, timeout=150, what=f"the resumed job {job} to end")
        assert state == "COMPLETED", log.read_text()
        assert "exit 75): requeueing job" in log.read_text()
        assert_labelled(log.read_text())

    text = logs[run].read_text()
    assert f"{out_dir}/slurm-{run} exists (attempt 2 of this job): resuming it" in text
    assert f"--run.resume {out_dir}/slurm-{run}" in text
    assert json.loads((out_dir / f"slurm-{run}" / "summary.json").read_text())["rounds"] == rounds
    text = logs[cell].read_text()
    assert "cell 1 (cwtm) checkpointed and stopped" in text and "cell 1 of 2: cwtm (resuming " in text
    record = json.loads((results / "tiny_sweep.json.cells" / "1.json").read_text())
    assert record["key"] == "cwtm" and record["settings"] == {"rounds": rounds}


@pytest.mark.timeout(400)
def test_a_job_on_two_nodes_gives_the_one_host_model(slurm_hosts, tmp_path):
    """The batch script on two nodes (hosts with their own network): auto starts the ranks with
    mpiexec, whose proxies srun starts, one a node; TCP between the nodes, the one-host model."""
    from conftest import run_mpi

    args = [*TINY, "--run.save_model", "true", "--aggregator.name", "cwtm", "--aggregator.f", "1",
            "--byzantine.count", "1", "--byzantine.fault", "alie"]
    one = run_mpi(3, ["-m", "mpisim.server_mode", *args, "--run.out_dir", str(tmp_path), "--run.name", "one"],
                  timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    result, job = sbatch(slurm_hosts, "--wait", "--nodes=2", "--ntasks=3", f"--output={tmp_path}/two-%j.out",
                         str(SLURM / "server_mode.sbatch"), *args, env={"MPISIM_OUT_DIR": str(tmp_path)},
                         timeout=180)
    log = (tmp_path / f"two-{job}.out").read_text()
    assert result.returncode == 0, log + result.stderr

    assert f"job {job} on mpisim-h[1-2]: mpiexec -l -n 3" in log
    summary = json.loads((tmp_path / f"slurm-{job}" / "summary.json").read_text())
    assert summary["hosts"] == 2 and summary["transport"] == "collectives"
    assert sorted(rank["host"] for rank in summary["ranks"]) == ["mpisim-h1", "mpisim-h1", "mpisim-h2"]
    assert (np.load(tmp_path / f"slurm-{job}" / "model.npy").tobytes()
            == np.load(tmp_path / "one" / "model.npy").tobytes())
