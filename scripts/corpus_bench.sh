#!/usr/bin/env bash
# The figures of "Corpora bigger than memory" in the README, for the char corpora made by
# scripts/big_corpus.sh (e.g. /tmp/big-100m, /tmp/big-1g, /tmp/big-5g):
#   1. `quill prepare` (both passes, token file written and fsynced): wall time, peak RSS;
#   2. a 1-step `quill train` on the prepared corpus (source check, token file verification,
#      mapping, model set-up, one step, checkpoint and plot): an upper bound of the time to
#      the first training step;
#   3. a 50-step `quill train` on it: peak RSS of training.
# Validation is off (--val-fraction 0) so it does not dominate. Token files go to /tmp/bench-*
# and are removed at the end (KEEP=1 keeps them).
#
#   scripts/corpus_bench.sh /tmp/big-100m /tmp/big-1g /tmp/big-5g
set -euo pipefail
quill=${QUILL:-$(dirname "$0")/../target/release/quill}
for dir in "$@"; do
    name=$(basename "$dir")
    out=/tmp/bench-$name
    rm -rf "$out"
    bytes=$(du -sb "$dir" | cut -f1)
    common=(--corpus "$dir" --out "$out" --val-fraction 0)
    /usr/bin/time -f "$name ($bytes bytes): prepare %e s, peak RSS %M KB" \
        "$quill" prepare "${common[@]}" --quiet 2>&1 | grep -v '^train on it'
    /usr/bin/time -f "$name: 1-step train %e s, peak RSS %M KB" \
        "$quill" train "${common[@]}" --max-steps 1 --eval-every 0 --save-every 0 --quiet 2>&1 \
        | grep -E 'prepared tokens|1-step'
    /usr/bin/time -f "$name: 50-step train %e s, peak RSS %M KB" \
        "$quill" train "${common[@]}" --max-steps 50 --eval-every 0 --save-every 0 --quiet 2>&1 \
        | grep -E '^done|50-step'
    [ "${KEEP:-0}" = 1 ] || rm -rf "$out"
done
