#!/usr/bin/env python3
"""CPU time (user + system) of one quill command under two binaries (A = before, B = after).

Wall-clock figures are noise on a loaded shared machine; the CPU time a process is charged is
much steadier. Runs A and B alternately PAIRS times (AB, BA, AB, ...) and prints the median CPU
seconds of each and the median of the per-pair ratios B/A with their range.

    python3 scripts/cpu_ab.py /tmp/quill-main target/release/quill 9 -- \\
        sample -c checkpoints/shakespeare-small.safetensors --length 50000 --seed 1

MATMUL_NUM_THREADS is set to 1 so that thread scheduling does not add to the noise.
"""
import os
import statistics
import subprocess
import sys


def cpu_seconds(cmd, env):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed (status {status})")
    return ru.ru_utime + ru.ru_stime


def main():
    if "--" not in sys.argv or sys.argv.index("--") < 4:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    a, b, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[cut + 1:]
    env = dict(os.environ, MATMUL_NUM_THREADS="1")
    times = {a: [], b: []}
    for i in range(pairs):
        for binary in ((a, b) if i % 2 == 0 else (b, a)):
            times[binary].append(cpu_seconds([binary, *args], env))
    ratios = [y / x for x, y in zip(times[a], times[b])]
    load = open("/proc/loadavg").read().split()[:3]
    print(f"A {statistics.median(times[a]):.3f} s, B {statistics.median(times[b]):.3f} s CPU "
          f"(medians of {pairs}); B/A per pair: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}; load average now {' '.join(load)}")


if __name__ == "__main__":
    main()
