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
    elif ! printf '%s' "$out" | grep -q -- "$pat"; then
        bad "$*: output lacks '$pat': $out"
    else
        ok
    fi
}

expect 0 "usage: moemu COMMAND" "$moemu" --help
expect 0 "--prompt-len-range" "$moemu" run --help
expect 0 "--model" "$moemu" info --help
expect 2 "unknown command 'frobnicate'" "$moemu" frobnicate
expect 2 "usage" "$moemu"
expect 2 "unknown or incomplete option '--bogus'" "$moemu" run --bogus
expect 2 "unexpected argument 'extra'" "$moemu" run --model tiny extra
expect 2 "--batch '0': expected a whole number" "$moemu" run --model tiny --batch 0
expect 2 "--seed '-3'" "$moemu" run --model tiny --seed -3
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
expect 2 "not a token id in \[0, 97)" "$moemu" run --model tiny --tokens "$tmp/t.json"

# bad weights files: truncated, another model's
head -c 5000 "$tmp/w.st" >"$tmp/trunc.st"
expect 2 "trunc.st" "$moemu" run --model tiny --weights "$tmp/trunc.st"
"$moemu" run --model tiny --decode 1 --dump-weights "$tmp/w2.st" >/dev/null 2>&1
printf '{"vocab_size":97,"hidden_size":32,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":8,"num_experts_per_tok":2}' >"$tmp/other.json"
expect 2 "model.embed_tokens.weight" "$moemu" run --model "$tmp/other.json" --weights "$tmp/w2.st"
expect 2 "nonexistent" "$moemu" run --model tiny --weights "$tmp/nonexistent.st"

# an output that cannot be written leaves nothing behind
expect 2 "cannot write $tmp/no/dir/x.json" "$moemu" run --model tiny --decode 1 --json "$tmp/no/dir/x.json"
[ ! -e "$tmp/no" ] && ok || bad "a partial output was left"

# moemu sweep: its errors, then a small sweep with its outputs
expect 0 "--memory-headroom F" "$moemu" sweep --help
expect 2 "--objective 'fast': expected throughput, ttft or latency" \
    "$moemu" sweep --model tiny --devices 2 --objective fast
expect 2 "--memory-headroom '1': expected a number in \[0, 1)" \
    "$moemu" sweep --model tiny --devices 2 --memory-headroom 1
expect 2 "--memory-headroom 'lots': expected a number" \
    "$moemu" sweep --model tiny --devices 2 --memory-headroom lots
expect 2 "--devices is required" "$moemu" sweep --model tiny
expect 2 "--plot $tmp/p.pdf: expected a file name ending in .svg or .png" \
    "$moemu" sweep --model tiny --devices 2 --plot "$tmp/p.pdf"
expect 2 "--sp 'maybe'" "$moemu" sweep --model tiny --devices 2 --sp maybe
expect 0 "on the Pareto front" "$moemu" sweep --model tiny --devices 2 --batch 2 \
    --prompt-len 8 --decode 2 --csv "$tmp/s.csv" --json "$tmp/s.json"
[ "$(wc -l <"$tmp/s.csv")" -gt 2 ] && ok || bad "sweep CSV: $(cat "$tmp/s.csv")"
grep -q '"do_not_fit": 0' "$tmp/s.json" && ok || bad "sweep JSON lacks its counts"
expect 0 "dp2-ep2 x1" "$moemu" sweep --model tiny --devices 2 --batch 2 --prompt-len 8 \
    --decode 2 --objective ttft --ttft-max 10 --memory-headroom 0.5

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
