#!/usr/bin/env bash
# Training tokens/s with the corpus's tokens in memory (--prepare never) against the same
# tokens memory-mapped from a token file (--prepare always), alternating, on the bundled
# corpus with the default model: ROUNDS rounds (default 5) of 200 steps each, validation off.
# Prints every run's tokens/s and the medians.
#
#   scripts/mmap_speed.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
quill=${QUILL:-target/release/quill}
rounds=${1:-5}
out=$(mktemp -d /tmp/mmap-speed.XXXXXX)
common=(--max-steps 200 --eval-every 0 --save-every 0 --val-fraction 0 --quiet --out "$out")
"$quill" prepare --val-fraction 0 --out "$out" --quiet 2>/dev/null
rate() { "$quill" train "${common[@]}" --prepare "$1" 2>&1 | sed -n 's/.*), \([0-9]*\) tokens\/s.*/\1/p'; }
mem=(); map=()
for ((i = 1; i <= rounds; i++)); do
    mem+=("$(rate never)")
    map+=("$(rate always)")
    echo "round $i: in memory ${mem[-1]} tokens/s, mapped ${map[-1]} tokens/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m1=$(median "${mem[@]}"); m2=$(median "${map[@]}")
echo "median: in memory $m1 tokens/s, mapped $m2 tokens/s, ratio $(awk "BEGIN {printf \"%.3f\", $m2 / $m1}")"
rm -rf "$out"
