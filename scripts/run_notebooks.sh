#!/usr/bin/env bash
# Re-execute notebooks in place, so that their stored outputs come from a real run: nbval compares
# a fresh execution against them (strict mode), so run this after changing a notebook or anything
# its outputs depend on, then commit the notebooks.
#
#   scripts/run_notebooks.sh                        # every notebooks/NN_*.ipynb, in order
#   scripts/run_notebooks.sh notebooks/06_*.ipynb   # some of them
#
# Uses the "python3" kernel of the active environment (activate the venv first).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
    set -- notebooks/[0-9][0-9]_*.ipynb
fi
status=0
for nb in "$@"; do
    start=$(date +%s)
    if jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=900 "$nb" 2>/tmp/run_notebooks.$$.log; then
        echo "ok     $nb  ($(( $(date +%s) - start )) s)"
    else
        echo "FAILED $nb  ($(( $(date +%s) - start )) s)"
        tail -n 30 /tmp/run_notebooks.$$.log
        status=1
    fi
done
rm -f /tmp/run_notebooks.$$.log
exit $status
