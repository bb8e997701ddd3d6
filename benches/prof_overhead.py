#!/usr/bin/env python3
"""What sampled heap profiling costs: the C workloads in benches/workloads
under libbuddyslab.so with profiling off and with BUDDYSLAB_PROF on at the
default rate (one sample per 512 KiB), interleaved (each round runs every
workload off then on, the order flipped every other round), medians of
wall time and of CPU time (user + system) per workload, and the ratio
on/off with the geometric mean over the workloads.

    python3 benches/prof_overhead.py [--runs 5] [--scale 1] [--workloads larson,frag]

Needs target/release/libbuddyslab.so (`cargo build --release`). The
profiles go to a scratch directory that is removed afterwards.
"""

import argparse
import math
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
LIB = REPO / "target" / "release" / "libbuddyslab.so"


def run(binary, scale, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([str(binary), format(scale, "g")], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--workloads", help="comma-separated names (default: all)")
    args = p.parse_args()
    if not LIB.exists():
        raise SystemExit(f"{LIB} is missing: run cargo build --release")
    sources = sorted((BENCHES / "workloads").glob("*.c"))
    if args.workloads:
        wanted = args.workloads.split(",")
        sources = [s for s in sources if s.stem in wanted]
    with tempfile.TemporaryDirectory(prefix="prof-overhead-") as scratch:
        scratch = Path(scratch)
        binaries = {}
        for s in sources:
            b = scratch / s.stem
            subprocess.run(["cc", "-O2", "-pthread", "-o", str(b), str(s)], check=True)
            binaries[s.stem] = b
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BUDDYSLAB_", "MALLOC_"))}
        base["LD_PRELOAD"] = str(LIB)
        off = dict(base)
        on = dict(base, BUDDYSLAB_PROF=str(scratch / "heap.%p"))
        times = {(w, m): [] for w in binaries for m in ("off", "on")}
        for r in range(args.runs):
            for w, b in binaries.items():
                order = [("off", off), ("on", on)] if r % 2 == 0 else [("on", on), ("off", off)]
                for mode, env in order:
                    times[(w, mode)].append(run(b, args.scale, env))
            print(f"round {r + 1}/{args.runs} done", flush=True)
    print(f"\n{args.runs} interleaved rounds, scale {args.scale:g}; medians\n")
    print("| workload | wall off (s) | wall on (s) | wall on/off | cpu off (s) | cpu on (s) | cpu on/off |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    logs = {"wall": [], "cpu": []}
    for w in binaries:
        row = [w]
        ratios = {}
        for i, kind in enumerate(("wall", "cpu")):
            m_off = statistics.median(t[i] for t in times[(w, "off")])
            m_on = statistics.median(t[i] for t in times[(w, "on")])
            ratios[kind] = m_on / m_off if m_off > 0 else 1.0
            logs[kind].append(math.log(ratios[kind]))
            row += [f"{m_off:.3f}", f"{m_on:.3f}", f"{ratios[kind]:.3f}"]
        print("| " + " | ".join(row) + " |")
    g = {k: math.exp(sum(v) / len(v)) for k, v in logs.items()}
    print(f"| geomean | | | {g['wall']:.3f} | | | {g['cpu']:.3f} |")


if __name__ == "__main__":
    main()
