#!/usr/bin/env python3
"""Side-by-side `quill bench` of two quill binaries (A = before, B = after).

Runs `A bench --json` and `B bench --json` alternately ROUNDS times (ABAB..., so slow drift of
a shared machine hits both alike) and prints, per configuration and figure, the median of
each and the ratio B/A.

    python3 scripts/bench_ab.py /tmp/quill-old target/release/quill [ROUNDS] [-- bench flags]
"""
import json
import statistics
import subprocess
import sys

FIGURES = ["train_tokens_per_s", "gen_tokens_per_s", "batch_gen_tokens_per_s"]


def run(binary, extra):
    out = subprocess.run([binary, "bench", "--json", *extra], check=True,
                         capture_output=True, text=True).stdout
    return {r["name"]: r for r in (json.loads(l) for l in out.splitlines() if l.strip())}


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    a, b = args[0], args[1]
    rounds = int(args[2]) if len(args) > 2 else 5
    res = {"A": [], "B": []}
    for r in range(rounds):
        for tag, binary in (("A", a), ("B", b)) if r % 2 == 0 else (("B", b), ("A", a)):
            res[tag].append(run(binary, extra))
            print(f"round {r + 1}/{rounds} {tag} done", file=sys.stderr, flush=True)
    names = sorted(res["A"][0])
    print(f"{'config':6} {'figure':24} {'A median':>12} {'B median':>12} {'B/A':>7}")
    for n in names:
        for f in FIGURES:
            ma = statistics.median(x[n][f] for x in res["A"])
            mb = statistics.median(x[n][f] for x in res["B"])
            print(f"{n:6} {f:24} {ma:12.0f} {mb:12.0f} {mb / ma:7.3f}")
    for tag in "AB":
        rss = statistics.median(x[n]["peak_rss_bytes"] for x in res[tag] for n in names)
        print(f"{tag} median peak RSS over configs: {rss / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
