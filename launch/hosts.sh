#!/usr/bin/env bash
# A test cluster of hosts on this machine: network namespaces on a private bridge (needs root).
#
#   launch/hosts.sh start N     N hosts mpisim-h1..N at 10.77.0.11.., a bridge at 10.77.0.1
#   launch/hosts.sh status      the hosts, their addresses and interface counters
#   launch/hosts.sh stop        remove every host, veth and the bridge: nothing is left behind
#   launch/hosts.sh mpiexec [SLOTS]   print the launcher line for MPISIM_MPIEXEC (SLOTS ranks a host)
#
# Each host has its own network stack (ip netns: its own eth0, loopback and routes) and, for the
# commands started in it through launch/hosts-enter, its own hostname (a UTS namespace). The
# MPICH wheel's mpiexec starts its proxies there with hydra's rsh launcher, whose "remote shell"
# is launch/hosts-enter: hydra then sees distinct hosts (ranks on one host share memory, ranks on
# two talk TCP over the bridge). -localhost gives the proxies the bridge's address to call back.
#
#   eval "$(launch/hosts.sh start 3)"      # also exports MPISIM_MPIEXEC for 1 rank a host
#   mpiexec $(launch/hosts.sh mpiexec 2) -n 6 python -m mpisim.server_mode --agents.n 5
#
# The hosts' names resolve to their addresses through lines of /etc/hosts that end in
# "# mpisim test host" (hydra's proxies, SLURM's steps call back by name, as on a cluster); stop
# removes them. MPISIM_HOSTS_NET (default 10.77.0) is the /24 the hosts use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
net="${MPISIM_HOSTS_NET:-10.77.0}"
bridge=mpisim-br
prefix=mpisim-h

mark="# mpisim test host"
die() { echo "hosts.sh: $*" >&2; exit 1; }

# /etc/hosts may be a bind mount (containers): rewrite it in place, never replace the file.
forget_names() {
    local kept
    grep -q "$mark\$" /etc/hosts 2>/dev/null || return 0
    kept="$(grep -v "$mark\$" /etc/hosts)"
    printf '%s\n' "$kept" > /etc/hosts
}

hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}[0-9]*$" | sort -V || true; }

launcher_line() {
    local slots="${1:-1}" list=() host
    for host in $(hosts); do
        list+=("${net}.$((10 + ${host#"$prefix"})):$slots")
    done
    [ ${#list[@]} -gt 0 ] || die "no hosts: start them first (launch/hosts.sh start N)"
    local IFS=,
    echo "-launcher rsh -launcher-exec $here/hosts-enter -localhost ${net}.1 -hosts ${list[*]}"
}

start() {
    local n="$1" k
    [[ "$n" =~ ^[1-9][0-9]?$ ]] && [ "$n" -le 80 ] || die "start N: N from 1 to 80, got '$n'"
    [ "$(id -u)" = 0 ] || die "start needs root (ip netns, veth, a bridge)"
    [ -z "$(hosts)" ] || die "hosts are up already ($(hosts | tr '\n' ' ')): launch/hosts.sh stop first"
    forget_names
    trap 'stop >/dev/null 2>&1' ERR
    ip link add "$bridge" type bridge
    ip addr add "${net}.1/24" dev "$bridge"
    ip link set "$bridge" up
    for k in $(seq 1 "$n"); do
        ip netns add "${prefix}$k"
        ip link add "mpisim-v$k" type veth peer name eth0 netns "${prefix}$k"
        ip link set "mpisim-v$k" master "$bridge" up
        ip -n "${prefix}$k" addr add "${net}.$((10 + k))/24" dev eth0
        ip -n "${prefix}$k" link set eth0 up
        ip -n "${prefix}$k" link set lo up
        ip -n "${prefix}$k" route add default via "${net}.1"
        echo "${net}.$((10 + k)) ${prefix}$k $mark" >> /etc/hosts
    done
    trap - ERR
    echo "export MPISIM_MPIEXEC=\"$(command -v mpiexec 2>/dev/null || echo mpiexec) $(launcher_line 1)\""
}

stop() {
    local host
    for host in $(hosts); do
        ip netns pids "$host" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$host"
    done
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^mpisim-v[0-9]*$' \
        | xargs -r -n1 ip link del 2>/dev/null || true
    if ip link show "$bridge" >/dev/null 2>&1; then ip link del "$bridge"; fi
    forget_names
}

status() {
    local host k
    [ -n "$(hosts)" ] || { echo "no hosts"; return 0; }
    for host in $(hosts); do
        k="${host#"$prefix"}"
        printf '%s  %s  rx %s B  tx %s B\n' "$host" "${net}.$((10 + k))" \
            "$(ip netns exec "$host" cat /sys/class/net/eth0/statistics/rx_bytes)" \
            "$(ip netns exec "$host" cat /sys/class/net/eth0/statistics/tx_bytes)"
    done
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: launch/hosts.sh start N"; start "$2" ;;
    stop) stop ;;
    status) status ;;
    mpiexec) launcher_line "${2:-1}" ;;
    *) die "usage: launch/hosts.sh start N | status | stop | mpiexec [SLOTS]" ;;
esac
