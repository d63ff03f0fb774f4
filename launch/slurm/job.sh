# Shared by the batch scripts of launch/slurm/ (sourced, not run): the
# environment, the launcher of the ranks, the run's name, and the supervision
# of the run (SLURM's warning signal, requeue on "checkpointed, please resume").
#
# The batch scripts set MPISIM_ROOT (the project) before sourcing this file:
# sbatch runs a copy of the script from its spool directory, so the script
# cannot find the project from its own path.
#
# Settings (environment; the batch scripts show the usual ones):
#   MPISIM_LAUNCH=srun|mpiexec|auto  how the ranks start: srun (the ranks are srun's tasks), mpiexec
#                               (MPICH's hydra, which starts one proxy a node with srun); auto
#                               (default): srun, except for the MPICH wheel on more than one node
#                               (see mpisim_launcher)
#   MPISIM_SRUN_MPI=pmi2        srun's --mpi: pmi2 for the MPICH wheel, pmix for a cluster MPI built for it
#   MPISIM_MPIEXEC="..."        the whole launcher command, before "-n K" (overrides the two above)
#   MPISIM_OUT_DIR=results      where run directories go (relative to the project)

# The exit status of a run that saved a checkpoint and stopped (EX_TEMPFAIL):
# the job requeues itself, and the next attempt resumes the run directory.
MPISIM_EXIT_CHECKPOINTED=75

mpisim_die() { echo "mpisim: $*" >&2; exit 1; }

# MPICH (the wheel) names a shared-memory segment of each MPI world after a
# hash (FNV-1a) of its PMI key-value space, which under srun is JOBID.STEPID,
# and opens it if it exists. A requeued job keeps its id and numbers its steps
# from 0 again, so its steps get the names of the earlier attempt's; a step
# that was killed (preempted, requeued by an operator) leaves its segment in
# /dev/shm, and the step of the same name on this node then hangs in MPI_Init
# (seen with MPICH 5.0.2). Those segments are this job's own and dead: remove them.
mpisim_clean_stale_shm() {
    [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -n "${SLURM_JOB_ID:-}" ] || return 0
    local step name hash i c
    for step in $(seq 0 31); do
        name="$SLURM_JOB_ID.$step"
        hash=2166136261
        for ((i = 0; i < ${#name}; i++)); do
            printf -v c '%d' "'${name:i:1}"
            hash=$(( ((hash ^ c) * 16777619) & 0xffffffff ))
        done
        printf -v hash '%x' "$hash"
        rm -f /dev/shm/mpich_shm_"$hash"_* /dev/shm/mpich_vci_"$hash"_* 2>/dev/null
    done
    return 0
}

# Build or find the venv (launch/setup.sh holds a lock, so array tasks
# starting together do not build it twice), put it first on PATH, and work
# from the project directory.
mpisim_env() {
    [ -x "$MPISIM_ROOT/launch/setup.sh" ] \
        || mpisim_die "no mpisim project at MPISIM_ROOT=$MPISIM_ROOT: submit from the project's directory or set MPISIM_ROOT in the batch script"
    local venv
    venv="$("$MPISIM_ROOT/launch/setup.sh")" || mpisim_die "launch/setup.sh failed"
    export PATH="$venv/bin:$PATH"
    export PYTHONUNBUFFERED=1  # lines reach the log as they are printed
    cd "$MPISIM_ROOT" || mpisim_die "cannot enter $MPISIM_ROOT"
    mpisim_clean_stale_shm
}

# LAUNCHER: the command that starts ranks, without the count ("-n K" follows).
# Every line a rank prints is prefixed with its rank: srun --label ("3: ..."),
# hydra's -l ("[3] ..."), Open MPI's --tag-output ("[1,3]<stdout>: ...").
mpisim_launcher() {
    if [ -n "${MPISIM_MPIEXEC:-}" ]; then
        read -r -a LAUNCHER <<< "$MPISIM_MPIEXEC"
        return
    fi
    local launch="${MPISIM_LAUNCH:-auto}"
    if [ "$launch" = auto ]; then
        # The MPICH wheel (5.0.2) under srun --mpi=pmi2 across nodes failed in MPI_Init in 13 of
        # 22 jobs on the test cluster of hosts (Slurm 22.05: its PMI server rejected a segment of
        # the long address exchange, "value not properly terminated in client request", and the
        # other tasks then waited for ever); mpiexec in the allocation started 6 of 6.
        launch=srun
        if [ "${MPISIM_MPI:-wheel}" = wheel ] && [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
            launch=mpiexec
            echo "mpisim: $SLURM_JOB_NUM_NODES nodes with the MPICH wheel: starting the ranks with mpiexec, not srun --mpi=pmi2 (see launch/slurm/job.sh)" >&2
        fi
    fi
    case "$launch" in
        srun)
            # Not --kill-on-bad-exit: a run that checkpointed exits 75 on every
            # rank, and srun would kill the ranks still on their way out when the
            # first one exits; an uncaught error already aborts the whole job
            # (mpisim.mpi.abort_on_error).
            LAUNCHER=(srun --label --mpi="${MPISIM_SRUN_MPI:-pmi2}") ;;
        mpiexec)
            command -v mpiexec >/dev/null || mpisim_die "MPISIM_LAUNCH=mpiexec but there is no mpiexec on PATH"
            case "$(mpiexec --version 2>&1)" in
                *HYDRA*|*Intel*) LAUNCHER=(mpiexec -l) ;;
                *"Open MPI"*|*OpenRTE*|*PRRTE*) LAUNCHER=(mpiexec --tag-output) ;;
                *) LAUNCHER=(mpiexec) ;;
            esac ;;
        *) mpisim_die "MPISIM_LAUNCH must be srun, mpiexec or auto, not '$MPISIM_LAUNCH'" ;;
    esac
}

# RUN_ARGS: where the run goes. Its name is fixed by the job (slurm-JOBID, or
# slurm-ARRAYJOBID_TASK in an array) so that a requeued job finds its own run
# directory; when that directory exists (an earlier attempt of this job made
# it), the run is resumed from it. The entry point's options ($@) are scanned
# for --run.out_dir / --run.name, which win over the defaults, and for
# --run.resume, which leaves everything to the options.
mpisim_run_args() {
    local out_dir="${MPISIM_OUT_DIR:-results}" name
    RUN_ARGS=()
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
        name="slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
        name="slurm-${SLURM_JOB_ID:?not inside a SLURM job}"
    fi
    while [ $# -gt 0 ]; do
        case "$1" in
            --run.out_dir) out_dir="${2:-}"; shift ;;
            --run.out_dir=*) out_dir="${1#*=}" ;;
            --run.name) name="${2:-}"; shift ;;
            --run.name=*) name="${1#*=}" ;;
            --run.resume|--run.resume=*) return 0 ;;
        esac
        shift
    done
    if [ -d "$out_dir/$name" ]; then
        echo "mpisim: $out_dir/$name exists (attempt $((${SLURM_RESTART_COUNT:-0} + 1)) of this job): resuming it" >&2
        RUN_ARGS=(--run.out_dir "$out_dir" --run.resume "$out_dir/$name")
    else
        RUN_ARGS=(--run.out_dir "$out_dir" --run.name "$name")
    fi
}

# mpisim_supervise self|children COMMAND...: run COMMAND and return its exit
# status, forwarding SLURM's warning signal (#SBATCH --signal=B:USR1@120
# sends SIGUSR1 to this shell only) to the launcher of the ranks: to COMMAND
# itself when it is the launcher (srun and mpiexec pass SIGUSR1 on to every
# rank), or to COMMAND's children when COMMAND is a sweep script whose
# cell job is the launcher. When COMMAND exits with 75 (checkpointed and
# stopped), the job requeues itself and the next attempt resumes.
mpisim_supervise() {
    local target="$1" status=0
    shift
    "$@" &
    MPISIM_CHILD=$!
    MPISIM_TARGET="$target"
    trap mpisim_forward_warning USR1
    while :; do
        status=0
        wait "$MPISIM_CHILD" || status=$?
        # wait returns early (status > 128) when the trap ran: wait again
        # until the command itself is gone.
        kill -0 "$MPISIM_CHILD" 2>/dev/null || break
    done
    trap - USR1
    if [ "$status" = "$MPISIM_EXIT_CHECKPOINTED" ]; then
        mpisim_requeue
    fi
    return "$status"
}

mpisim_forward_warning() {
    echo "mpisim: SLURM's warning signal (USR1): asking the run to checkpoint and stop" >&2
    if [ "$MPISIM_TARGET" = children ]; then
        pkill -USR1 -P "$MPISIM_CHILD" || true
    else
        kill -USR1 "$MPISIM_CHILD" 2>/dev/null || true
    fi
}

mpisim_requeue() {
    echo "mpisim: the run checkpointed and stopped (exit $MPISIM_EXIT_CHECKPOINTED): requeueing job $SLURM_JOB_ID to resume it" >&2
    # Let the run's job step finish first: srun can exit while its step is
    # still being torn down, and a new attempt that starts at once (it may:
    # after a requeue, SLURM holds the job ~2 min, but an operator can lift
    # that) would meet a step of the same id whose end pulls the rug from
    # under its own (seen here: srun's PMI-2 lost its step daemon at MPI_Finalize).
    local _
    for _ in $(seq 1 30); do
        squeue -h -s -j "$SLURM_JOB_ID" -o %i 2>/dev/null | grep -qv -e '\.batch$' -e '\.extern$' || break
        sleep 1
    done
    if scontrol requeue "$SLURM_JOB_ID"; then
        # SLURM ends this attempt now; the job waits in the queue for the next.
        sleep 60
        exit 0
    fi
    echo "mpisim: scontrol requeue failed: resubmit with --run.resume RUN_DIR (the run's last message names it)" >&2
}
