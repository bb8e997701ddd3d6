#!/usr/bin/env python3
"""Run the mimalloc-bench programs and the project's own workloads under
glibc, buddyslab and the peers that benches/peers/build.sh built.

Every program runs under every allocator through LD_PRELOAD (glibc: no
preload), interleaved: repetition 1 runs every test once under every
allocator (the order of allocators rotates from test to test and from
repetition to repetition), then repetition 2, and so on, so that noise from
a shared machine falls on all allocators alike. Per run it records wall
time, user and system time, peak RSS and minor faults (wait4's rusage, read
by benches/measure.c: see build_measure for why not Python's), and,
for the tests that report their own measure of speed (larson, rptest,
xmalloc-test, glibc-thread: they run for a fixed time), that measure
converted to a time as mimalloc-bench's bench.sh does. The report gives
medians of the repetitions and ratios to glibc, with a geometric mean per
allocator. Peak RSS includes the pages of the allocator's library that
the program maps; each library is dropped from the page cache before the
first run (see drop_from_page_cache), so that it is mapped as an installed
library is.

After the timed repetitions, a separate counting pass runs each test once
per allocator under `strace -f -c` (strace slows a program down, so it
never runs in a timed pass) and reports the calls to madvise, mmap, munmap,
mremap, futex and brk, and the seconds strace saw spent in futex.

    python3 benches/peers/run.py                       # everything, 3 repetitions
    python3 benches/peers/run.py --tests cfrac,larsonN --only glibc,buddyslab,mimalloc3
    python3 benches/peers/run.py --own-only --own-factors 1,4,8   # own workloads at 1x, 4x, 8x cores
    python3 benches/peers/run.py --factors 1,4,8        # mimalloc-bench tests with a thread count too
    python3 benches/peers/run.py --json run.json --markdown
    python3 benches/peers/run.py --from-json run.json  # print the report of an earlier run

Thread counts: a test that takes one gets --threads (default: the number
of CPUs) times each of --factors (mimalloc-bench) or --own-factors (the
workloads in benches/workloads). Rows are named as in bench.sh (larsonN,
alloc-test1, ...), with -<T>t appended where the count is not the default.

Allocators: glibc; buddyslab (--buddyslab PATH, default the repository's
target/release/libbuddyslab.so); every library in PREFIX/VERSIONS.tsv
(--prefix, default ${XDG_CACHE_HOME:-~/.cache}/buddyslab-bench); and any
--with NAME=PATH. --only picks some of them, in that order.

Progress and one line per run go to stderr, the report to stdout. The exit
status is 1 if any run crashed, timed out, or (own workloads) printed a
different checksum than under glibc.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from compare import cpu_model, describe_exit  # noqa: E402  (benches/compare.py: one reader of /proc/cpuinfo, one wording of an exit)
WORKLOADS_DIR = HERE.parent / "workloads"
OUT = HERE.parent / "out" / "peers"

OWN_DEFAULT = ["powerlaw", "reallocchain", "phases"]
# Column order of the peers (as issue 18's table); others follow by name.
PEER_ORDER = ["mimalloc3", "mimalloc2", "snmalloc", "rpmalloc", "jemalloc", "tcmalloc"]
SYSCALLS = ["madvise", "mmap", "munmap", "mremap", "futex", "brk"]


def note(*parts, end="\n"):
    print(*parts, file=sys.stderr, end=end, flush=True)


def default_prefix():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "buddyslab-bench"


# ---------------------------------------------------------------- tests


class Test:
    """One row: a program and its arguments.

    rtime: a function from the program's stdout to a time in seconds (the
    test's own measure, as bench.sh converts it), or None: wall time."""

    def __init__(self, name, group, argv, threads=None, stdin=None, rtime=None, checksum=False):
        self.name, self.group, self.argv = name, group, argv
        self.threads, self.stdin, self.rtime, self.checksum = threads, stdin, rtime, checksum


def _search(pattern, text):
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def rtime_larson(out):
    return _search(r" time: ([0-9.]+)", out)


def rtime_rptest(out):
    ops = _search(r"\.\.\.([0-9]+) memory ops", out)
    return 2000000 / ops if ops else None


def rtime_xmalloc(out):
    return _search(r"^rtime: ([0-9.]+)", out)


def rtime_glibc_thread(out):
    ops = _search(r"^\s*([0-9.]+)", out)
    return 1e9 / ops if ops else None


def bench_tests(prefix, n, suffix):
    """mimalloc-bench's tests with their bench.sh arguments, for n threads.
    suffix is appended to the names of the tests that take n."""
    b = lambda prog: str(prefix / "bin" / prog)
    share = prefix / "share"
    t = []
    if not suffix:  # the single-threaded ones once
        t += [
            Test("cfrac", "bench", [b("cfrac"), "17545186520507317056371138836327483792789528"]),
            Test("espresso", "bench", [b("espresso"), str(share / "largest.espresso")]),
            Test("barnes", "bench", [b("barnes")], stdin=share / "barnes.input"),
        ]
    t += [
        Test("larsonN" + suffix, "bench", [b("larson"), "5", "8", "1000", "5000", "100", "4141", str(n)],
             n, rtime=rtime_larson),
        Test("larsonN-sized" + suffix, "bench",
             [b("larson-sized"), "5", "8", "1000", "5000", "100", "4141", str(n)], n, rtime=rtime_larson),
        Test("mstressN" + suffix, "bench", [b("mstress"), str(n), "50", "25"], n),
        Test("rptestN" + suffix, "bench",
             [b("rptest"), str(n), "0", "1", "2", "500", "1000", "100", "8", "16000"], n, rtime=rtime_rptest),
    ]
    if not suffix:
        t.append(Test("alloc-test1", "bench", [b("alloc-test"), "1"], 1))
    t += [
        Test("alloc-testN" + suffix, "bench", [b("alloc-test"), str(min(n, 16))], min(n, 16)),
        Test("sh6benchN" + suffix, "bench", [b("sh6bench"), str(n)], n),
        Test("sh8benchN" + suffix, "bench", [b("sh8bench"), str(n)], n),
        Test("xmalloc-testN" + suffix, "bench", [b("xmalloc-test"), "-w", str(n), "-t", "5", "-s", "64"], n,
             rtime=rtime_xmalloc),
    ]
    if not suffix:
        t += [
            Test("cache-scratch1", "bench", [b("cache-scratch"), "1", "1000", "1", "2000000", str(n)], 1),
            Test("cache-thrash1", "bench", [b("cache-thrash"), "1", "1000", "1", "2000000", str(n)], 1),
        ]
    t += [
        Test("cache-scratchN" + suffix, "bench", [b("cache-scratch"), str(n), "1000", "1", "2000000", str(n)], n),
        Test("cache-thrashN" + suffix, "bench", [b("cache-thrash"), str(n), "1000", "1", "2000000", str(n)], n),
    ]
    if not suffix:
        t.append(Test("glibc-simple", "bench", [b("glibc-simple")]))
    t.append(Test("glibc-thread" + suffix, "bench", [b("glibc-thread"), str(n)], n, rtime=rtime_glibc_thread))
    if not suffix:
        t += [
            Test("malloc-large", "bench", [b("malloc-large")]),
            Test("mleak10", "bench", [b("mleak"), "5"]),
            Test("mleak100", "bench", [b("mleak"), "50"]),
        ]
    return t


def build_workload(stem):
    """Compiles benches/workloads/<stem>.c into benches/out/peers/, as
    benches/compare.py does, unless the binary is newer than its sources."""
    source = WORKLOADS_DIR / f"{stem}.c"
    if not source.exists():
        raise SystemExit(f"run.py: no workload {source}")
    OUT.mkdir(parents=True, exist_ok=True)
    binary = OUT / stem
    inputs = [source, *sorted(WORKLOADS_DIR.glob("*.h"))]
    if not binary.exists() or binary.stat().st_mtime < max(p.stat().st_mtime for p in inputs):
        cmd = os.environ.get("CC", "cc").split() + ["-O2", "-pthread", "-Wall", "-o", str(binary), str(source)]
        note("build:", " ".join(cmd))
        subprocess.run(cmd, check=True)
    return binary


def own_tests(stems, counts, scale):
    tests = []
    for stem in stems:
        binary = build_workload(stem)
        for n in counts:
            tests.append(Test(f"{stem}-{n}t", "own", [str(binary), str(scale), str(n)], n, checksum=True))
    return tests


def select_tests(tests, wanted):
    """Tests whose name, or name without the -<T>t suffix, is in wanted."""
    if not wanted:
        return tests
    names = set(wanted.split(","))
    base = lambda name: re.sub(r"-[0-9]+t$", "", name)
    return [t for t in tests if t.name in names or base(t.name) in names]


# ---------------------------------------------------------------- allocators


def discover_allocators(args):
    """Ordered list of (name, library path or None, version)."""
    allocs = [("glibc", None, glibc_version())]
    lib = Path(args.buddyslab) if args.buddyslab else REPO / "target" / "release" / "libbuddyslab.so"
    if lib.exists():
        # A copy: a rebuild during a long run must not mix two builds.
        snapdir = tempfile.mkdtemp(prefix="buddyslab-lib-")
        atexit.register(shutil.rmtree, snapdir, True)
        snap = Path(snapdir) / "libbuddyslab.so"
        shutil.copy2(lib, snap)
        digest = hashlib.sha256(snap.read_bytes()).hexdigest()[:12]
        allocs.append(("buddyslab", str(snap), f"{buddyslab_version(lib)} {lib.resolve()} sha256 {digest}"))
    else:
        note(f"run.py: {lib} is missing (cargo build --release builds it); buddyslab left out")
    versions = Path(args.prefix) / "VERSIONS.tsv"
    if versions.exists():
        peers = []
        for line in versions.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) >= 5 and ":" not in cols[0] and Path(cols[4]).exists():
                peers.append((cols[0], cols[4], cols[1]))
        rank = lambda a: (PEER_ORDER.index(a[0]) if a[0] in PEER_ORDER else len(PEER_ORDER), a[0])
        allocs += sorted(peers, key=rank)
    else:
        note(f"run.py: no {versions}; run benches/peers/build.sh to build the peers")
    for spec in args.with_ or []:
        name, _, path = spec.partition("=")
        if not path or not Path(path).exists():
            raise SystemExit(f"run.py: --with {spec}: no such library")
        allocs = [a for a in allocs if a[0] != name] + [(name, str(Path(path).resolve()), "given")]
    if args.only:
        by_name = {a[0]: a for a in allocs}
        missing = [n for n in args.only.split(",") if n not in by_name]
        if missing:
            raise SystemExit(f"run.py: --only: not found: {', '.join(missing)} (have: {', '.join(by_name)})")
        allocs = [by_name[n] for n in args.only.split(",")]
    for _, library, _ in allocs:
        if library:
            drop_from_page_cache(library)
    return allocs


def drop_from_page_cache(path):
    """Writes `path` back and drops it from the page cache, so that the
    runs map it as a program maps an installed library: from pages read
    in on demand. A file just written (the copy above, a peer's fresh
    `make install`) sits in the page cache as it was written, in large
    folios on file systems that use them, and the kernel then maps the
    whole text on the first fault: every allocator's peak RSS would count
    all of its library, executed or not. Done for every library alike;
    glibc's own libc.so is the system's, read in on demand as well."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        note(f"run.py: {path}: not dropped from the page cache ({e})")
    finally:
        os.close(fd)


def glibc_version():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "glibc"
    except (ValueError, OSError):
        return "glibc"


def buddyslab_version(lib):
    """The commit of the work tree that holds the library, when it is one,
    and the library's modification time (the tree may have moved on)."""
    built = datetime.datetime.fromtimestamp(lib.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    try:
        out = subprocess.run(["git", "-C", str(lib.resolve().parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return f"{commit} (built {built})"


# ---------------------------------------------------------------- running


def loadavg():
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def build_measure():
    """benches/measure.c, the launcher that reports its child's rusage.

    Python's own os.wait4 would do, but a child forked from Python starts
    with Python's peak RSS (the kernel keeps the high-water mark across
    exec), so every program would show at least ~15 MiB; forked from this
    small C program, a child reports its own."""
    OUT.mkdir(parents=True, exist_ok=True)
    source, binary = HERE.parent / "measure.c", OUT / "measure"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        cmd = os.environ.get("CC", "cc").split() + ["-O2", "-Wall", "-o", str(binary), str(source)]
        note("build:", " ".join(cmd))
        subprocess.run(cmd, check=True)
    return binary


def run_once(test, library, timeout, scratch, launcher, extra_env=None):
    """One timed run through the launcher; returns a dict of what was measured.
    extra_env: variables set for this allocator's runs only (--env)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(extra_env or {})
    rec = {"load": loadavg()}
    result = scratch / "result"
    result.unlink(missing_ok=True)
    cmd = [str(launcher), str(result), str(math.ceil(timeout)), library or ""] + test.argv
    stdin = open(test.stdin, "rb") if test.stdin else subprocess.DEVNULL
    with open(scratch / "stdout", "w+b") as out, open(scratch / "stderr", "w+b") as err:
        try:
            subprocess.run(cmd, stdin=stdin, stdout=out, stderr=err, env=env, cwd=scratch,
                           timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            pass
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if test.stdin:
        stdin.close()
    fields = {}
    if result.exists():
        for line in result.read_text().splitlines():
            key, _, value = line.partition(" ")
            fields[key] = float(value)
    if not fields:
        rec.update(ok=False, timed_out=True, exit=None, wall=None, user=None, sys=None,
                   maxrss_kib=None, minflt=None, rtime=None, time=None,
                   why="the launcher reported nothing", stderr_tail=stderr[-600:])
        return rec
    code = -int(fields["signal"]) if fields["signal"] else int(fields["exit"])
    rec.update(wall=fields["wall_s"], user=fields["utime_s"], sys=fields["stime_s"],
               maxrss_kib=int(fields["maxrss_kib"]), minflt=int(fields["minflt"]), exit=code,
               timed_out=bool(fields["timed_out"]))
    rec["ok"] = code == 0 and not rec["timed_out"]
    rec["rtime"] = test.rtime(stdout) if (test.rtime and rec["ok"]) else None
    if test.rtime and rec["ok"] and rec["rtime"] is None:
        rec["ok"] = False
        rec["why"] = "no speed figure in its output"
    rec["time"] = rec["rtime"] if rec["rtime"] is not None else rec["wall"]
    if test.checksum:
        rec["checksum"] = stdout.strip()
    if not rec["ok"]:
        rec["stderr_tail"] = stderr[-600:]
        rec["stdout_tail"] = stdout[-300:]
    return rec


def parse_strace_summary(text):
    """{syscall: {"calls": n, "seconds": s, "errors": e}} from strace -c output."""
    counts = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 5 or not re.match(r"^[0-9.]+$", cols[0]):
            continue
        name = cols[-1]
        try:
            seconds, calls = float(cols[1]), int(cols[3])
        except ValueError:
            continue
        errors = int(cols[4]) if len(cols) == 6 else 0
        counts[name] = {"calls": calls, "seconds": seconds, "errors": errors}
    return counts


def strace_once(test, library, timeout, scratch, syscalls, wall=False, extra_env=None):
    """The counting pass: the test once under strace -f -c."""
    summary = scratch / "strace"
    summary.unlink(missing_ok=True)
    cmd = ["strace", "-f", "-c", "-o", str(summary), "-e", "trace=" + ",".join(syscalls)]
    if wall:
        cmd.append("-w")
    if library:
        cmd += ["-E", "LD_PRELOAD=" + library]  # the program's, not strace's own
    for var, value in (extra_env or {}).items():
        cmd += ["-E", f"{var}={value}"]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    stdin = open(test.stdin, "rb") if test.stdin else subprocess.DEVNULL
    start = time.monotonic()
    proc = subprocess.Popen(cmd + ["--"] + test.argv, stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=scratch, start_new_session=True)
    partial = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        partial = True
        proc.send_signal(signal.SIGINT)  # strace detaches and writes its summary
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the traced program, left running
        except ProcessLookupError:
            pass
    if test.stdin:
        stdin.close()
    counts = parse_strace_summary(summary.read_text()) if summary.exists() else {}
    return {"counts": counts, "partial": partial, "exit": proc.returncode,
            "wall_under_strace": time.monotonic() - start}


def rotate(seq, k):
    k %= len(seq)
    return seq[k:] + seq[:k]


def measure(tests, allocs, args, checkpoint=lambda runs, straces: None):
    """Timed repetitions, then the counting pass; checkpoint(runs, straces)
    after every repetition and every strace run (for --json)."""
    runs = {t.name: {a[0]: [] for a in allocs} for t in tests}
    scratch = Path(tempfile.mkdtemp(prefix="buddyslab-peers-"))
    launcher = build_measure()
    try:
        total = len(tests) * len(allocs) * args.runs
        done = 0
        for rep in range(args.runs):
            for ti, test in enumerate(tests):
                for name, lib, _ in rotate(allocs, rep + ti):
                    rec = run_once(test, lib, args.timeout, scratch, launcher, args.env_of.get(name))
                    rec["rep"] = rep + 1
                    runs[test.name][name].append(rec)
                    done += 1
                    note(f"[{done}/{total}] rep {rep + 1} {test.name:<18} {name:<10} " + run_line(rec))
            checkpoint(runs, {})
        straces = {}
        if args.strace:
            if not shutil.which("strace"):
                note("run.py: strace not installed (apt-get install strace); no system-call counts")
            else:
                for test in tests:
                    straces[test.name] = {}
                    for name, lib, _ in allocs:
                        s = strace_once(test, lib, args.strace_timeout, scratch, args.syscalls, args.strace_wall,
                                        args.env_of.get(name))
                        straces[test.name][name] = s
                        c = s["counts"]
                        note(f"strace {test.name:<18} {name:<10} "
                             + " ".join(f"{k}={c.get(k, {}).get('calls', 0)}" for k in args.syscalls)
                             + (" (timed out: partial)" if s["partial"] else ""))
                        checkpoint(runs, straces)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs, straces


def run_line(rec):
    if not rec["ok"]:
        if rec["timed_out"]:
            return "TIMED OUT"
        return f"FAILED ({rec.get('why') or describe_exit(rec['exit'])})"
    rt = f" rtime {rec['rtime']:.3f} s" if rec.get("rtime") is not None else ""
    return (f"wall {rec['wall']:.3f} s{rt}  user {rec['user']:.2f} sys {rec['sys']:.2f}  "
            f"rss {rec['maxrss_kib'] / 1024:.1f} MiB  minflt {rec['minflt']}  load {rec['load']}")


# ---------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(data):
    """Medians per test and allocator, checksums, failures."""
    summary = {}
    for test, per_alloc in data["runs"].items():
        summary[test] = {}
        for alloc, recs in per_alloc.items():
            ok = [r for r in recs if r["ok"]]
            summary[test][alloc] = {
                "n": len(recs), "ok": len(ok),
                "time": median(r["time"] for r in ok),
                "time_min": min((r["time"] for r in ok), default=None),
                "time_max": max((r["time"] for r in ok), default=None),
                "wall": median(r["wall"] for r in ok),
                "user": median(r["user"] for r in ok),
                "sys": median(r["sys"] for r in ok),
                "cpu": median(r["user"] + r["sys"] for r in ok),
                "rss_mib": median(r["maxrss_kib"] / 1024 for r in ok),
                "minflt": median(r["minflt"] for r in ok),
                "checksums": sorted({r.get("checksum") for r in ok if r.get("checksum")}),
                "failures": [run_line(r) for r in recs if not r["ok"]],
            }
    return summary


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_int(x):
    if x is None:
        return "–"
    x = int(round(x))
    return f"{x / 1e6:.2f}M" if x >= 10_000_000 else (f"{x / 1e3:.0f}k" if x >= 10_000 else str(x))


def table(headers, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def matrix(tests, allocs, summary, base, metric, markdown):
    """Rows of `metric / peak RSS` ratios to the base allocator, with
    geometric means per group (mimalloc-bench, own workloads)."""
    headers = ["test"] + allocs
    rows = []
    ratios = {a: {"bench": ([], []), "own": ([], [])} for a in allocs}
    for t in tests:
        name = t["name"]
        row = [name + (" *" if t["rtime"] and metric == "time" else "")]
        b = summary[name].get(base, {})
        for a in allocs:
            s = summary[name][a]
            if s["n"] == 0:
                row.append("–")
                continue
            if s["ok"] == 0:
                row.append(f"fails ({s['n']} of {s['n']})")
                continue
            tr = s[metric] / b[metric] if b.get(metric) else None
            rr = s["rss_mib"] / b["rss_mib"] if b.get("rss_mib") else None
            cell = f"{fmt(tr)} / {fmt(rr)}"
            if s["ok"] < s["n"]:
                cell += f" ({s['n'] - s['ok']} of {s['n']} failed)"
            if len(s["checksums"]) > 1 or (t["checksum"] and b.get("checksums") and s["checksums"] != b["checksums"]):
                cell += " CHECKSUM DIFFERS"
            row.append(cell)
            if tr and rr:
                ratios[a][t["group"]][0].append(tr)
                ratios[a][t["group"]][1].append(rr)
        rows.append(row)
    for group, label in (("bench", "geomean mimalloc-bench"), ("own", "geomean own workloads")):
        if any(ratios[a][group][0] for a in allocs):
            row = [label]
            for a in allocs:
                tr, rr = ratios[a][group]
                row.append(f"{fmt(geomean(tr))} / {fmt(geomean(rr))} ({len(tr)})" if tr else "–")
            rows.append(row)
    return table(headers, rows, markdown)


def report(data, markdown):
    allocs = [a["name"] for a in data["allocators"]]
    tests = data["tests"]
    summary = summarize(data)
    straces = data.get("strace", {})
    base = "glibc" if "glibc" in allocs else allocs[0]
    p = []
    m = data["machine"]
    p.append(f"# Peers: mimalloc-bench and own workloads ({data['date']})")
    p.append("")
    p.append(f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, {m['glibc']}; "
             f"load average {m['load_start']} at the start, {m.get('load_end')} at the end; "
             f"{data['args']['runs']} interleaved repetitions, medians.")
    loads = sorted(r["load"] for per in data["runs"].values() for recs in per.values() for r in recs
                   if r.get("load") is not None)
    if loads:
        p.append(f"Load average (1 min) before the runs: min {loads[0]:.2f}, median "
                 f"{statistics.median(loads):.2f}, max {loads[-1]:.2f} (this machine has {m['cpus']} CPUs; "
                 "above that, other work competed with the benchmarks).")
    p.append("Allocators: " + ", ".join(f"{a['name']} {a['version']}" for a in data["allocators"]))
    p.append("")
    p.append(f"## Time / peak RSS, ratio to {base} (median of {data['args']['runs']})")
    p.append("")
    p.append(matrix(tests, allocs, summary, base, "time", markdown))
    p.append("")
    p.append("`*`: time is the test's own measure (it runs for a fixed time), converted as bench.sh does; "
             "otherwise wall time.")
    p.append("")
    p.append(f"## CPU time (user + system) / peak RSS, ratio to {base}")
    p.append("")
    p.append("Less disturbed than wall time by other work on a shared machine, but blind to waiting "
             "(a thread blocked on a lock costs no CPU).")
    p.append("")
    p.append(matrix(tests, allocs, summary, base, "cpu", markdown))
    p.append("")
    # Absolute figures per test.
    p.append("## Per test and allocator (medians)")
    p.append("")
    headers = ["test", "allocator", "time s", "(min–max)", "wall s", "user s", "sys s", "peak RSS MiB",
               "minor faults"]
    have_strace = bool(straces)
    if have_strace:
        headers += data["args"]["syscalls"] + ["futex s"]
    rows = []
    for t in tests:
        name = t["name"]
        for a in allocs:
            s = summary[name][a]
            row = [f"{name} ({t['threads']}t)" if t["threads"] else name, a,
                   fmt(s["time"], 3), f"{fmt(s['time_min'], 2)}–{fmt(s['time_max'], 2)}",
                   fmt(s["wall"], 3), fmt(s["user"]), fmt(s["sys"]), fmt(s["rss_mib"], 1), fmt_int(s["minflt"])]
            if have_strace:
                st = straces.get(name, {}).get(a)
                if st is None:
                    row += ["–"] * (len(data["args"]["syscalls"]) + 1)
                else:
                    c = st["counts"]
                    mark = "+" if st["partial"] else ""
                    row += [fmt_int(c.get(k, {}).get("calls", 0)) + mark for k in data["args"]["syscalls"]]
                    row.append(fmt(c.get("futex", {}).get("seconds", 0.0), 2))
            rows.append(row)
    p.append(table(headers, rows, markdown))
    p.append("")
    if have_strace:
        p.append("System calls: one run under `strace -f -c` per test and allocator (not timed); "
                 "`+`: strace was stopped at --strace-timeout, counts up to then. "
                 "`futex s`: the seconds strace -c gives futex (system time under tracing, "
                 "so only a comparison between allocators; --strace-wall: wall time in the calls, "
                 "waits included).")
        p.append("")
    problems = []
    for t in tests:
        for a in allocs:
            for f in summary[t["name"]][a]["failures"]:
                problems.append(f"{t['name']} under {a}: {f}")
    if problems:
        p.append("## Failures")
        p.append("")
        p += ["- " + x for x in problems]
        p.append("")
    return "\n".join(p), problems


def machine_info():
    return {"cpu": cpu_model("?"), "cpus": os.cpu_count(), "kernel": platform.release(), "glibc": glibc_version(),
            "load_start": loadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--prefix", default=str(default_prefix()), help="where build.sh put its output")
    ap.add_argument("--buddyslab", help="path of libbuddyslab.so")
    ap.add_argument("--with", dest="with_", action="append", metavar="NAME=PATH", help="another allocator")
    ap.add_argument("--env", action="append", metavar="NAME:VAR=VALUE", default=[],
                    help="set VAR=VALUE for allocator NAME's runs only (e.g. buddyslab-prof:BUDDYSLAB_PROF=/tmp/p.%%p "
                         "with --with buddyslab-prof=PATH: the same library with profiling on)")
    ap.add_argument("--only", help="allocators to run, comma-separated, in this order")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (median of them; default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="base thread count (default: CPUs)")
    ap.add_argument("--factors", default="1", help="mimalloc-bench thread counts as multiples of --threads")
    ap.add_argument("--own-factors", default="1", help="own workloads' thread counts as multiples of --threads")
    ap.add_argument("--own", default=",".join(OWN_DEFAULT),
                    help="own workloads (benches/workloads/*.c stems) to run; default " + ",".join(OWN_DEFAULT))
    ap.add_argument("--own-scale", type=float, default=1.0, help="scale argument of the own workloads")
    ap.add_argument("--own-only", action="store_true", help="leave out mimalloc-bench")
    ap.add_argument("--bench-only", action="store_true", help="leave out the own workloads")
    ap.add_argument("--tests", help="only these rows (names as printed, with or without -<T>t)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per timed run")
    ap.add_argument("--no-strace", dest="strace", action="store_false", help="skip the counting pass")
    ap.add_argument("--strace-timeout", type=float, default=300, help="seconds per strace run")
    ap.add_argument("--strace-wall", action="store_true",
                    help="strace -w: time in system calls as wall time (futex waits show)")
    ap.add_argument("--syscalls", default=",".join(SYSCALLS), help="system calls to count")
    ap.add_argument("--json", help="write all runs and the summary here")
    ap.add_argument("--markdown", action="store_true", help="tables as markdown")
    ap.add_argument("--from-json", help="print the report of an earlier --json run; run nothing")
    ap.add_argument("--list", action="store_true", help="list the tests and allocators, run nothing")
    args = ap.parse_args()

    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        text, problems = report(data, args.markdown)
        print(text)
        return 1 if problems else 0

    args.syscalls = args.syscalls.split(",")
    args.env_of = {}
    for spec in args.env:
        name, _, assignment = spec.partition(":")
        var, eq, value = assignment.partition("=")
        if not name or not var or not eq:
            raise SystemExit(f"run.py: --env {spec}: expected NAME:VAR=VALUE")
        args.env_of.setdefault(name, {})[var] = value
    prefix = Path(args.prefix)
    tests = []
    if not args.own_only:
        for f in [int(x) for x in args.factors.split(",")]:
            n = args.threads * f
            tests += bench_tests(prefix, n, "" if f == 1 else f"-{n}t")
        missing = sorted({t.argv[0] for t in tests if not Path(t.argv[0]).exists()})
        if missing:
            note("run.py: not built, left out (benches/peers/build.sh builds them):", " ".join(missing))
            tests = [t for t in tests if Path(t.argv[0]).exists()]
    if not args.bench_only and args.own:
        counts = [args.threads * int(x) for x in args.own_factors.split(",")]
        tests += own_tests(args.own.split(","), counts, args.own_scale)
    tests = select_tests(tests, args.tests)
    allocs = discover_allocators(args)
    if args.list:
        for t in tests:
            print(f"{t.name:<20} {' '.join(t.argv)}")
        for a in allocs:
            print(f"{a[0]:<12} {a[2]:<24} {a[1] or '(no preload)'}")
        return 0
    if not tests:
        raise SystemExit("run.py: no tests selected")

    note(f"run.py: {len(tests)} tests x {len(allocs)} allocators x {args.runs} runs: "
         + ", ".join(a[0] for a in allocs))
    machine = machine_info()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    def assemble(runs, straces):
        return {
            "date": date,
            "machine": machine,
            "args": {"runs": args.runs, "threads": args.threads, "factors": args.factors,
                     "own_factors": args.own_factors, "own_scale": args.own_scale,
                     "syscalls": args.syscalls, "strace_wall": args.strace_wall},
            "allocators": [{"name": n, "library": l, "version": v} for n, l, v in allocs],
            "tests": [{"name": t.name, "group": t.group, "argv": t.argv, "threads": t.threads,
                       "rtime": t.rtime is not None, "checksum": t.checksum} for t in tests],
            "runs": runs,
            "strace": straces,
        }

    def checkpoint(runs, straces):
        if args.json:  # partial results survive an interrupted run
            Path(args.json).write_text(json.dumps(assemble(runs, straces), indent=1))

    runs, straces = measure(tests, allocs, args, checkpoint)
    machine["load_end"] = loadavg()
    data = assemble(runs, straces)
    data["summary"] = summarize(data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        note("run.py: wrote", args.json)
    text, problems = report(data, args.markdown)
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
