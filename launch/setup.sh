#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and print its path.
#
#   MPISIM_VENV=DIR    where the venv lives (default: .venv in the project)
#   MPISIM_MPI=system  use the MPI that mpi4py finds on the machine (a
#                      cluster's module) instead of the MPICH wheel
#   PYTHON=python3.X   the interpreter that creates the venv
#
# It reinstalls only when pyproject.toml or the choice of MPI changed, so
# calling it before every run costs a fraction of a second. Calls that overlap
# (the tasks of a SLURM job array starting together on a shared file system)
# take turns on a lock file in the venv's directory (flock, where the system
# has it): the first one builds, the others wait and then find the venv ready.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MPISIM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="test,plot,docs"
if [ "${MPISIM_MPI:-wheel}" != "system" ]; then
    extras="test,plot,docs,mpich"
fi

mkdir -p "$venv"
if command -v flock >/dev/null; then
    exec 9>"$venv/.mpisim-setup.lock"
    if ! flock -n 9; then
        echo "mpisim: waiting for another setup of $venv to finish" >&2
        flock 9
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "mpisim: creating the virtual environment $venv" >&2
    "$python" -m venv "$venv"
fi

stamp="$venv/.mpisim-installed"
want="$(sha256sum < "$root/pyproject.toml" | cut -c1-16) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "mpisim: installing the package and its dependencies ($extras) into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --editable "$root[$extras]" >&2
    echo "$want" > "$stamp.new"
    mv "$stamp.new" "$stamp"
fi
echo "$venv"
