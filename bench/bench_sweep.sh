#!/usr/bin/env bash
# Host seconds of `moemu sweep` on 16 devices (docs/sweep.md, "Time"):
# the command's defaults, the workload (batch 128 x 1024 tokens)
# and, with --full, the whole space (--sp both --uneven on --max-etp 0
# --micro-batches pow2, 3653 candidates, minutes). Best of --reps N (default
# 1) of each, with the command's default workers (one per core). Run from
# the build directory.
set -eu
moemu=${MOEMU:-./moemu}
full=0 reps=1
while [ $# -gt 0 ]; do
    case $1 in
    --full) full=1 ;;
    --reps) reps=$2; shift ;;
    *) echo "usage: bench_sweep.sh [--full] [--reps N]" >&2; exit 2 ;;
    esac
    shift
done
best() { sort -n | head -1; }
wall() { local t0 t1; t0=$(date +%s.%N); "$moemu" sweep "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
time_of() { for _ in $(seq "$reps"); do wall "$@"; done | best; }
big="--batch 128 --prompt-len 1024"
defaults=$(time_of --devices 16)
batch=$(time_of --devices 16 $big)
printf 'summary: sweep 16 devices, defaults (s) | %.2f | 15\n' "$defaults"
printf 'summary: sweep 16 devices, batch 128 x 1024 (s) | %.2f | 15\n' "$batch"
if [ "$full" = 1 ]; then
    all=$(time_of --devices 16 $big --sp both --uneven on --max-etp 0 --micro-batches pow2)
    printf 'summary: sweep full space (s) | %.2f | 60\n' "$all"
fi
