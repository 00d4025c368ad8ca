#!/usr/bin/env bash
# Devices over processes (docs/mpi.md): the strategies of the conformance
# matrix run under mpirun -np 2 and -np 4 give the same outputs, bit for
# bit (logits, JSON figures, trace), as in one process; a device's failure
# in any process reads as in one process; a killed process ends the job in
# seconds; processes started differently are refused; 64 devices over 4
# processes. Skipped (77) in a build without MPI.
set -u
moemu=${MOEMU:-./moemu}
mpirun=${MPIRUN:-mpirun}
[ "${MOEMU_MPI:-no}" = yes ] || {
    echo "built without MPI (./configure --with-mpi): skipped"
    exit 77
}
tmp=$(mktemp -d /tmp/moemu-mpi-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
# as root (CI), with more processes than cores, threads unbound
mpi() { local np=$1; shift; timeout 300 "$mpirun" --allow-run-as-root --oversubscribe --bind-to none -np "$np" "$@"; }

# the figures of a report, wall-clock ones left out
figures() {
    python3 - "$1" <<'EOF'
import json, sys
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if 'wall' not in k and 'host' not in k}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
print(json.dumps(strip(json.load(open(sys.argv[1]))), sort_keys=True))
EOF
}

same_as_one_process() { # NP ARGS...: the same outputs as one process
    local np=$1; shift
    "$moemu" "$@" --json "$tmp/one.json" --trace "$tmp/one.trace" --dump-logits "$tmp/one.st" \
        >"$tmp/one.out" 2>&1 || { bad "one process: $*"; cat "$tmp/one.out"; return; }
    mpi "$np" "$moemu" "$@" --json "$tmp/np.json" --trace "$tmp/np.trace" \
        --dump-logits "$tmp/np.st" >"$tmp/np.out" 2>&1 || { bad "np $np: $*"; cat "$tmp/np.out"; return; }
    cmp -s "$tmp/one.st" "$tmp/np.st" || bad "np $np: logits differ: $*"
    cmp -s "$tmp/one.trace" "$tmp/np.trace" || bad "np $np: traces differ: $*"
    [ "$(figures "$tmp/one.json")" = "$(figures "$tmp/np.json")" ] || bad "np $np: figures differ: $*"
    grep -q "verdict *PASS" "$tmp/np.out" || bad "np $np: no PASS: $*"
    echo "ok: np $np $*"
}

wl="--model tiny --batch 4 --prompt-len 12 --decode 3"
for s in tp2 pp2-tp2-ep2 dp2-tp2-ep4 pp2-dp2-sp-tp2-ep2 cp2-tp2-ep2 dp4-ep4 tp4-etp2-ep2 pp4; do
    same_as_one_process 2 check $wl --strategy "$s"
    same_as_one_process 4 check $wl --strategy "$s"
done
same_as_one_process 3 check $wl --strategy pp2-dp2-tp2-ep2 --micro-batches 2
same_as_one_process 2 check $wl --strategy dp2-tp2-ep2 --devices-per-process 3
# DeepEP's low-latency mode: its counts move between processes uncharged
same_as_one_process 2 check $wl --strategy dp4-ep4 --dispatcher deepep-ll --micro-batches 2 \
    --overlap two-batch
# a Hugging Face family (Qwen1.5-MoE's config, shrunk): shared experts and their gate
python3 - "${MOEMU_SRCDIR:-.}/examples/models/Qwen1.5-MoE-A2.7B.json" >"$tmp/qwen.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
         shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=120)
print(json.dumps(c))
EOF
same_as_one_process 2 check --model "$tmp/qwen.json" --batch 3 --prompt-len 9 --decode 3 \
    --strategy pp2-tp2-ep2
# a reference strategy as the baseline
same_as_one_process 2 check $wl --strategy dp2-tp2-ep4 --baseline-strategy pp2

# 64 devices over 4 processes, the same figures as one process
"$moemu" run --model tiny --batch 16 --prompt-len 8 --decode 2 --strategy pp2-dp8-tp4-ep4 \
    --json "$tmp/w1.json" >/dev/null 2>&1 || bad "64 devices in one process"
mpi 4 "$moemu" run --model tiny --batch 16 --prompt-len 8 --decode 2 --strategy pp2-dp8-tp4-ep4 \
    --json "$tmp/w4.json" >"$tmp/w4.out" 2>&1 || { bad "64 devices over 4 processes"; cat "$tmp/w4.out"; }
[ "$(figures "$tmp/w1.json")" = "$(figures "$tmp/w4.json")" ] || bad "64 devices: figures differ"
echo "ok: 64 devices over 4 processes"

# each process holds its devices' share of the weights, in their dtype
# (fp16: docs/weights.md): peak resident memory within 1.2 x (the weights'
# bytes / K) plus what a run of the tiny model takes
python3 - "${MOEMU_SRCDIR:-.}/examples/models/Qwen1.5-MoE-A2.7B.json" >"$tmp/mem.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=512, intermediate_size=1024, moe_intermediate_size=1024,
         shared_expert_intermediate_size=1024, num_experts=8, num_experts_per_tok=2,
         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, vocab_size=1000)
print(json.dumps(c))
EOF
wbytes=$("$moemu" info --model "$tmp/mem.json" | awk '$1 == "weight" && $2 == "bytes" {print $3}')
mem="run --batch 1 --prompt-len 8 --decode 2 --strategy pp4"
# each process's peak into a file of its own (stderr lines would interleave)
peak() { local out=$1; shift; sh -c 'exec /usr/bin/time -f "rss %M" -o "$0.$$" "$@"' "$out" "$@"; }
mpi 1 sh -c "$(declare -f peak); peak $tmp/rss0 $moemu $mem --model tiny" >/dev/null 2>&1
fixed=$(awk '/^rss/ {print $2 * 1024}' "$tmp"/rss0.*)
for k in 1 2 4; do
    mpi "$k" sh -c "$(declare -f peak); peak $tmp/rss$k $moemu $mem --model $tmp/mem.json" \
        >/dev/null 2>&1 || bad "K=$k: the run failed"
    [ "$(cat "$tmp/rss$k".* | grep -c '^rss')" = "$k" ] || bad "K=$k: not $k peaks"
    cat "$tmp/rss$k".* >"$tmp/rss$k"
    share=$((wbytes / k))
    awk -v share="$share" -v fixed="$fixed" -v k="$k" '/^rss/ {
            rss = $2 * 1024; ok = rss <= 1.2 * share + fixed
            printf "%s: K=%d process peak %.1f MB, its weights %.1f MB + fixed %.1f MB\n",
                   ok ? "ok" : "FAIL", k, rss / 1e6, share / 1e6, fixed / 1e6
            if (!ok) bad = 1 }
        END { exit bad }' "$tmp/rss$k" || fail=1
done

# a device's failure (stage 1 is over its memory): the message of one process
sed 's/"mem_capacity": *[0-9.e]*/"mem_capacity": 6e5/' "${MOEMU_SRCDIR:-.}/hw/h800.json" >"$tmp/small.json"
oom="run --model tiny --batch 2 --prompt-len 8 --decode 2 --strategy pp2 --pp-layers 1,3 --hw $tmp/small.json"
"$moemu" $oom >/dev/null 2>"$tmp/oom1.err"
mpi 2 "$moemu" $oom >/dev/null 2>"$tmp/oom2.err"
rc=$?
want=$(grep "moemu: error" "$tmp/oom1.err")
[ -n "$want" ] && grep -qF "$want" "$tmp/oom2.err" || bad "a failure in process 1 reads otherwise: $(cat "$tmp/oom2.err")"
[ "$rc" -ne 0 ] || bad "a failure in process 1: exit 0"
[ "$(grep -c "moemu: error" "$tmp/oom2.err")" = 1 ] || bad "the failure is printed more than once"
echo "ok: a device's failure in process 1: $want"

# processes started with different command lines are refused
mpi 1 "$moemu" run $wl --strategy tp2 : -np 1 "$moemu" run $wl --strategy tp2 --seed 7 \
    >/dev/null 2>"$tmp/mismatch.err" && bad "different command lines ran"
grep -q "process 1 runs another job than process 0" "$tmp/mismatch.err" ||
    bad "different command lines: $(cat "$tmp/mismatch.err")"
echo "ok: different command lines refused"

# a killed process ends the job within seconds, naming the devices
mpi 2 "$moemu" run --model tiny --batch 8 --prompt-len 64 --decode 400 --pace 100 \
    --strategy pp2-tp2 >/dev/null 2>"$tmp/kill.err" &
job=$!
victim=""
for _ in $(seq 100); do
    for p in $(pgrep -f "moemu run --model tiny --batch 8 --prompt-len 64"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=1$' && victim=$p
    done
    [ -n "$victim" ] && break
    sleep 0.1
done
sleep 2
t0=$(date +%s.%N)
kill -9 "$victim"
wait "$job"
rc=$?
took=$(echo "$(date +%s.%N) - $t0" | bc)
[ "$rc" -ne 0 ] || bad "a killed process: exit 0"
(($(echo "$took < 10" | bc))) || bad "a killed process: the job took $took s to end"
grep -q "rank 1" "$tmp/kill.err" && grep -q "devices by process: 0: 0-1, 1: 2-3" "$tmp/kill.err" ||
    bad "a killed process: $(cat "$tmp/kill.err")"
echo "ok: a killed process ended the job in $took s"

exit $fail
