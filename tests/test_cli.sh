#!/bin/sh
# The moemu command end to end: help, outputs, the weights round trip and
# every error path's message and exit status. Prints "N passed, N failed".
set -u
moemu="${MOEMU_BUILDDIR:-.}/moemu"
tmp=$(mktemp -d /tmp/moemu-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect STATUS PATTERN CMD...: exit status and a pattern in stdout+stderr
expect() {
    want=$1 pat=$2
    shift 2
    out=$("$@" 2>&1)
    got=$?
    if [ "$got" -ne "$want" ]; then
        bad "$* exited $got, expected $want: $out"
    elif ! printf "%s" "$out" | grep -qF -- "$pat"; then
        bad "$*: output lacks '$pat': $out"
    else
        ok
    fi
}

expect 0 "usage: moemu COMMAND" "$moemu" --help
expect 0 "--prompt-len-range" "$moemu" run --help
expect 0 "--model" "$moemu" info --help
# the shared options: one definition, the same help and the same checks in
# every command that takes them
for cmd in run check layout sweep; do
    expect 0 "  --devices-per-node D   override the preset's devices per node" \
        "$moemu" $cmd --help
    expect 2 "--nodes '0': expected a whole number in [1, 1048576]" \
        "$moemu" $cmd --model tiny --devices 2 --nodes 0
done
expect 0 "  --prompt-len-range MIN:MAX" "$moemu" sweep --help
expect 0 "  --routing SPEC         the dry run's router: uniform (default) or zipf:S" \
    "$moemu" plan --help
expect 2 "moemu layout: unknown or incomplete option '--micro-batches'" \
    "$moemu" layout --model tiny --strategy tp2 --micro-batches 2
expect 2 "moemu plan: unknown or incomplete option '--bogus' (see moemu plan --help)" \
    "$moemu" plan --bogus
expect 2 "moemu info: unexpected argument 'extra'" "$moemu" info extra
expect 2 "give only one of --prompt-len, --prompt-lens, --prompt-len-range and --tokens" \
    "$moemu" run --model tiny --prompt-len 4 --prompt-lens 4,5
expect 2 "--pace '-1': expected a number in [0, 1000]" "$moemu" run --model tiny --pace -1
# each device would sleep 1e12 x its virtual time: the run would never end
expect 2 "--pace '1e12': expected a number in [0, 1000]" \
    "$moemu" run --model tiny --strategy tp2 --pace 1e12
expect 2 "--micro-batches 'x': expected a whole number" \
    "$moemu" sweep --model tiny --devices 2 --micro-batches x
expect 2 "unknown command 'frobnicate'" "$moemu" frobnicate
expect 2 "usage" "$moemu"
expect 2 "unknown or incomplete option '--bogus'" "$moemu" run --bogus
expect 2 "unexpected argument 'extra'" "$moemu" run --model tiny extra
expect 2 "--batch '0': expected a whole number" "$moemu" run --model tiny --batch 0
expect 2 "--seed '-3'" "$moemu" run --model tiny --seed -3
# strtoull takes leading blanks and a sign: " -1" would be 2^64 - 1
for seed in " -1" "+1" " 1"; do
    expect 2 "--seed '$seed': expected a non-negative whole number" "$moemu" run \
        --model tiny --seed "$seed"
done
expect 2 "--decode 'many'" "$moemu" run --model tiny --decode many
expect 2 "nosuchmodel: no such built-in model" "$moemu" run --model nosuchmodel
expect 2 "max_position_embeddings is 4096" "$moemu" run --model tiny --prompt-len 4096 --decode 2
expect 0 "654016" "$moemu" info --model tiny
expect 0 "452" "$moemu" info --model moe-10b-plan

# a config file with a refused key
printf '{"vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"num_local_experts":2,"num_experts_per_tok":1,"rope_scaling":{"type":"linear","factor":2}}' >"$tmp/c.json"
expect 2 "rope_scaling" "$moemu" run --model "$tmp/c.json"

# outputs: JSON, logits, weights that load back to the same tokens
expect 0 "GFLOP/s achieved" "$moemu" run --model tiny --prompt-lens 5,9 --decode 3 \
    --seed 7 --json "$tmp/a.json" --dump-logits "$tmp/l.st" --dump-weights "$tmp/w.st"
grep -q '"generated"' "$tmp/a.json" && ok || bad "no generated tokens in the JSON"
head -c 200 "$tmp/l.st" | grep -q '"logits":{"dtype":"F32","shape":\[2,9,97\]' && ok ||
    bad "logits header: $(head -c 200 "$tmp/l.st")"
# 2 x 9 x 97 floats after the header
size=$(wc -c <"$tmp/l.st")
[ "$size" -gt $((2 * 9 * 97 * 4)) ] && ok || bad "logits file of $size bytes"
expect 0 "GFLOP/s" "$moemu" run --model tiny --prompt-lens 5,9 --decode 3 --seed 7 \
    --weights "$tmp/w.st" --json "$tmp/b.json"
a=$(grep -v '_s"\|per_s' "$tmp/a.json" | tr -d ' \n' | sed 's/"summary".*//')
b=$(grep -v '_s"\|per_s' "$tmp/b.json" | tr -d ' \n' | sed 's/"summary".*//')
[ "$a" = "$b" ] && ok || bad "loaded weights generate other tokens: $a vs $b"

# tokens from a file
printf '[[1,2,3],[4,5]]' >"$tmp/t.json"
expect 0 "prompts of 2..3 tokens" "$moemu" run --model tiny --tokens "$tmp/t.json" --decode 2
printf '[[1,2,300]]' >"$tmp/t.json"
expect 2 "error: --tokens $tmp/t.json: sequence 0 position 2 is not a token id in [0, 97)" \
    "$moemu" run --model tiny --tokens "$tmp/t.json"
expect 2 "error: --prompt-lens '4,x': length 2 is not a positive integer" \
    "$moemu" sweep --model tiny --devices 2 --prompt-lens 4,x
expect 2 "error: --prompt-lens '4,5' give 2 lengths but batch is 3" \
    "$moemu" run --model tiny --prompt-lens 4,5 --batch 3

# bad weights files: truncated, another model's
head -c 5000 "$tmp/w.st" >"$tmp/trunc.st"
expect 2 "trunc.st" "$moemu" run --model tiny --weights "$tmp/trunc.st"
"$moemu" run --model tiny --decode 1 --dump-weights "$tmp/w2.st" >/dev/null 2>&1
printf '{"vocab_size":97,"hidden_size":32,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":8,"num_experts_per_tok":2}' >"$tmp/other.json"
expect 2 "model.embed_tokens.weight" "$moemu" run --model "$tmp/other.json" --weights "$tmp/w2.st"
expect 2 "nonexistent" "$moemu" run --model tiny --weights "$tmp/nonexistent.st"
# tiny's 4 layers for a config of 3: the fourth layer's 31 tensors are named
printf '{"vocab_size":97,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"num_local_experts":8,"num_experts_per_tok":2}' >"$tmp/three.json"
expect 2 "31 tensors the model does not have: 'model.layers.3.input_layernorm.weight' (in w2.st)" \
    "$moemu" run --model "$tmp/three.json" --decode 1 --weights "$tmp/w2.st"

# a NaN weight (all ones: NaN in fp16 and bf16) as the last element: refused by name
cp "$tmp/w.st" "$tmp/nan.st"
printf '\377\377' | dd of="$tmp/nan.st" bs=1 seek=$(($(wc -c <"$tmp/w.st") - 2)) \
    conv=notrunc 2>/dev/null
expect 2 "1 tensor holds NaN or Inf values" "$moemu" run --model tiny --weights "$tmp/nan.st"

# a family's checkpoint as the Hub ships it: shards and their index, read
# back from the directory or the index with the same tokens; a missing
# shard and another family's checkpoint refused by name
printf '{"model_type":"qwen2_moe","vocab_size":97,"hidden_size":32,"intermediate_size":48,"moe_intermediate_size":16,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"num_experts":8,"num_experts_per_tok":2,"shared_expert_intermediate_size":24,"mlp_only_layers":[1],"torch_dtype":"bfloat16"}' >"$tmp/qwen.json"
"$moemu" run --model "$tmp/qwen.json" --decode 3 --json "$tmp/q1.json" \
    --dump-weights "$tmp/qck" --shard-size 20KB >/dev/null 2>&1
nshards=$(ls "$tmp/qck" | grep -c -- '-of-')
if [ "$nshards" -gt 2 ] && [ -f "$tmp/qck/model.safetensors.index.json" ]; then ok; else
    bad "--shard-size 20KB wrote $nshards shards: $(ls "$tmp/qck")"; fi
for src in "$tmp/qck" "$tmp/qck/model.safetensors.index.json"; do
    "$moemu" run --model "$tmp/qwen.json" --decode 3 --weights "$src" --json "$tmp/q2.json" \
        >/dev/null 2>&1
    if [ -s "$tmp/q1.json" ] && cmp -s "$tmp/q1.json" "$tmp/q2.json"; then ok; else
        bad "tokens from the checkpoint $src differ from the generated weights'"; fi
done
expect 2 "--shard-size sizes the shards of --dump-weights" \
    "$moemu" run --model tiny --shard-size 1GB
expect 2 "a lowercase b means bits" \
    "$moemu" run --model tiny --dump-weights "$tmp/x" --shard-size 5gb
mv "$tmp/qck/model-00002-of-0000$nshards.safetensors" "$tmp/gone.st"
expect 2 "model-00002-of-0000$nshards.safetensors" \
    "$moemu" run --model "$tmp/qwen.json" --weights "$tmp/qck"
mv "$tmp/gone.st" "$tmp/qck/model-00002-of-0000$nshards.safetensors"
sed 's/"qwen2_moe"/"olmoe"/' "$tmp/qwen.json" >"$tmp/olmoe.json"
expect 2 "tensors the model does not have: 'model.layers.0.self_attn.q_proj.bias'" \
    "$moemu" run --model "$tmp/olmoe.json" --weights "$tmp/qck"

# hardware outside physical ranges: refused with the range, never inf in a report
printf '{"device": {"peak_flops": 5e-324, "mfu": 0.5, "mem_bw": 2e12, "bw_util": 0.9, "mem_capacity": 96e9, "launch_s": 0}, "topology": {"devices_per_node": 4, "intra_bw": 1e11, "intra_lat": 1e-6, "inter_bw": 1e10, "inter_lat": 1e-5}}' >"$tmp/hw.json"
expect 2 "device.peak_flops must be in [1e9, 1e18] FLOP/s (got 4.94066e-324)" \
    "$moemu" run --model tiny --strategy tp2 --hw "$tmp/hw.json"

# an output that cannot be written leaves nothing behind
expect 2 "--json $tmp/no/dir/x.json: directory $tmp/no/dir does not exist" \
    "$moemu" run --model tiny --decode 1 --json "$tmp/no/dir/x.json"
[ ! -e "$tmp/no" ] && ok || bad "a partial output was left"

# ---- outputs on hostile paths
# seconds since the epoch, with a fraction (GNU date's %N)
now() { date +%s.%N; }
# elapsed T0 T1 LIMIT: whether T1 - T0 < LIMIT seconds
within() { awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN { exit !(b - a < l) }'; }
mkdir "$tmp/o"
# the null and full devices: private copies where root can make them, so
# that a moemu that replaces them (as it once did) spoils no /dev
devnull=/dev/null devfull=/dev/full
if [ "$(id -u)" -eq 0 ] && mknod -m 666 "$tmp/null" c 1 3 2>/dev/null &&
    mknod -m 666 "$tmp/full" c 1 7 2>/dev/null && : >"$tmp/null" 2>/dev/null &&
    ! { echo x >"$tmp/full"; } 2>/dev/null; then
    devnull=$tmp/null devfull=$tmp/full
fi
# a device is written, never replaced: it stays a character device
expect 0 "GFLOP/s" "$moemu" run --model tiny --decode 1 --json "$devnull" --csv "$devnull" \
    --strategy tp2
[ -c "$devnull" ] && ok || bad "$devnull is no longer a character device"
# a full device fails with its reason, and the other outputs are not written
expect 2 "cannot write $devfull: No space left on device (ENOSPC)" \
    "$moemu" run --model tiny --decode 1 --json "$devfull" --dump-logits "$tmp/o/l.st"
[ ! -e "$tmp/o/l.st" ] && [ -z "$(ls "$tmp/o")" ] && ok ||
    bad "a failed run left outputs: $(ls "$tmp/o")"
# a symlink is followed: its target gets the content, the link stays a link
echo old >"$tmp/o/real.json"
ln -s real.json "$tmp/o/link.json"
expect 0 "GFLOP/s" "$moemu" run --model tiny --decode 1 --json "$tmp/o/link.json"
[ -L "$tmp/o/link.json" ] && grep -q '"generated"' "$tmp/o/real.json" && ok ||
    bad "symlink: $(ls -l "$tmp/o"; cat "$tmp/o/real.json")"
# outputs that would overwrite an input, or each other: refused before the run
cp "$tmp/qwen.json" "$tmp/o/cfg.json"
expect 2 "--json $tmp/o/cfg.json: is the input --model $tmp/o/cfg.json" \
    "$moemu" run --model "$tmp/o/cfg.json" --json "$tmp/o/cfg.json"
cmp -s "$tmp/qwen.json" "$tmp/o/cfg.json" && ok || bad "the config was overwritten"
expect 2 "--json $tmp/o/link.json: is the input --tokens $tmp/o/real.json" \
    "$moemu" run --model tiny --tokens "$tmp/o/real.json" --json "$tmp/o/link.json"
expect 2 "--dump-logits $tmp/qck/model-00001-of-0000$nshards.safetensors: is a file of the input --weights $tmp/qck" \
    "$moemu" run --model "$tmp/qwen.json" --weights "$tmp/qck" \
    --dump-logits "$tmp/qck/model-00001-of-0000$nshards.safetensors"
expect 2 "--csv $tmp/o/x and --trace $tmp/o/../o/x: the same file" "$moemu" run --model tiny \
    --strategy tp2 --csv "$tmp/o/x" --trace "$tmp/o/../o/x"
# every problem at once, and before any work: a model of 30B parameters
# would take minutes to generate
t0=$(now)
expect 2 "2 problems with the outputs, nothing was run:
  --json $tmp/o/real.json and --csv $tmp/o/link.json: the same file
  --trace $tmp/nodir/t.json: directory $tmp/nodir does not exist" \
    "$moemu" run --model moe-30b-plan --strategy tp2 --json "$tmp/o/real.json" \
    --csv "$tmp/o/link.json" --trace "$tmp/nodir/t.json"
within "$t0" "$(now)" 1 && ok || bad "the output paths were not checked first"
expect 2 "--json $tmp/o: is a directory" "$moemu" info --model tiny --json "$tmp/o"
expect 2 "--plot $tmp/nodir/p.svg: directory $tmp/nodir does not exist" \
    "$moemu" sweep --model tiny --devices 2 --plot "$tmp/nodir/p.svg"
# a run whose outputs all succeed replaces them all; one that fails keeps
# the previous ones
expect 2 "No space left on device" "$moemu" run --model tiny --decode 1 --strategy tp2 \
    --json "$tmp/o/link.json" --csv "$devfull"
grep -q '"generated"' "$tmp/o/real.json" && ok || bad "a failed run replaced an output"

# SIGTERM in the middle of a run (paced to last seconds): it ends within a
# second as killed by the signal (143), its staged outputs removed
mkdir "$tmp/sig"
"$moemu" run --model tiny --strategy tp2 --batch 1 --prompt-len 4 --decode 32 --pace 1000 \
    --dump-weights "$tmp/sig/w.safetensors" --json "$tmp/sig/a.json" >/dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 400 ] && ! ls "$tmp/sig" | grep -q '\.tmp\.'; do sleep 0.05; i=$((i + 1)); done
ls "$tmp/sig" | grep -q '\.tmp\.' && ok || bad "no staged weights while the run ran"
t0=$(now)
kill -TERM $pid
wait $pid 2>/dev/null
rc=$?
t1=$(now)
[ $rc -eq 143 ] && ok || bad "SIGTERM: exit status $rc, expected 143"
within "$t0" "$t1" 1 && ok || bad "SIGTERM: the run took $t0 .. $t1 to end"
[ -z "$(ls "$tmp/sig")" ] && ok || bad "SIGTERM left files: $(ls "$tmp/sig")"
echo "SIGTERM to exit: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f s", b - a }')"

# moemu sweep: its errors, then a small sweep with its outputs
expect 0 "--memory-headroom F" "$moemu" sweep --help
expect 2 "error: --objective 'fast': expected throughput, ttft or latency" \
    "$moemu" sweep --model tiny --devices 2 --objective fast
expect 2 "--memory-headroom '1': expected a number in [0, 1)" \
    "$moemu" sweep --model tiny --devices 2 --memory-headroom 1
expect 2 "--memory-headroom 'lots': expected a number" \
    "$moemu" sweep --model tiny --devices 2 --memory-headroom lots
expect 2 "--devices is required" "$moemu" sweep --model tiny
expect 2 "--plot $tmp/p.pdf: expected a file name ending in .svg or .png" \
    "$moemu" sweep --model tiny --devices 2 --plot "$tmp/p.pdf"
expect 2 "--sp 'maybe': expected both, auto, off or on" "$moemu" sweep --model tiny --devices 2 \
    --sp maybe
expect 0 "on the Pareto front" "$moemu" sweep --model tiny --devices 2 --batch 2 \
    --prompt-len 8 --decode 2 --csv "$tmp/s.csv" --json "$tmp/s.json"
[ "$(wc -l <"$tmp/s.csv")" -gt 2 ] && ok || bad "sweep CSV: $(cat "$tmp/s.csv")"
grep -q '"do_not_fit": 0' "$tmp/s.json" && ok || bad "sweep JSON lacks its counts"
expect 0 "dp2-ep2 x1" "$moemu" sweep --model tiny --devices 2 --batch 2 --prompt-len 8 \
    --decode 2 --objective ttft --ttft-max 10 --memory-headroom 0.5
# a sweep too large to run is refused at once, with its size and the bound
# (it used to run two candidates of a million devices for minutes)
t0=$(now)
expect 2 "--max-device-runs 1048576: 2 candidates (strategy x micro-batches) of 1048573 devices each make 2097146 device runs" \
    "$moemu" sweep --devices 1048573
t1=$(now)
within "$t0" "$t1" 1 && ok || bad "the sweep bound took $t0 .. $t1"
echo "sweep --devices 1048573 refused in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f s", b - a }')"
expect 2 "--max-device-runs 100: 56 candidates" "$moemu" sweep --model tiny --devices 4 \
    --max-device-runs 100

# killing a sweep kills its workers at once, though each candidate takes
# seconds: SIGTERM (its handler) and SIGKILL (no handler at all; the
# kernel ends the workers with their parent)
# (cat, not awk, reads /proc: a process that ends meanwhile stops mawk)
children() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$1" '$4 == p { print $1 }'; }
alive() { [ -r "/proc/$1/stat" ] && ! awk '$3 == "Z" { exit 0 } { exit 1 }' "/proc/$1/stat"; }
for sig in TERM KILL; do
    "$moemu" sweep --model moe-10b-plan --devices 16 --jobs 2 --batch 128 --prompt-len 1024 \
        --decode 128 >/dev/null 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 600 ] && [ "$(children $pid | wc -l)" -lt 2 ] && alive $pid; do
        sleep 0.1
        i=$((i + 1))
    done
    workers=$(children $pid)
    [ "$(echo $workers | wc -w)" -eq 2 ] && ok ||
        bad "SIG$sig: sweep $pid's workers after $i tries: '$workers' ($(ps -o pid,ppid,stat,etime,args -p $pid 2>&1 | tail -1))"
    kill -$sig $pid
    wait $pid 2>/dev/null
    rc=$?
    want=143
    [ $sig = KILL ] && want=137
    [ $rc -eq $want ] && ok || bad "SIG$sig to a sweep: exit status $rc, expected $want"
    i=0
    for w in $workers; do
        while [ $i -lt 40 ] && alive "$w"; do sleep 0.05; i=$((i + 1)); done
        alive "$w" && bad "SIG$sig: sweep worker $w outlived its parent" || ok
    done
done
# on a terminal, progress every second, also while the first candidates
# run (each takes seconds here)
if command -v script >/dev/null 2>&1; then
    out=$(script -qec "timeout -s TERM 5 $moemu sweep --model moe-10b-plan --devices 16 \
        --jobs 1 --batch 128 --prompt-len 1024" /dev/null 2>&1)
    printf "%s" "$out" | grep -q "sweep [0-9]*/465, [0-9]* s" && ok ||
        bad "no progress on a tty: $out"
else
    echo "note: no script(1), the progress on a terminal is not tested"
fi

# emulated devices: check, report, dry runs, traces, pacing, layout
expect 0 "verdict                PASS" "$moemu" check --model tiny --strategy tp2-ep2 \
    --batch 2 --prompt-lens 5,9 --decode 3 --json "$tmp/check.json"
# 14 prompt positions and 2 x 3 generated tokens of 97 logits, no padding
grep -q '"logits_compared": 1940,' "$tmp/check.json" && grep -q '"nonfinite_side": null' \
    "$tmp/check.json" && grep -q '"verdict": "PASS"' "$tmp/check.json" && ok ||
    bad "check JSON: $(tr -d '\n' <"$tmp/check.json" | head -c 600)"
expect 2 "--strategy is required" "$moemu" check --model tiny
expect 2 "moemu check compares real math" "$moemu" check --model tiny --strategy tp2 --math skip
expect 2 "--rtol belongs to moemu check" "$moemu" run --model tiny --rtol 1e-3
expect 2 "EP=8 needs 8 devices in a pipeline stage" "$moemu" run --model tiny --strategy tp2-ep8
expect 2 "PP*DP*CP*TP = 1*1*1*2 = 2 devices, but 4 are given" \
    "$moemu" run --model tiny --strategy tp2 --devices 4
expect 2 "need --strategy" "$moemu" run --model tiny --micro-batches 2
expect 2 "--routing chooses a dry run's router" "$moemu" run --model tiny --strategy tp2 \
    --routing uniform
expect 2 "error: --routing 'bogus': expected uniform, zipf:S or replay:FILE" "$moemu" run \
    --model tiny --strategy tp2 --math skip --routing bogus
expect 2 "--math 'maybe'" "$moemu" run --model tiny --math maybe
expect 2 "has no weights or logits" "$moemu" run --model tiny --math skip --dump-logits "$tmp/x"
expect 0 "pipeline bubble per stage" "$moemu" run --model tiny --strategy pp2-tp2-ep2 \
    --micro-batches 2 --batch 3 --prompt-len 6 --decode 3 --record-routing "$tmp/r.st" \
    --trace "$tmp/t.json" --csv "$tmp/d.csv" --json "$tmp/real.json"
grep -q '"traceEvents"' "$tmp/t.json" && ok || bad "no trace events"
[ "$(wc -l <"$tmp/d.csv")" -eq 5 ] && ok || bad "CSV of 4 devices: $(cat "$tmp/d.csv")"
expect 0 "dry run (--math skip)" "$moemu" run --model tiny --strategy pp2-tp2-ep2 \
    --micro-batches 2 --batch 3 --prompt-len 6 --decode 3 --math skip \
    --routing "replay:$tmp/r.st" --json "$tmp/dry.json"
real=$(tr -d ' \n' <"$tmp/real.json" | sed 's/.*"report"://')
dry=$(tr -d ' \n' <"$tmp/dry.json" | sed 's/.*"report"://')
[ "$real" = "$dry" ] && ok || bad "a replayed dry run's report differs from the real run's"
expect 2 "replay:$tmp/w.st" "$moemu" run --model tiny --strategy tp2 --math skip \
    --routing "replay:$tmp/w.st"
expect 0 "time to first token" "$moemu" run --model tiny --strategy tp2 --batch 1 \
    --prompt-len 4 --decode 2 --pace 1
expect 0 "scaling: one device" "$moemu" run --model moe-10b-plan --math skip --batch 8 \
    --prompt-len 64 --decode 2 --routing zipf:1.2
expect 2 "TP=3 does not divide the 4 query heads" "$moemu" layout --model tiny --strategy tp3
for cmd in run layout; do
    expect 2 "4 devices do not fit on 1 node of 2 devices" "$moemu" $cmd --model tiny \
        --strategy tp4 --nodes 1 --devices-per-node 2
done
expect 2 "4 devices do not fit on 1 node of 2 devices" "$moemu" sweep --model tiny \
    --devices 4 --nodes 1 --devices-per-node 2

# FP8 storage: the linear layers' weights in e4m3 with a 4-byte scale per
# 128 x 128 block, the embedding, lm_head, norms and router in bf16
q3="${MOEMU_SRCDIR:-.}/examples/models/Qwen3-30B-A3B.json"
"$moemu" info --model "$q3" --weight-dtype fp8 >"$tmp/fp8.txt" 2>&1 || bad "info fp8"
want=$(awk '$1 == "parameters" { t = $2 } $1 == "embedding" || $1 == "lm_head" ||
    $1 == "norms" || $1 == "router" { k += $2 }
    END { printf "%.0f", (t - k) * (1 + 4 / 16384) + 2 * k }' "$tmp/fp8.txt")
grep -q "^weight bytes *$want  (.* GB in fp8 e4m3 with a scale per 128 x 128 block" \
    "$tmp/fp8.txt" && ok || bad "fp8 weight bytes, expected $want: $(cat "$tmp/fp8.txt")"
expect 2 "FP8 is a storage format of the weights: --weight-dtype fp8" sh -c \
    "echo '{\"dtype\": \"fp8\"}' >$tmp/f8.json && $moemu info --model $tmp/f8.json"
# generated FP8 weights dumped in F8_E4M3 with their scales load back exactly
expect 0 "weights in fp8 e4m3" "$moemu" run --model tiny --weight-dtype fp8 --decode 3 \
    --dump-weights "$tmp/f8w" --shard-size 300KB --dump-logits "$tmp/f8a.st"
expect 0 "prefill" "$moemu" run --model tiny --weight-dtype fp8 --decode 3 \
    --weights "$tmp/f8w" --dump-logits "$tmp/f8b.st"
cmp -s "$tmp/f8a.st" "$tmp/f8b.st" && ok || bad "FP8 weights did not load back exactly"
grep -q F8_E4M3 "$tmp"/f8w/model-00001-of-0000*.safetensors && ok || bad "no F8_E4M3 shard"
# the MoE dispatch counted in FP8: the same tokens, fewer all-to-all bytes
for x in dtype fp8; do
    "$moemu" run --model tiny --strategy dp2-ep2 --decode 3 --dispatch-dtype $x \
        --json "$tmp/disp_$x.json" >"$tmp/disp_$x.txt" 2>&1 || bad "dispatch $x"
done
tok() { tr -d ' \n' <"$1" | sed 's/.*"generated":\(\[\[[^"]*\]\]\).*/\1/'; }
a2a() { tr -d ' \n' <"$1" | sed 's/.*"collective":"all-to-all",[^}]*"bytes":\([0-9.e+]*\).*/\1/'; }
[ "$(tok "$tmp/disp_dtype.json")" = "$(tok "$tmp/disp_fp8.json")" ] && ok ||
    bad "an FP8 dispatch changed the tokens"
awk -v a="$(a2a "$tmp/disp_fp8.json")" -v b="$(a2a "$tmp/disp_dtype.json")" \
    'BEGIN { exit !(a > 0 && a < 0.8 * b) }' && ok || bad "FP8 dispatch bytes not fewer"
grep -q "MoE dispatch counted in fp8" "$tmp/disp_fp8.txt" && ok || bad "fp8 dispatch not said"
# FP8 products and KV cache: the same tokens, half the cache and, where the
# products are large (a long prefill), a faster run; refused on a card
# without FP8 and for weights not stored in FP8
mx="${MOEMU_SRCDIR:-.}/examples/models/Mixtral-8x7B-v0.1.json"
for x in "dtype" "fp8 --kv-dtype fp8"; do
    "$moemu" run --model tiny --strategy tp2 --decode 3 --hw h100-sxm --weight-dtype fp8 \
        --compute-dtype $x --json "$tmp/c8_${x%% *}.json" >"$tmp/c8_${x%% *}.txt" 2>&1 ||
        bad "compute $x"
    "$moemu" run --model "$mx" --strategy tp2-etp2 --hw h100-sxm --math skip --batch 4 \
        --prompt-len 2048 --decode 1 --compute-dtype $x --json "$tmp/m8_${x%% *}.json" \
        >/dev/null 2>&1 || bad "Mixtral compute $x"
done
e2e() { tr -d ' \n' <"$1" | grep -o '"e2e_s":[0-9.e+-]*' | head -1 | cut -d: -f2; }
kvb() { tr -d ' \n' <"$1" | grep -o '"kv-cache":[0-9.e+-]*' | head -1 | cut -d: -f2; }
[ "$(tok "$tmp/c8_dtype.json")" = "$(tok "$tmp/c8_fp8.json")" ] && ok ||
    bad "FP8 products changed the tokens"
awk -v a="$(e2e "$tmp/m8_fp8.json")" -v b="$(e2e "$tmp/m8_dtype.json")" \
    'BEGIN { exit !(a > 0 && a < b) }' && ok || bad "FP8 products not faster"
awk -v a="$(kvb "$tmp/c8_fp8.json")" -v b="$(kvb "$tmp/c8_dtype.json")" \
    'BEGIN { exit !(a > 0 && a == b / 2) }' && ok || bad "FP8 KV cache not half"
grep -q "products of the fp8 weights in fp8 at 1979 TFLOP/s" "$tmp/c8_fp8.txt" && ok ||
    bad "FP8 products not said"
expect 2 "a100-80g has no FP8 Tensor Cores" "$moemu" run --model tiny --hw a100-80g \
    --compute-dtype fp8 --math skip
expect 2 "FP8 computation needs the weights stored in FP8" "$moemu" run --model tiny \
    --hw h100-sxm --weight-dtype dtype --compute-dtype fp8 --math skip
# what TP cannot split of the KV cache is said: MLA's latent, few kv heads
expect 0 "kv cache the MLA latent, 576 values a token and layer, held whole by each of the 2 ranks" \
    "$moemu" run --model "${MOEMU_SRCDIR:-.}/examples/models/DeepSeek-V2-Lite.json" \
    --strategy tp2 --math skip --batch 1 --prompt-len 8 --decode 2 --hw h800
expect 0 "kv cache 2 key/value heads over 4 TP ranks: each held by 2 ranks" \
    "$moemu" run --model tiny --strategy tp4 --batch 1 --prompt-len 4 --decode 2

# gpt-oss under CP: a sliding layer's prefill sends only the keys another
# rank's window needs (3 of each 16-row chunk here); the same model with
# full layers sends every key
oss='"model_type":"gpt_oss","vocab_size":50,"hidden_size":32,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"num_local_experts":4,"num_experts_per_tok":2,"sliding_window":4,"max_position_embeddings":256,"torch_dtype":"float32"'
printf '{%s,"layer_types":["sliding_attention","sliding_attention"]}' "$oss" >"$tmp/oss_w.json"
printf '{%s,"layer_types":["full_attention","full_attention"]}' "$oss" >"$tmp/oss_f.json"
for m in w f; do
    "$moemu" check --model "$tmp/oss_$m.json" --strategy cp4 --batch 2 --prompt-len 64 --decode 1 \
        --json "$tmp/oss_$m.out" >"$tmp/oss_$m.txt" 2>&1 || bad "gpt-oss cp4 ($m): $(cat "$tmp/oss_$m.txt")"
done
gat() { tr -d ' \n' <"$1" | sed 's/.*"collective":"all-gather",[^}]*"bytes":\([0-9.e+]*\).*/\1/'; }
awk -v w="$(gat "$tmp/oss_w.out")" -v f="$(gat "$tmp/oss_f.out")" \
    'BEGIN { exit !(w > 0 && w < 0.5 * f) }' && ok ||
    bad "a sliding layer's CP prefill gathered $(gat "$tmp/oss_w.out") bytes, full layers $(gat "$tmp/oss_f.out")"

# warnings: keys not read, with the key they may misspell; implausible
# values and figures by name; --strict makes each an error
base='"vocab_size":50,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":4'
printf '{%s,"num_experts_per_tok":2,"rope_thetaa":1e4}' "$base" >"$tmp/w1.json"
expect 0 "1 config key that moemu does not read (ignored): 'rope_thetaa' (did you mean 'rope_theta'?)" \
    "$moemu" info --model "$tmp/w1.json"
expect 2 "(an error under --strict)" "$moemu" info --strict --model "$tmp/w1.json"
printf '{%s,"num_expert_per_tok":2}' "$base" >"$tmp/w2.json"
expect 2 "'num_expert_per_tok' (did you mean 'num_experts_per_tok'?)" \
    "$moemu" info --model "$tmp/w2.json"
printf '{%s,"num_experts_per_tok":2,"rms_norm_eps":1e30,"capacity_factor":1e-300}' "$base" >"$tmp/w3.json"
expect 0 "implausible values, read as given: rms_norm_eps 1e+30 (expected 1e-12 to 0.01), capacity_factor 1e-300 (expected 0.1 to 100)" \
    "$moemu" info --model "$tmp/w3.json"
sed 's/"mem_capacity": *[0-9.e]*/"mem_capacity": 1e6/' "${MOEMU_SRCDIR:-.}/hw/h800.json" >"$tmp/hw1m.json"
expect 0 "implausible figure, used as given: device.mem_capacity 1e+06 (expected 1e+09 to 1e+13)" \
    "$moemu" layout --model tiny --strategy tp2 --hw "$tmp/hw1m.json"
expect 2 "device.mem_capacity 1e+06 (expected 1e+09 to 1e+13) (an error under --strict)" \
    "$moemu" layout --strict --model tiny --strategy tp2 --hw "$tmp/hw1m.json"
[ "$("$moemu" info --model tiny --strict 2>&1 >/dev/null)" = "" ] && ok ||
    bad "a built-in model warns under --strict"
# hostile sizes: each rule checked from the arguments before tokens,
# weights or threads are made (each of these took minutes and gigabytes,
# or hung, before it said no)
expect 2 "but the model's max_position_embeddings is 4096" timeout 20 "$moemu" run \
    --model tiny --prompt-len-range 1:2147483647
# under ulimit -v, where moemu starts at all (a sanitizer's shadow does not
# fit 3 GB of address space)
if sh -c "ulimit -v 3000000 && exec '$moemu' --help" >/dev/null 2>&1; then
    expect 2 "a run on 1024 devices needs" timeout 20 sh -c \
        "ulimit -v 3000000 && exec '$moemu' run --model tiny --strategy dp1024 --batch 1024 --math skip"
    # OpenBLAS's buffers counted in the address space: refused before the
    # weights, where the device threads spun for ever in its allocator
    expect 2 "BLAS buffers" timeout 20 sh -c \
        "ulimit -v 1800000 && exec '$moemu' run --strategy dp2-tp2-ep4 --batch 4 --decode 2"
    expect 2 "of address space" timeout 20 sh -c \
        "ulimit -v 1800000 && exec '$moemu' run --strategy dp2-tp2-ep4 --batch 4 --decode 2"
    # the weights held in their dtype: a real-math run's peak resident
    # memory within 1.2x the one device's (its fp16 weights, activations
    # and KV cache) plus 256 MB (the widening buffers, OpenBLAS's, the
    # program); 1.78 GB against 905 MB when the host held them in fp32
    out=$("$moemu" run --batch 1 --prompt-len 1 --decode 1 2>&1)
    dev_mb=$(printf "%s" "$out" | sed -n 's/.*peak memory \([0-9.]*\) MB.*/\1/p')
    host_gb=$(printf "%s" "$out" | sed -n 's/^host *\([0-9.]*\) GB resident.*/\1/p')
    if [ -n "$dev_mb" ] && [ -n "$host_gb" ] &&
        awk -v h="$host_gb" -v d="$dev_mb" 'BEGIN { exit !(h * 1000 <= 1.2 * d + 256) }'; then
        ok
    else
        bad "peak resident ${host_gb:-?} GB against one device's ${dev_mb:-?} MB: $out"
    fi
else
    echo "skipped: the checks under ulimit -v and of resident memory (a sanitizer build?)"
fi
# more devices than OpenBLAS serves at once: the same tokens and virtual
# times whether one or all the callers it allows multiply at once
"$moemu" run --model tiny --strategy dp200 --batch 200 --prompt-len 8 --decode 2 \
    --json "$tmp/g64.json" >"$tmp/g64.out" 2>&1 && ok || bad "dp200: $(tail -3 "$tmp/g64.out")"
MOEMU_BLAS_CALLERS=1 "$moemu" run --model tiny --strategy dp200 --batch 200 --prompt-len 8 \
    --decode 2 --json "$tmp/g1.json" >/dev/null 2>&1
cmp -s "$tmp/g64.json" "$tmp/g1.json" && ok || bad "dp200 depends on the BLAS callers"
grep -q "NUM_THREADS exceeded" "$tmp/g64.out" && bad "OpenBLAS overflowed: $(head -3 "$tmp/g64.out")" || ok
# a dry run keeps no record as large as its tokens (the reference routes
# from the same source) and maps no weights: the same report either way
expect 0 "scaling: one device" "$moemu" run --model moe-10b-plan --strategy dp2-ep2 \
    --math skip --batch 4 --prompt-len 32 --decode 2 --json "$tmp/norec.json"
expect 0 "scaling: one device" "$moemu" run --model moe-10b-plan --strategy dp2-ep2 \
    --math skip --batch 4 --prompt-len 32 --decode 2 --json "$tmp/rec.json" \
    --record-routing "$tmp/rec.st"
cmp -s "$tmp/norec.json" "$tmp/rec.json" && ok || bad "the dry run's reference depends on a record"

# moemu plan: a tiny plan whose claims do not all hold exits 1
printf '{"model": "tiny", "strategy": "tp2", "devices": 2, "workload": {"batch": 2, "prompt_len": 8, "decode": 2}, "claims": [{"metric": "total_parameters", "value": 654016}, {"metric": "ttft_s", "value": 100}]}' >"$tmp/plan.json"
expect 1 "off by a factor" "$moemu" plan "$tmp/plan.json" --no-check --json "$tmp/plan.out"
grep -q '"verdict": "holds"' "$tmp/plan.out" && ok || bad "plan JSON lacks a claim that holds"
expect 2 "give one plan file" "$moemu" plan
# validate, calibrate and engine profiles
expect 2 "give one measurements CSV" "$moemu" validate
expect 2 "give one measurements CSV and --hw" "$moemu" calibrate "$tmp/none.csv"
expect 2 "cannot open" "$moemu" validate "$tmp/none.csv"
expect 2 "the profile has no figures for card 'h200' (fit them: moemu calibrate" \
    "$moemu" run --model tiny --strategy tp2 --hw h200 --engine vllm --math skip
expect 2 "unknown engine profile 'nosuch' (built in: vllm, trtllm" \
    "$moemu" run --model tiny --strategy tp2 --hw a100-80g --engine nosuch --math skip
expect 0 "of a100-80g+trtllm" \
    "$moemu" run --model tiny --strategy tp2 --hw a100-80g --engine trtllm --math skip
# overlap: a mode that is none, from the flag and from a profile; the
# shared experts beside the dispatch make a second stream in the trace
expect 2 "--overlap: overlap 'bogus' is none of: none, shared-experts, two-batch" \
    "$moemu" run --model tiny --overlap bogus --math skip
printf '{"name":"x","overlap":3,"cards":{"card-400tf-64gb":{"mfu":0.5,"bw_util":0.5,"launch_s":0}}}' >"$tmp/ov.json"
expect 2 "key overlap: overlap '(not a string)' is none of: none, shared-experts, two-batch" \
    "$moemu" run --model tiny --engine "$tmp/ov.json" --math skip
expect 0 "communication not overlapped" "$moemu" run \
    --model "${MOEMU_SRCDIR:-.}/examples/models/Qwen1.5-MoE-A2.7B.json" --strategy dp2-ep2 --math skip \
    --batch 2 --prompt-len 16 --decode 2 --overlap shared-experts --trace "$tmp/ov.trace"
grep -q '"device 1 comm"' "$tmp/ov.trace" && ok || bad "the overlap trace lacks the comm stream"
# two-batch overlap: both of its conditions refused at once; a dry run
# whose lanes hide most of the dispatch and combine, the same twice
expect 2 "in pairs, and --micro-batches is 1 (give 2 or more); it runs on one" "$moemu" run --model tiny --strategy pp2-dp2-ep2 \
    --overlap two-batch --math skip
expect 2 "and the strategy has PP = 2" "$moemu" run --model tiny --strategy pp2-dp2-ep2 \
    --overlap two-batch --math skip
tbo() {
    "$moemu" run --model "${MOEMU_SRCDIR:-.}/examples/models/DeepSeek-V2-Lite.json" --math skip \
        --strategy dp4-ep4 --hw h800 --batch 8 --prompt-len 64 --decode 3 --micro-batches 2 "$@" |
        grep -E 'end to end|beside kernels'
}
tbo_a=$(tbo --overlap two-batch) tbo_b=$(tbo --overlap two-batch) tbo_none=$(tbo)
if [ "$tbo_a" != "$tbo_b" ]; then bad "two-batch overlap not deterministic: $tbo_a / $tbo_b"
elif ! printf '%s' "$tbo_a" | grep -q 'beside kernels *-'; then bad "nothing beside kernels: $tbo_a"
elif [ "$tbo_a" = "$tbo_none" ]; then bad "two-batch overlap changed nothing"
else ok; fi
# fused projections: fewer kernels, the same tokens
kern() {
    "$moemu" run --model tiny --strategy dp2-ep2 --batch 2 --prompt-len 8 --decode 3 \
        --kernels "$1" --json "$tmp/k$1.json" | grep 'end to end'
}
kern_s=$(kern separate) kern_f=$(kern fused)
tok_s=$(tok "$tmp/kseparate.json") tok_f=$(tok "$tmp/kfused.json")
if [ -z "$tok_s" ] || [ "$tok_s" != "$tok_f" ]; then bad "fused kernels moved the tokens: $tok_s / $tok_f"
elif [ "$kern_s" = "$kern_f" ]; then bad "fused kernels took the same time: $kern_s"
else ok; fi
expect 2 "--kernels: kernels 'x' is none of: separate, fused" \
    "$moemu" run --model tiny --kernels x --math skip
expect 2 "--dispatcher: dispatcher 'x' is none of: all-to-all, all-gather, deepep, deepep-ll, deepep-auto" \
    "$moemu" run --model tiny --dispatcher x --math skip
# DeepEP's low-latency mode sends the counts in band: no all-to-all of
# their own (the all-to-all dispatcher's dispatch is 2); deepep-auto is it
# in decode only
ll() { "$moemu" run --model tiny --strategy dp2-ep2 --batch 2 --prompt-len 8 --decode 2 \
    --math skip --dispatcher "$@"; }
expect 0 "prefill and decode: all-to-all 2 (dispatch 1, combine 1)" ll deepep-ll
expect 0 "decode:  all-to-all 2 (dispatch 1, combine 1)" ll deepep-auto
expect 0 "prefill: all-to-all 4 (dispatch 3, combine 1)" ll deepep-auto
# and holds DeepEP's buffer, as LowLatencyLayout (csrc/legacy/config.hpp)
# sizes it: tiny (hidden 64, 8 experts, fp16), 8 rows a rank; a dispatch
# message of 16 + max(2 x 64, 64 + 4) bytes, a combine one of 4 + 2 x 64;
# send max(8 x dispatch, 8 x 8 x combine), receive 8 x 8 x max of both,
# 128 of signals, each twice
dmsg=$((16 + 2 * 64)) cmsg=$((4 + 2 * 64))
send=$((8 * dmsg > 64 * cmsg ? 8 * dmsg : 64 * cmsg))
want_ll=$((2 * (send + 64 * (dmsg > cmsg ? dmsg : cmsg) + 128)))
ll deepep-ll --json "$tmp/ll.json" >/dev/null
got_ll=$(tr -d ' \n' <"$tmp/ll.json" | sed 's/.*"comm-buffers":\([0-9.]*\).*/\1/')
if [ "${got_ll%.0}" = "$want_ll" ]; then ok; else bad "deepep-ll buffer: $got_ll bytes, DeepEP's $want_ll"; fi
expect 0 "all-gather 4 (dispatch 4)" "$moemu" run --model tiny --strategy dp2-ep2 \
    --dispatcher all-gather --math skip --batch 2 --prompt-len 8 --decode 2
expect 2 "plan key 'model' is required but missing" sh -c "echo '{}' > $tmp/p0.json && $moemu plan $tmp/p0.json"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
