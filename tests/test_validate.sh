#!/bin/sh
# The validation table: every published measurement of hw/measurements.csv
# repeated as a dry run must be no worse than the committed baseline
# (docs/validation.json: the median error and the worst factor), and
# docs/validation.md must be the table the code computes now (regenerate
# both with the command it names). Prints what it compared.
set -u
moemu="${MOEMU_BUILDDIR:-.}/moemu"
src="${MOEMU_SRCDIR:-.}"
moemu=$(cd "$(dirname "$moemu")" && pwd)/$(basename "$moemu")
tmp=$(mktemp -d /tmp/moemu-validate-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$src" || exit 1

"$moemu" validate hw/measurements.csv --models examples/models --markdown "$tmp/validation.md" \
    --baseline docs/validation.json > "$tmp/out" 2>&1
rc=$?
tail -n 1 "$tmp/out"
if [ $rc -ne 0 ]; then
    cat "$tmp/out"
    echo "FAIL: moemu validate exited $rc against docs/validation.json"
    exit 1
fi
if ! cmp -s "$tmp/validation.md" docs/validation.md; then
    diff docs/validation.md "$tmp/validation.md" | head -20
    echo "FAIL: docs/validation.md is not what moemu computes now; regenerate it:"
    echo "  moemu validate hw/measurements.csv --models examples/models \\"
    echo "    --markdown docs/validation.md --json docs/validation.json"
    exit 1
fi
echo "ok: docs/validation.md is current, and no worse than docs/validation.json"
