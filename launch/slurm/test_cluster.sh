#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying
# the batch scripts before taking them to a cluster. Not for production.
#
#   launch/slurm/test_cluster.sh start    # install if missing, configure, start; prints SLURM_CONF=...
#   launch/slurm/test_cluster.sh status   # exit 0 if the cluster answers and its node is up
#   launch/slurm/test_cluster.sh stop     # stop the daemons it started (the directory stays)
#
# Then: export SLURM_CONF=$MPISIM_SLURM_DIR/slurm.conf; sbatch ...; squeue; scontrol show job ID
#
#   MPISIM_SLURM_DIR=DIR   config, state, spool, logs and the munge socket (default /tmp/mpisim-slurm)
#   MPISIM_SLURM_CPUS=N    CPUs the node declares (default 8): more than the machine has on
#                          purpose, so that a 3-task job, or two of them, fit on a 2-core laptop
#   MPISIM_SLURM_PORT=P    slurmctld's port; slurmd takes P+1 (default 16817, away from a real
#                          SLURM's 6817)
#
# Debian's slurm-wlm and munge packages are installed with apt-get when missing
# (root only). The daemons run as root, each with its own pid file in DIR;
# munge runs privately on a socket in DIR, with its own key, so a system munge
# is neither needed nor touched. `start` is idempotent: daemons already running
# from DIR are kept. Exit status 3 means the cluster cannot be had on this
# machine (not root and not installed, no apt, a daemon would not start); the
# message says why, and the tests skip with it.
set -euo pipefail

dir="${MPISIM_SLURM_DIR:-/tmp/mpisim-slurm}"
cpus="${MPISIM_SLURM_CPUS:-8}"
port="${MPISIM_SLURM_PORT:-16817}"
node="mpisim-node"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
# Debian installs the daemons in /usr/sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

cannot() { echo "test_cluster: $*" >&2; exit 3; }

running() {  # running PIDFILE: the process in the pid file is alive
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    [ "$(id -u)" = 0 ] || cannot "slurm-wlm and munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || cannot "slurm-wlm and munge are not installed and there is no apt-get"
    echo "test_cluster: installing slurm-wlm and munge (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q slurm-wlm munge >&2; } \
        || cannot "apt-get install slurm-wlm munge failed"
}

write_config() {  # returns 0 if the file changed
    local host first
    host="$(hostname -s)"
    # Job ids start somewhere new for every cluster directory: MPICH names
    # shared memory after JOBID.STEPID, and a segment left in /dev/shm by a
    # killed step of an earlier test cluster's job 9 hung the next cluster's job 9.
    [ -s "$dir/first_job_id" ] || echo $(( (RANDOM * 32768 + RANDOM) % 60000000 + 1000 )) > "$dir/first_job_id"
    first="$(cat "$dir/first_job_id")"
    cat > "$conf.new" <<EOF
# Written by launch/slurm/test_cluster.sh: a one-node test cluster.
ClusterName=mpisim-test
FirstJobId=$first
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups in a container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Declare more CPUs than the machine has (config_overrides lets slurmd accept it).
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to squeue and scontrol for 5 s or more (there is
# no accounting database, so sacct has nothing to read here): sbatch --wait
# polls every 2 s only while 2 >= MinJobAge / 2 (integer division), then every
# 8 and 32 s, which made every tiny test job last 42 s.
MinJobAge=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
KillWait=5
InactiveLimit=0
NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$conf.new" "$conf"; then
        rm "$conf.new"
        return 1
    fi
    mv "$conf.new" "$conf"
}

start_munge() {
    running "$dir/munge/munged.pid" && return 0
    mkdir -p "$dir/munge"
    chmod 700 "$dir/munge"
    if [ ! -s "$dir/munge/munge.key" ]; then
        (umask 077; head -c 1024 /dev/urandom > "$dir/munge/munge.key")
    fi
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        || cannot "munged would not start (see $dir/log/munged.log)"
}

node_state() { sinfo -h -n "$node" -o %T 2>/dev/null | head -1; }

start() {
    install_packages
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 755 "$dir"
    local changed=0
    write_config && changed=1
    start_munge
    if [ "$changed" = 1 ] && running "$dir/slurmctld.pid"; then
        scontrol reconfigure >/dev/null || cannot "scontrol reconfigure failed (see $dir/log/slurmctld.log)"
    fi
    if ! running "$dir/slurmctld.pid"; then
        slurmctld -f "$conf" || cannot "slurmctld would not start (see $dir/log/slurmctld.log)"
    fi
    if ! running "$dir/slurmd.pid"; then
        slurmd -f "$conf" -N "$node" || cannot "slurmd would not start (see $dir/log/slurmd.log)"
    fi
    local state=""
    for _ in $(seq 1 60); do
        state="$(node_state)"
        case "$state" in
            idle*|mixed*|allocated*|completing*) echo "SLURM_CONF=$conf"; return 0 ;;
            down*|drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    cannot "the node did not come up (state '${state:-no answer}'; see $dir/log/)"
}

stop() {
    local daemon pid
    for daemon in slurmd slurmctld munge/munged; do
        if running "$dir/$daemon.pid"; then
            pid="$(cat "$dir/$daemon.pid")"
            kill "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        fi
    done
}

status() {
    running "$dir/slurmctld.pid" && running "$dir/slurmd.pid" || return 1
    case "$(node_state)" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
