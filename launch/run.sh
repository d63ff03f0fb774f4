#!/usr/bin/env bash
# Set up the environment, then run one server-mode job:
#   mpiexec -n $NP python -m mpisim.server_mode [options...]
#
#   NP=11          number of MPI ranks (1 server + agents); default 11
#   MPIEXEC=...    launcher (default: mpiexec on PATH after the venv, so the
#                  MPICH wheel's launcher, or the cluster's own with MPISIM_MPI=system)
#   MODULE=...     the entry point (default mpisim.server_mode)
# Any argument is passed to the entry point (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/launch/setup.sh")"
export PATH="$venv/bin:$PATH"
cd "$root"
exec ${MPIEXEC:-mpiexec} -n "${NP:-11}" "$venv/bin/python" -m "${MODULE:-mpisim.server_mode}" "$@"
