#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying the batch
# scripts before taking them to a cluster. Not for production.
#
#   launch/slurm/test_cluster.sh start    # one node (this host); install if missing, configure, start
#   launch/slurm/test_cluster.sh start N  # N nodes, one slurmd in each test host of launch/hosts.sh
#   launch/slurm/test_cluster.sh status   # exit 0 if the cluster answers and all its nodes are up
#   launch/slurm/test_cluster.sh stop     # stop the daemons it started, and the hosts if it started them
#
# `start` prints SLURM_CONF=...; then: export SLURM_CONF=...; sbatch ...; squeue; scontrol show job ID
#
# With N nodes, each node is a host of launch/hosts.sh (a network namespace with its own hostname
# and address on a bridge; started here when no host is up): node mpisim-hK has NodeAddr
# 10.77.0.(10+K), its slurmd runs inside the host, and slurmctld listens on the bridge's 10.77.0.1.
# A job's tasks on two nodes then talk TCP across the bridge, as on a cluster. A task prolog tells
# UCX (the MPICH wheel's netmod) to use TCP on the host's eth0: it would otherwise see one machine
# and use shared memory between the hosts.
#
#   MPISIM_SLURM_DIR=DIR   config, state, spool, logs and the munge socket (default /tmp/mpisim-slurm)
#   MPISIM_SLURM_CPUS=N    CPUs each node declares (default 8): more than the machine has on
#                          purpose, so that a 3-task job, or two of them, fit on a 2-core laptop
#   MPISIM_SLURM_PORT=P    slurmctld's port; slurmd takes P+1 (default 16817, away from a real
#                          SLURM's 6817)
#
# Debian's slurm-wlm and munge packages are installed with apt-get when missing
# (root only). The daemons run as root, each with its own pid file in DIR;
# munge runs privately on a socket in DIR, with its own key, so a system munge
# is neither needed nor touched. `start` is idempotent: daemons already running
# from DIR are kept (starting with another node count first stops the old nodes). Exit
# status 3 means the cluster cannot be had on this machine (not root and not installed, no
# apt, a daemon would not start); the message says why, and the tests skip with it.
set -euo pipefail

dir="${MPISIM_SLURM_DIR:-/tmp/mpisim-slurm}"
cpus="${MPISIM_SLURM_CPUS:-8}"
port="${MPISIM_SLURM_PORT:-16817}"
conf="$dir/slurm.conf"
hosts_sh="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/hosts.sh"
net="${MPISIM_HOSTS_NET:-10.77.0}"
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

# nodes_of N: the node names of a cluster of N hosts (none: the one node on this host)
nodes_of() {
    if [ "$1" = 0 ]; then echo mpisim-node; else seq -f 'mpisim-h%g' 1 "$1"; fi
}
nodes() { cat "$dir/nodes" 2>/dev/null || true; }

write_config() {  # write_config N: returns 0 if the file changed
    local n="$1" host first controller node_lines k
    host="$(hostname -s)"
    if [ "$n" = 0 ]; then
        controller="$host(127.0.0.1)"
        node_lines="NodeName=mpisim-node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=mpisim-node Default=YES MaxTime=INFINITE State=UP"
    else
        controller="$host(${net}.1)"
        node_lines=""
        for k in $(seq 1 "$n"); do
            node_lines+="NodeName=mpisim-h$k NodeHostname=mpisim-h$k NodeAddr=${net}.$((10 + k)) CPUs=$cpus State=UNKNOWN
"
        done
        node_lines+="PartitionName=debug Nodes=mpisim-h[1-$n] Default=YES MaxTime=INFINITE State=UP
# Every task (and batch script) on a host: UCX over the host's own network, not shared memory.
TaskProlog=$dir/task_prolog.sh"
        printf '#!/bin/sh\necho export UCX_TLS=tcp,self\necho export UCX_NET_DEVICES=eth0\n' > "$dir/task_prolog.sh"
        chmod 755 "$dir/task_prolog.sh"
    fi
    # Job ids start somewhere new for every cluster directory: MPICH names
    # shared memory after JOBID.STEPID, and a segment left in /dev/shm by a
    # killed step of an earlier test cluster's job 9 hung the next cluster's job 9.
    [ -s "$dir/first_job_id" ] || echo $(( (RANDOM * 32768 + RANDOM) % 60000000 + 1000 )) > "$dir/first_job_id"
    first="$(cat "$dir/first_job_id")"
    cat > "$conf.new" <<EOF
# Written by launch/slurm/test_cluster.sh: a test cluster of $( [ "$n" = 0 ] && echo "one node" || echo "$n hosts").
ClusterName=mpisim-test
FirstJobId=$first
SlurmctldHost=$controller
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
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
$node_lines
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

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -1; }

# the hosts of launch/hosts.sh for N nodes: started here when none is up (and stopped by stop)
ensure_hosts() {
    local n="$1" up
    [ "$(id -u)" = 0 ] || cannot "a cluster of hosts needs root (network namespaces)"
    command -v ip >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null \
        || cannot "a cluster of hosts needs ip, unshare and nsenter"
    up="$(ip netns list 2>/dev/null | awk '{print $1}' | grep -c '^mpisim-h[0-9]*$' || true)"
    if [ "$up" = 0 ]; then
        bash "$hosts_sh" start "$n" >/dev/null || cannot "launch/hosts.sh start $n failed"
        touch "$dir/started_hosts"
    elif [ "$up" != "$n" ]; then
        cannot "$up test hosts are up, not $n: launch/hosts.sh stop, or start $up nodes"
    fi
}

start_slurmd() {  # start_slurmd NODE
    local node="$1"
    running "$dir/slurmd-$node.pid" && return 0
    mkdir -p "$dir/spool/$node"
    if [ "$node" = mpisim-node ]; then
        slurmd -f "$conf" -N "$node" || cannot "slurmd would not start (see $dir/log/slurmd-$node.log)"
    else  # inside its host: the host's network, and its name in a UTS namespace of its own. Not
        # `ip netns exec`, which mounts a /sys of the host's own without the cgroup file system slurmd reads.
        nsenter --net="/run/netns/$node" unshare --uts /bin/sh -c 'hostname "$1" && exec slurmd -f "$2" -N "$1"' \
            sh "$node" "$conf" || cannot "slurmd would not start in $node (see $dir/log/slurmd-$node.log)"
    fi
}

start() {
    local n="${1:-0}" node state
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -le 80 ] || { echo "test_cluster: start [N]: N from 1 to 80" >&2; exit 2; }
    install_packages
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 755 "$dir"
    if [ -s "$dir/nodes" ] && [ "$(nodes)" != "$(nodes_of "$n")" ]; then
        stop  # another shape of cluster was running from this directory
    fi
    [ "$n" = 0 ] || ensure_hosts "$n"
    local changed=0
    write_config "$n" && changed=1
    nodes_of "$n" > "$dir/nodes"
    start_munge
    if [ "$changed" = 1 ] && running "$dir/slurmctld.pid"; then
        scontrol reconfigure >/dev/null || cannot "scontrol reconfigure failed (see $dir/log/slurmctld.log)"
    fi
    if ! running "$dir/slurmctld.pid"; then
        slurmctld -f "$conf" || cannot "slurmctld would not start (see $dir/log/slurmctld.log)"
    fi
    for node in $(nodes); do start_slurmd "$node"; done
    for node in $(nodes); do
        state=""
        for _ in $(seq 1 60); do
            state="$(node_state "$node")"
            case "$state" in
                idle*|mixed*|allocated*|completing*) break ;;
                down*|drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
            esac
            sleep 0.5
        done
        case "$state" in
            idle*|mixed*|allocated*|completing*) ;;
            *) cannot "node $node did not come up (state '${state:-no answer}'; see $dir/log/)" ;;
        esac
    done
    echo "SLURM_CONF=$conf"
}

stop_pid() {  # stop_pid PIDFILE
    local pid
    running "$1" || return 0
    pid="$(cat "$1")"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local pidfile
    for pidfile in "$dir"/slurmd-*.pid "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -e "$pidfile" ] && stop_pid "$pidfile"
    done
    if [ -e "$dir/started_hosts" ]; then
        bash "$hosts_sh" stop
        rm -f "$dir/started_hosts"
    fi
}

status() {
    local node
    running "$dir/slurmctld.pid" && [ -s "$dir/nodes" ] || return 1
    for node in $(nodes); do
        running "$dir/slurmd-$node.pid" || return 1
        case "$(node_state "$node")" in idle*|mixed*|allocated*|completing*) ;; *) return 1 ;; esac
    done
}

case "${1:-}" in
    start) [ $# -le 2 ] || { echo "usage: $0 start [N]" >&2; exit 2; }; start "${2:-0}" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
