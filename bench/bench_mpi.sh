#!/usr/bin/env bash
# The same 8-device real-math run in one process and under mpirun -np 2,
# side by side (best of 3 wall times each), and the bytes that went over
# MPI against the bytes the strategy's collectives move (docs/mpi.md).
# Needs a build --with-mpi; run from the build directory.
set -eu
moemu=${MOEMU:-./moemu}
tmp=$(mktemp -d /tmp/moemu-bench-mpi-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
python3 - "${MOEMU_SRCDIR:-.}/examples/models/Qwen1.5-MoE-A2.7B.json" >"$tmp/m.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=512, intermediate_size=1024, moe_intermediate_size=1024,
         shared_expert_intermediate_size=1024, num_experts=8, num_experts_per_tok=2,
         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, vocab_size=1000)
print(json.dumps(c))
EOF
job="run --model $tmp/m.json --strategy pp2-dp2-tp2-ep2 --batch 8 --prompt-len 128 --decode 8"
best() { sort -n | head -1; }
wall() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>>"$tmp/err"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
one=$(for _ in 1 2 3; do wall "$moemu" $job; done | best)
two=$(for _ in 1 2 3; do wall mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    "$moemu" $job; done | best)
"$moemu" $job --json "$tmp/r.json" >/dev/null
MOEMU_MPI_STATS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x MOEMU_MPI_STATS \
    "$moemu" $job >/dev/null 2>"$tmp/stats"
mpi=$(awk '/sent/ {d += $5; m += $10} END {print d, m}' "$tmp/stats")
coll=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['report']
print(int(sum(k['bytes'] for k in r['communication']['by_kind'])))" "$tmp/r.json")
printf 'job: moemu %s\n' "$job"
printf '%-34s %10s\n' "one process, wall s (best of 3)" "$one" "mpirun -np 2, wall s (best of 3)" "$two"
printf '%-34s %10.2f\n' "np 2 / one process" "$(echo "$two / $one" | bc -l)"
set -- $mpi
printf '%-34s %10d\n' "MPI data bytes (host fp32)" "$1" "MPI slots and headers bytes" "$2" \
    "collectives' bytes (emulated fp16)" "$coll"
printf '%-34s %10.2f\n' "MPI data / collectives' bytes" "$(echo "$1 / $coll" | bc -l)"
echo "(only pairs of devices in different processes go over MPI: here the processes hold one pipeline stage each, so only stage-to-stage sends cross; host values are fp32, twice the emulated fp16)"
