#!/usr/bin/env bash
# Submit a whole reproduction to SLURM: the job array of its cells, then the merge once they are all done.
#
#   launch/slurm/submit_sweep.sh SCRIPT [OPTIONS]     # e.g. benchmarks/attack_table.py --rounds 300
#
# It asks the script for its cells (--list-cells: N cells of R ranks), then runs
#   sbatch --array=0-(N-1)%K --ntasks=R launch/slurm/sweep.sbatch SCRIPT OPTIONS
#   sbatch --dependency=afterany:ARRAY --ntasks=1 launch/slurm/sweep.sbatch SCRIPT OPTIONS --merge
# and prints both job ids. The merge runs even when some cells failed, and lists them.
#
#   MPISIM_ARRAY_LIMIT=K   cells running at once (default 4)
#   MPISIM_SWEEP_WAIT=1    wait until the merge has finished (sbatch --wait); exit with its status
#   MPISIM_SLURM_LOGS=DIR  where the logs go (default: here): slurm-mpisim-sweep-ARRAY_K.out per
#                          cell, slurm-mpisim-merge-JOB.out for the merge
#   SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...: read by sbatch itself
# Run it from the project directory (the jobs find the project there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 SCRIPT [OPTIONS]" >&2; exit 2; }
venv="$("$root/launch/setup.sh")"
listing="$("$venv/bin/python" "$@" --list-cells)"
read -r cells _ ranks _ <<< "$(head -1 <<< "$listing")"
[ "$cells" -gt 0 ] 2>/dev/null || { echo "$listing" >&2; echo "submit_sweep: no cells to run" >&2; exit 1; }
echo "$listing" | head -1
script="$root/launch/slurm/sweep.sbatch"
logs="${MPISIM_SLURM_LOGS:-.}"
array="$(sbatch --parsable --array="0-$((cells - 1))%${MPISIM_ARRAY_LIMIT:-4}" --ntasks="$ranks" \
    --output="$logs/slurm-%x-%A_%a.out" "$script" "$@")"
array="${array%%;*}"
echo "submitted the cells: job array $array (0-$((cells - 1)), ${MPISIM_ARRAY_LIMIT:-4} at a time, $ranks ranks each)"
wait_flag=()
[ "${MPISIM_SWEEP_WAIT:-0}" = 1 ] && wait_flag=(--wait)
merge_cmd=(sbatch --parsable "${wait_flag[@]}" --dependency="afterany:$array" --ntasks=1
           --job-name=mpisim-merge --output="$logs/slurm-%x-%j.out" "$script" "$@" --merge)
if [ "${MPISIM_SWEEP_WAIT:-0}" = 1 ]; then
    echo "waiting for the merge (after job $array)..."
    status=0
    merge="$("${merge_cmd[@]}")" || status=$?
    echo "merge job ${merge%%;*} finished with status $status"
    exit "$status"
fi
merge="$("${merge_cmd[@]}")"
echo "submitted the merge: job ${merge%%;*} (runs after $array)"
echo "watch: squeue -j $array,${merge%%;*}    afterwards: sacct -j $array --format=JobID,State,ExitCode,Elapsed"
