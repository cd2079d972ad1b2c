#!/usr/bin/env bash
# The main job (`embetter-plug probe`, default settings) on a stratified sample, before and after,
# side by side: alternating runs of two source trees in the same environment, wall and CPU time.
#   benchmarks/bench_first_run.sh BEFORE_TREE AFTER_TREE [MAX_SAMPLES] [ROUNDS]
set -euo pipefail
before=$1 after=$2 n=${3:-400} rounds=${4:-2}
work=$(mktemp -d)
export HF_HUB_OFFLINE=1
unset OMP_WAIT_POLICY OPENBLAS_NUM_THREADS OMP_NUM_THREADS
for round in $(seq "$rounds"); do
  for which in before after; do
    tree=$before; [ "$which" = after ] && tree=$after
    PYTHONPATH=$tree /usr/bin/time -f "$which round $round: wall %e s, user %U s, sys %S s" \
      python -m embetter_plug.cli probe --max-samples "$n" --quiet --out "$work/$which-$round" \
      > "$work/$which-$round.log" 2>&1
    tail -1 "$work/$which-$round.log"; uptime
  done
done
