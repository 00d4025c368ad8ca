#!/bin/sh
# Golden figures: fixed multi-device runs and dry runs whose JSON reports
# and logits were recorded by an earlier build (tests/golden/), the
# logits with OpenBLAS's Haswell kernels. Every
# virtual figure must be the same bit for bit, and so must the logits and
# the generated tokens; only the one-device reference (report.scaling) may
# differ. With --record, the files are written anew instead (say why in
# the commit). Prints "N passed, N failed".
set -u
moemu="${MOEMU_BUILDDIR:-.}/moemu"
same="${MOEMU_BUILDDIR:-.}/tests/json_same"
dir="${MOEMU_SRCDIR:-.}/tests/golden"
record=${1:-}
# The logits were recorded with OpenBLAS's Haswell kernels (AVX2 and
# FMA); other kernels round the sums otherwise, and OpenBLAS picks them by
# CPU model (moemu by its features: emu_blas_pick_core), so the test pins
# them. A CPU without AVX2 and FMA compares the reports alone.
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=Haswell
else
    echo "note: no AVX2 and FMA here: the logits are not compared"
    no_logits=1
fi
tmp=$(mktemp -d /tmp/moemu-golden-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

# golden NAME ARGS...: one run; real-math runs also dump their logits
golden() {
    name=$1
    shift
    logits=""
    case "$*" in *"--math skip"*) ;; *) logits="--dump-logits $tmp/$name.st" ;; esac
    # shellcheck disable=SC2086
    if ! "$moemu" run "$@" --json "$tmp/$name.json" $logits >"$tmp/$name.out" 2>&1; then
        fail=$((fail + 1))
        echo "FAIL: $name: moemu run $* exited non-zero: $(cat "$tmp/$name.out")"
        return
    fi
    if [ "$record" = "--record" ]; then
        cp "$tmp/$name.json" "$dir/$name.json"
        [ -z "$logits" ] || cp "$tmp/$name.st" "$dir/$name.logits.st"
        pass=$((pass + 1))
        return
    fi
    if ! diff=$("$same" "$dir/$name.json" "$tmp/$name.json" report.scaling); then
        fail=$((fail + 1))
        echo "FAIL: $name: the report moved: $diff"
    elif [ -n "$logits" ] && [ -z "${no_logits:-}" ] && ! cmp -s "$dir/$name.logits.st" "$tmp/$name.st"; then
        fail=$((fail + 1))
        echo "FAIL: $name: the logits differ from $dir/$name.logits.st"
    else
        pass=$((pass + 1))
    fi
}

t="--model tiny --prompt-lens 5,9,16,12 --decode 4 --seed 3"
golden tiny-dp2-tp2-ep4 $t --strategy dp2-tp2-ep4
golden tiny-pp2-tp2-sp $t --strategy pp2-tp2-sp --micro-batches 2
golden tiny-pp2-tp2-sp-ep2 $t --strategy pp2-tp2-sp-ep2 --micro-batches 2
golden tiny-cp2-ep2 $t --strategy cp2-ep2
golden tiny-dp2-tp2-ep2-etp2 $t --strategy dp2-tp2-ep2-etp2
golden tiny-dp2-cp2-tp2-ep4 $t --strategy dp2-cp2-tp2-ep4 --micro-batches 2 --hw a100-80g
b="--model moe-10b-plan --batch 128 --prompt-len 1024 --decode 8 --math skip"
golden 10b-pp4-dp4-ep4 $b --strategy pp4-dp4-ep4 --micro-batches 2
golden 10b-pp2-dp4-tp2-ep8 $b --strategy tp2-ep8-dp4-pp2 --micro-batches 2
golden 10b-dp4-tp4-sp-ep16-zipf $b --strategy dp4-tp4-sp-ep16 --routing zipf:1.1

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
