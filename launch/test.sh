#!/usr/bin/env bash
# Set up the environment, then run the whole test suite (pure and MPI tiers).
# Arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/launch/setup.sh")"
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
