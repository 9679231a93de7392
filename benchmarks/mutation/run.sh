#!/usr/bin/env bash
# Mutation testing of the f-GM math (fgm_core/model.py, the built-in divergences) with
# cosmic-ray, against the fast math tests only. Runs on a copy of the tree, never in place.
#   pip install -e ".[dev]"        # cosmic-ray
#   bash benchmarks/mutation/run.sh [SAMPLE=50]
set -euo pipefail
sample=${1:-50}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
git -C "$root" archive HEAD | tar -x -C "$work"
cp "$root"/tests/*.py "$work/tests/"        # the working tree's tests, committed or not
cd "$work"
export PYTHONPATH="$work:$work/plugins:$work/exporters" OMP_NUM_THREADS=1
for part in model builtin; do
  cosmic-ray init "benchmarks/mutation/$part.toml" "$part.sqlite"
  cr-filter-operators "$part.sqlite" "benchmarks/mutation/$part.toml"
  python benchmarks/mutation/sample.py "$part.sqlite" "$sample" 0
  nice -n 10 cosmic-ray exec "benchmarks/mutation/$part.toml" "$part.sqlite"
  cr-report "$part.sqlite" --no-show-output | tail -3
done
echo "sessions and reports in $work"
