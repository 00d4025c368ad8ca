#!/bin/sh
# The table "Collectives per layer by strategy" of docs/report.md: dry
# runs of Mixtral-8x7B on a100-80g, batch 8, prompts of 1000, 50 tokens
# generated, each strategy's report (its text line and its JSON
# communication.per_layer_and_pass) as one Markdown row. A strategy whose
# weights do not fit 80 GB runs with --no-memory-limit (marked *): its
# collectives are what they would be. A strategy written S/D runs S with
# --dispatcher D. Run from the build directory:
#   sh docs/collectives.sh > table.md
set -eu
moemu="${MOEMU_BUILDDIR:-.}/moemu"
model="${MOEMU_SRCDIR:-.}/examples/models/Mixtral-8x7B-v0.1.json"
tmp=$(mktemp -d /tmp/moemu-coll-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# What vLLM issues per layer on the same devices (docs/report.md cites
# its code); - where it has no such configuration
engine() {
    case $1 in
    tp2-etp2) echo "TP 2: all-reduce 2 (o_proj; MoE output)" ;;
    tp8-etp8) echo "TP 8: all-reduce 2 (o_proj; MoE output)" ;;
    tp2-ep2) echo "TP 2, expert parallel: all-reduce 2 (o_proj; MoE output)" ;;
    dp2-ep2) echo "DP 2, expert parallel: the EP group's dispatch and combine (its all2all backend's)" ;;
    pp2) echo "PP 2: none (a send and a receive at the stage boundary)" ;;
    *) echo "-" ;;
    esac
}

# mean bytes per call of decode: the rest, then the dispatch and combine
# shellcheck disable=SC2016
bytes='def kib: if . >= 1024 then "\((. / 102.4 | round) / 10) KiB" else "\(. | round) B" end;
  .report.communication.per_layer_and_pass.decode.per_layer | to_entries
  | map(.key as $k | .value
        | (.calls - .dispatch - .combine) as $n
        | [if $n > 0 then ((.bytes_per_call * .calls - .dispatch_bytes_per_call * .dispatch
                           - .combine_bytes_per_call * .combine) / $n | kib) else empty end,
           if .dispatch > 0 then "dispatch \(.dispatch_bytes_per_call | kib)" else empty end,
           if .combine > 0 then "combine \(.combine_bytes_per_call | kib)" else empty end]
        | "\($k) \(join(", "))") | join("; ") | if . == "" then "-" else . end'
outside='.report.communication.per_layer_and_pass.decode.outside_layers_per_pass
  | to_entries | map("\(.key) \(.value)") | join(", ") | if . == "" then "none" else . end'

echo "| strategy | devices | collectives per layer and pass | bytes sent per call, decode (mean) | outside the layers, per decode pass | vLLM, same devices |"
echo "|---|---|---|---|---|---|"
for sd in tp2 tp2-etp2 tp2-ep2 tp2-sp-etp2 dp2-ep2 dp2-ep2/all-gather dp2-ep2/deepep dp2-ep2/deepep-ll \
    dp2-ep2/deepep-auto dp2 pp2 \
    cp2 tp8-etp8 tp2-etp2-ep4-dp4; do
    s=${sd%/*} disp=all-to-all mark="" limit=""
    [ "$s" = "$sd" ] || disp=${sd#*/}
    if ! "$moemu" layout --model "$model" --strategy "$s" --hw a100-80g >/dev/null 2>&1; then
        echo "$s: not a valid strategy for the model" >&2
        exit 1
    fi
    run() {
        # shellcheck disable=SC2086
        "$moemu" run --model "$model" --strategy "$s" --hw a100-80g --math skip --batch 8 \
            --prompt-len 1000 --decode 50 --dispatcher "$disp" --json "$tmp/r.json" $limit \
            >"$tmp/r.txt" 2>&1
    }
    if ! run; then
        mark="*" limit="--no-memory-limit"
        run
    fi
    lines=$(sed -n '/collectives per layer and pass/{n;p;n;p;}' "$tmp/r.txt" |
        grep -E '^    (prefill|decode)' | sed 's/^ *//' | paste -sd ';' - | sed 's/;/; /g; s/  */ /g')
    devices=$(jq '.report.devices' "$tmp/r.json")
    [ "$s" = "$sd" ] && eng=$(engine "$s") || eng=-
    echo "| $sd$mark | $devices | $lines | $(jq -r "$bytes" "$tmp/r.json") |" \
        "$(jq -r "$outside" "$tmp/r.json") | $eng |"
done
