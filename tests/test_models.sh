#!/bin/sh
# Real models' parameter counts: `moemu info` on each Hugging Face config in
# examples/models/ must give the total and the active-per-token counts that
# the model's publisher gives, at the precision published, and the exact
# total where the checkpoint's model.safetensors.index.json gives it
# (metadata.total_size / 2 for a bf16 checkpoint). Every check prints what
# it compared. Sources: examples/models/<name>.source. Prints
# "N passed, N failed".
#
# The publishers count active parameters as every distinct tensor a token
# uses, the input embedding included: total minus the unselected routed
# experts (Mixtral 8x7B: 12.88B -> "12.9B"; without the embedding it would
# be 12.75B -> "12.7B"). moemu prints that figure as "as cards count",
# beside its own "active per token" (which leaves the embedding lookup
# out); the check reads the former, and that it is the latter plus the
# embedding matrix when that is a separate tensor (lm_head > 0).
set -u
moemu="${MOEMU_BUILDDIR:-.}/moemu"
dir="${MOEMU_SRCDIR:-.}/examples/models"
tmp=$(mktemp -d /tmp/moemu-models-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# field LABEL FILE: the first number after LABEL at the start of a line of
# `moemu info` (labels: "parameters", "  embedding", "  lm_head",
# "active per token")
field() {
    awk -v l="$1" 'index($0, l) == 1 {
        rest = substr($0, length(l) + 1)
        if (match(rest, /^ +[0-9]+/)) { sub(/^ +/, "", rest); split(rest, a, " "); print a[1]; exit }
    }' "$2"
}

# published NAME WHAT GOT VALUE UNIT MODE: GOT, at the precision UNIT that
# the publisher wrote VALUE in, is VALUE. MODE round: GOT rounded to the
# nearest UNIT; trunc: GOT cut down to a whole number of UNITs (for a
# publisher who truncates; say why where it is used).
published() {
    name=$1 what=$2 got=$3 value=$4 unit=$5 mode=$6
    verdict=$(awk -v g="$got" -v v="$value" -v u="$unit" -v m="$mode" 'BEGIN {
        q = g / u
        n = (m == "trunc") ? int(q) : int(q + 0.5)
        want = int(v / u + 0.5)
        printf "%s %.6gB", (n == want ? "same" : "differs"), n * u / 1e9
    }')
    shown=${verdict#* }
    case "$verdict" in
    same*) ok "$name $what: $got -> $shown ($mode to $unit) = published $value" ;;
    *) bad "$name $what: $got -> $shown ($mode to $unit), published $value" ;;
    esac
}

# exact NAME WHAT GOT WANT SOURCE: GOT is exactly WANT
exact() {
    if [ "$3" = "$4" ]; then
        ok "$1 $2: $3 = $4 ($5)"
    else
        bad "$1 $2: $3, expected exactly $4 ($5)"
    fi
}

# model NAME TOTAL TOTAL_UNIT TOTAL_MODE ACTIVE ACTIVE_UNIT ACTIVE_MODE EXACT_TOTAL [WHICH]
# (EXACT_TOTAL "-" where no checkpoint index gave it; WHICH "cards", the
# default, compares the published active figure with "as cards count",
# "own" with "active per token": DeepSeek counts without the embedding)
model() {
    name=$1
    out="$tmp/$name.out"
    if ! "$moemu" info --model "$dir/$name.json" >"$out" 2>&1; then
        bad "$name: moemu info --model $dir/$name.json failed: $(cat "$out")"
        return
    fi
    total=$(field "parameters" "$out")
    emb=$(field "  embedding" "$out")
    head=$(field "  lm_head" "$out")
    active=$(field "active per token" "$out")
    if [ -z "$total" ] || [ -z "$emb" ] || [ -z "$head" ] || [ -z "$active" ]; then
        bad "$name: moemu info printed no parameters/embedding/lm_head/active line: $(cat "$out")"
        return
    fi
    card_active=$(field "  as cards count" "$out")
    if [ "$head" -gt 0 ]; then want=$((active + emb)); else want=$active; fi
    exact "$name" "active as cards count" "$card_active" "$want" "active per token + untied embedding"
    how="as cards count" act=$card_active
    if [ "${9:-cards}" = own ]; then how="active per token" act=$active; fi
    published "$name" "total" "$total" "$2" "$3" "$4"
    published "$name" "active ($how)" "$act" "$5" "$6" "$7"
    if [ "$8" != "-" ]; then
        exact "$name" "total" "$total" "$8" "model.safetensors.index.json total_size / 2"
    fi
}

# Qwen/Qwen1.5-MoE-A2.7B model card, https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B:
# "14.3B parameters in total and 2.7B activated parameters during runtime".
# total_size 28631568384 (bf16).
model Qwen1.5-MoE-A2.7B 14.3e9 0.1e9 round 2.7e9 0.1e9 round 14315784192

# Qwen/Qwen2-57B-A14B: only the name-level 57B total and 14B activated are
# published (model card https://huggingface.co/Qwen/Qwen2-57B-A14B, Qwen2
# technical report arXiv:2407.10671). No checkpoint total_size found.
model Qwen2-57B-A14B 57e9 1e9 round 14e9 1e9 round -

# Qwen/Qwen3-30B-A3B model card, https://huggingface.co/Qwen/Qwen3-30B-A3B:
# "30.5B in total and 3.3B activated". The exact active count is
# 3,353,032,704 (3.35B): 3.3B is that figure truncated, not rounded (rounded,
# it is 3.4B), so the active check truncates. total_size 61064245248 (bf16).
model Qwen3-30B-A3B 30.5e9 0.1e9 round 3.3e9 0.1e9 trunc 30532122624

# Qwen/Qwen3-235B-A22B model card, https://huggingface.co/Qwen/Qwen3-235B-A22B:
# "235B in total and 22B activated". total_size 470187269120 (bf16).
model Qwen3-235B-A22B 235e9 1e9 round 22e9 1e9 round 235093634560

# allenai/OLMoE-1B-7B-0924: 6.9B total, 1.3B active (OLMoE paper,
# arXiv:2409.02060; the card's "1B active and 7B total" is the name). No
# checkpoint index found (a third-party report's 13838323712 bytes agrees
# with 2 x 6,919,161,856 but is not an index).
model OLMoE-1B-7B-0924 6.9e9 0.1e9 round 1.3e9 0.1e9 round -

# ibm-granite granite 1B-A400M model cards' architecture table: "# Parameters
# 1.3B", "# Active Parameters 400M" (one significant digit: 0.4B).
# Embeddings tied. No checkpoint index found.
model granite-3.1-1b-a400m 1.3e9 0.1e9 round 400e6 100e6 round -

# mistralai/Mixtral-8x7B-v0.1: Mistral AI's announcement "Mixtral of
# experts": "46.7B total parameters but only uses 12.9B parameters per
# token". total_size 93405585408 (bf16).
model Mixtral-8x7B-v0.1 46.7e9 0.1e9 round 12.9e9 0.1e9 round 46702792704

# mistralai/Mixtral-8x22B-v0.1: Mistral AI's announcement: "39B active
# parameters out of 141B". The 59 bf16 shards hold 281241268224 tensor bytes;
# 140,620,634,112 is also what instantiating the HF model counts
# (https://huggingface.co/mistral-community/Mixtral-8x22B-v0.1/discussions/6).
model Mixtral-8x22B-v0.1 141e9 1e9 round 39e9 1e9 round 140620634112

# deepseek-ai/DeepSeek-V2-Lite: "15.7B total parameters, of which 2.4B are
# activated for each token" (DeepSeek-V2 paper, arXiv:2405.04434, appendix).
# DeepSeek counts the active parameters without the embedding (moemu's own
# "active per token"); 2,451,435,008 is 2.4B truncated (rounded, 2.5B).
model DeepSeek-V2-Lite 15.7e9 0.1e9 round 2.4e9 0.1e9 trunc - own

# deepseek-ai/DeepSeek-V3: "671B total parameters with 37B activated for each
# token" (DeepSeek-V3 technical report, arXiv:2412.19437); the Hub's 685B
# adds the 14B of the multi-token-prediction module, which moemu neither
# counts nor loads.
model DeepSeek-V3 671e9 1e9 round 37e9 1e9 round - own

# moonshotai/Kimi-K2-Instruct: "1 trillion total parameters" and "32 billion
# activated parameters" (model card, https://huggingface.co/moonshotai/Kimi-K2-Instruct).
model Kimi-K2-Instruct 1e12 1e12 round 32e9 1e9 round - own

# openai/gpt-oss-120b and -20b: "116.83B" total, "5.13B" active and "20.91B",
# "3.61B" (OpenAI's gpt-oss model card, arXiv:2508.10925), the embedding not
# counted in the active figure; checkpoints of 60.8 GiB and 12.8 GiB (MoE
# weights in MXFP4, the rest in BF16), which moemu's weight bytes must give.
model gpt-oss-120b 116.83e9 0.01e9 round 5.13e9 0.01e9 round - own
model gpt-oss-20b 20.91e9 0.01e9 round 3.61e9 0.01e9 round - own
for m in gpt-oss-120b:60.8 gpt-oss-20b:12.8; do
    name=${m%:*} gib=${m#*:}
    bytes=$(field "weight bytes" "$tmp/$name.out")
    published "$name" "checkpoint GiB" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1.073741824 }')" \
        "${gib}e9" 0.1e9 round
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
