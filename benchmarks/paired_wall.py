"""Whole-process timing of two commands, run in turn (A B A B ...), with the ratio taken pair by pair.

    python benchmarks/paired_wall.py -n 5 --a 'CMD_A ...' --b 'CMD_B ...' [--warmup 1]

Each run's wall seconds (a monotonic clock around start and exit, start-up included), user + system CPU
seconds and peak resident memory (``wait4``'s ``ru_maxrss`` of the command's process; a shell command's
children count only if the shell waits for them) are printed as min / median / max; quote the median.
Alternating the two keeps their ratio meaningful when the machine's speed drifts.  Public tools only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import time


def run(command: str) -> dict[str, float]:
    start = time.monotonic()
    proc = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
            "rc": proc.returncode}


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="pairs timed")
    parser.add_argument("--warmup", type=int, default=1, help="pairs run first, not timed")
    parser.add_argument("--a", required=True, help="command A (split as a shell splits words; no pipes)")
    parser.add_argument("--b", required=True, help="command B, the baseline")
    args = parser.parse_args()
    for _ in range(args.warmup):
        run(args.a), run(args.b)
    rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for _ in range(args.n):
        rows["A"].append(run(args.a))
        rows["B"].append(run(args.b))
    print(f"{args.n} pairs after {args.warmup} warm-up; min / median / max")
    for key, command in (("A", args.a), ("B", args.b)):
        runs = rows[key]
        print(f"{key}: {command}")
        print(f"   wall {spread([r['wall'] for r in runs])} s   cpu {spread([r['cpu'] for r in runs])} s   "
              f"peak {spread([r['peak_mib'] for r in runs])} MiB   exit codes {sorted({r['rc'] for r in runs})}")
    ratios = [a["wall"] / b["wall"] for a, b in zip(rows["A"], rows["B"])]
    print(f"wall A/B per pair: {spread(ratios)}")


if __name__ == "__main__":
    main()
