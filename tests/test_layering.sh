#!/bin/sh
# Dependencies point down only (DESIGN.md): engine -> layers -> parallel ->
# emu. Every #include "..." of every source and header of those folders
# must name a header of its own layer or of one below it; the library's
# part of engine (models, run, tools) must not include the command's
# (engine/cli). A file passes when all its includes do; each include that
# breaks the rule is named with its file and line. Prints "N passed, N
# failed".
set -u
src="${MOEMU_SRCDIR:-.}"
pass=0
fail=0

# allowed FILE: the folders (with their slash) FILE may include from
allowed() {
    case "$1" in
    emu/*) echo "emu/" ;;
    parallel/*) echo "parallel/ emu/" ;;
    layers/*) echo "layers/ parallel/ emu/" ;;
    engine/cli/*) echo "engine/ layers/ parallel/ emu/" ;;
    engine/*) echo "engine/models/ engine/run/ engine/tools/ layers/ parallel/ emu/" ;;
    esac
}

# check FILE (relative to src): every quoted include against allowed
check() {
    file=$1
    ok=allowed_all
    # "LINE HEADER" for each #include "HEADER"
    includes=$(awk '/^[ \t]*#[ \t]*include[ \t]*"/ {
        h = $0; sub(/^[^"]*"/, "", h); sub(/".*/, "", h); print NR, h }' "$src/$file")
    while read -r line header; do
        [ -n "${header:-}" ] || continue
        # a bare name is beside the file: its own folder
        case "$header" in */*) ;; *) header="${file%/*}/$header" ;; esac
        hit=""
        for dir in $(allowed "$file"); do
            case "$header" in "$dir"*) hit=yes ;; esac
        done
        if [ -z "$hit" ]; then
            ok=""
            echo "FAIL: $file:$line: includes $header, above its layer" \
                "(it may include only $(allowed "$file"| sed 's/ /, /g'))"
        fi
    done <<EOF
$includes
EOF
    if [ -n "$ok" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
}

files=$(cd "$src" && find emu parallel layers engine -name '*.[ch]' | LC_ALL=C sort)
for f in $files; do
    check "$f"
done
[ -n "$files" ] || { echo "FAIL: no sources under $src"; fail=1; }

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
