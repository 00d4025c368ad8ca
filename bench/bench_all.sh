#!/usr/bin/env bash
# `make bench`: every benchmark, --runs times each (default 3), and one
# table of the figures they print as `summary: WHAT | VALUE | AIM` lines,
# one column per run. The benches measure their own ratios side by side;
# this script only collects them. Run from the build directory.
#
# usage: bench/bench_all.sh [--runs N] [--quick] [--only NAME]
#   --quick: one run of the short cases (a check that everything runs;
#            the sweep without its whole space, which takes minutes)
#   --only NAME: the benches whose name contains NAME
set -eu
runs=3 quick=0 only=
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift ;;
        --quick) quick=1 runs=1 ;;
        --only) only=$2; shift ;;
        *) echo "bench_all.sh: unknown option '$1' (--runs N, --quick, --only NAME)" >&2; exit 2 ;;
    esac
    shift
done
case $runs in '' | *[!0-9]* | 0) echo "bench_all.sh: --runs must be a positive integer, not '$runs'" >&2; exit 2 ;; esac
srcdir=${MOEMU_SRCDIR:-$(dirname "$0")/..}
tmp=$(mktemp -d /tmp/moemu-bench-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# The README's default job, timed whole (weights generated, run, report).
default_job() {
    local t0 t1
    t0=$(date +%s.%N)
    ./moemu run >/dev/null
    t1=$(date +%s.%N)
    printf 'summary: README default job, moemu run (s) | %.2f | -\n' "$(echo "$t1 - $t0" | bc)"
}

benches=(default_job bench/bench_weights bench/bench_prefill bench/bench_decode
    bench/bench_overhead bench/bench_collectives bench/bench_dry bench/bench_sweep.sh)
full_args() {
    case $1 in
        bench/bench_sweep.sh) echo --full ;;
    esac
}
quick_args() {
    case $1 in
        bench/bench_dry) echo --quick ;;
        bench/bench_overhead) echo --decode 2 --prompt-len 32 ;;
        bench/bench_prefill) echo --prompt-len 64 --reps 1 ;;
        bench/bench_weights) echo --reps 1 ;;
    esac
}

run_one() {
    local b=$1
    shift
    if [ "$b" = default_job ]; then default_job; else MOEMU=./moemu "$exe" "$@"; fi
}

printf 'machine: %s, %s cores, %s GiB; OpenBLAS %s kernels\n' \
    "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" \
    "$(./moemu run --model tiny --batch 1 --prompt-len 4 --decode 1 2>/dev/null |
        sed -n 's/.*OpenBLAS \([A-Za-z0-9]*\) kernels.*/\1/p' | head -1)"
failed=0
for b in "${benches[@]}"; do
    case $b in *"$only"*) ;; *) continue ;; esac
    if [ "$b" != default_job ]; then
        exe=$b
        [ -x "$exe" ] || exe=$srcdir/$b
        [ -x "$exe" ] || { echo "bench_all.sh: $b is not built; skipped" >&2; continue; }
    fi
    args=$(full_args "$b")
    [ $quick = 1 ] && args=$(quick_args "$b")
    for r in $(seq "$runs"); do
        echo "== $b $args (run $r of $runs)" >&2
        # shellcheck disable=SC2086
        if ! run_one "$b" $args >"$tmp/out" 2>"$tmp/err"; then
            echo "bench_all.sh: $b failed:" >&2
            cat "$tmp/err" >&2
            failed=1
            continue
        fi
        grep '^summary:' "$tmp/out" | sed "s/^summary: /$r|/" >>"$tmp/rows" || true
    done
done
[ -s "$tmp/rows" ] || { echo "bench_all.sh: no figures" >&2; exit 1; }
# one row per figure, in the order first seen, a column per run
awk -F' *[|] *' -v runs="$runs" '
    !($2 in seen) { seen[$2] = ++n; what[n] = $2; aim[n] = $4 }
    { v[seen[$2], $1] = $3 }
    END {
        printf "| figure |"; for (r = 1; r <= runs; r++) printf " run %d |", r; print " aim |"
        printf "|---|"; for (r = 1; r <= runs; r++) printf "---:|"; print "---|"
        for (i = 1; i <= n; i++) {
            printf "| %s |", what[i]
            for (r = 1; r <= runs; r++) printf " %s |", ((i, r) in v) ? v[i, r] : "failed"
            print " " aim[i] " |"
        }
    }' "$tmp/rows"
exit $failed
