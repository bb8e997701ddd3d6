#!/usr/bin/env python3
"""Run the C workloads in benches/workloads under several mallocs, side by side.

Every workload runs under every allocator, interleaved: round 1 runs each
workload once under each allocator, then round 2, and so on (the order of
allocators rotates every round), so machine noise lands on all of them
alike and the ratios come from one run of this script. Per run it records
wall time, peak RSS (ru_maxrss) and minor faults (ru_minflt) from wait4(2),
and checks that the workload's stdout (its checksum) is the same under every
allocator. buddyslab's runs also set BUDDYSLAB_STATS=json: the views go to
the run's stderr at exit, and a fragmentation table per workload follows
the main one (--no-frag leaves that out).

Allocators: glibc (no preload), buddyslab (target/release/libbuddyslab.so,
built with `cargo build --release` if missing), and jemalloc, mimalloc and
tcmalloc from the Debian packages when installed. Add others with
--with NAME=PATH.

    python3 benches/compare.py                 # 5 rounds, all workloads and allocators
    python3 benches/compare.py --quick         # smoke run: small scale, 1 round
    python3 benches/compare.py --only glibc,buddyslab --workloads larson,frag
    python3 benches/compare.py --markdown      # the report as markdown

Progress goes to stderr, the report to stdout. The exit status is non-zero
if any run crashed, timed out or printed a different checksum.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
WORKLOADS_DIR = BENCHES / "workloads"
OUT = BENCHES / "out"

# Table order; any other workloads/*.c are appended in name order.
WORKLOAD_ORDER = ["larson", "prodcons", "bintree", "mixed", "cache_thrash", "thread_churn", "frag",
                  "bigblocks", "reallocgrow"]
# Workloads that run as several rows, each with its own count argument
# (the thread count); --threads does not change these.
VARIANTS = {"bigblocks": [("bigblocks-1t", "1"), ("bigblocks-2t", "2")]}

# name -> (Debian package, library file name prefix)
PEERS = {
    "jemalloc": ("libjemalloc2", "libjemalloc.so"),
    "mimalloc": ("libmimalloc2.0", "libmimalloc.so"),
    "tcmalloc": ("libtcmalloc-minimal4", "libtcmalloc_minimal.so"),
}
LIB_DIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]

QUICK_SCALE = 0.1
RSS_LINE = re.compile(r"^rss (\S+) ([0-9.]+) MiB$")


def note(*parts, end="\n"):
    print(*parts, file=sys.stderr, end=end, flush=True)


def loud(*parts):
    """A problem the reader must not miss."""
    note("!!!", *parts)


# ---------------------------------------------------------------- building


def compiler():
    return shlex.split(os.environ.get("CC", "cc"))


def build_c(source, binary):
    """Compiles one C file unless the binary is newer than the source and
    than every header next to it (workloads/common.h, included as
    `#include "common.h"`)."""
    inputs = [source, *sorted(source.parent.glob("*.h"))]
    newest = max(p.stat().st_mtime for p in inputs)
    if binary.exists() and binary.stat().st_mtime >= newest:
        return
    cmd = compiler() + ["-O2", "-pthread", "-Wall", "-o", str(binary), str(source)]
    note("build:", " ".join(cmd))
    subprocess.run(cmd, check=True)


def discover_workloads():
    """Row names in table order, and for each its source file and the count
    argument it always gets (None: --threads or the workload's default)."""
    found = {p.stem: p for p in sorted(WORKLOADS_DIR.glob("*.c"))}
    stems = [w for w in WORKLOAD_ORDER if w in found]
    stems += [w for w in found if w not in stems]
    order, specs = [], {}
    for stem in stems:
        for name, count in VARIANTS.get(stem, [(stem, None)]):
            order.append(name)
            specs[name] = (found[stem], count)
    return order, specs


# ---------------------------------------------------------------- allocators


def cargo_target_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    return Path(target) if target else REPO / "target"


def build_buddyslab():
    cmd = ["cargo", "build", "--release"]
    note("build:", " ".join(cmd), f"(in {REPO})")
    try:
        return subprocess.run(cmd, cwd=REPO).returncode == 0
    except FileNotFoundError:
        return False


def find_peer(package, prefix):
    """Path of a peer's shared library from its Debian package, or None."""
    candidates = []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False
        )
        if listing.returncode == 0:
            candidates = [Path(line) for line in listing.stdout.splitlines()]
    except FileNotFoundError:
        pass
    if not candidates:  # not a Debian system, or installed by hand: look in the usual places
        candidates = [p for d in LIB_DIRS for p in Path(d).glob(prefix + "*")]
    # Prefer the shortest versioned name (libjemalloc.so.2 over .so.2.0.x, no _debug).
    libs = [p for p in candidates if p.name.startswith(prefix) and p.exists()]
    libs.sort(key=lambda p: (len(p.name), p.name))
    return str(libs[0]) if libs else None


def discover_allocators(args):
    """Ordered list of (name, library path or None for glibc)."""
    wanted = set(args.only.split(",")) if args.only else None
    allocators = [("glibc", None)]

    so = cargo_target_dir() / "release" / "libbuddyslab.so"
    if wanted is None or "buddyslab" in wanted:
        if args.rebuild or not so.exists():
            if not build_buddyslab():
                loud("buddyslab: `cargo build --release` failed; buddyslab is left out")
        if so.exists():
            allocators.append(("buddyslab", str(so)))
        elif wanted is not None:
            sys.exit(f"buddyslab: {so} not found")
        else:
            note(f"note: {so} not found; buddyslab left out")

    for name, (package, prefix) in PEERS.items():
        if wanted is not None and name not in wanted:
            continue
        path = find_peer(package, prefix)
        if path:
            allocators.append((name, path))
        elif wanted is not None:
            sys.exit(f"{name}: not installed (apt-get install -y {package})")
        else:
            note(f"note: {name} not installed (apt-get install -y {package}); left out")

    for spec in args.with_:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--with wants NAME=PATH, got {spec!r}")
        if not Path(path).exists():
            sys.exit(f"--with {name}: {path} does not exist")
        allocators = [a for a in allocators if a[0] != name]
        allocators.append((name, str(Path(path).resolve())))

    if wanted is not None:
        known = {a[0] for a in allocators}
        unknown = wanted - known
        if unknown:
            sys.exit(f"--only: unknown allocator(s) {', '.join(sorted(unknown))}; "
                     f"have {', '.join(sorted(known))}")
        allocators = [a for a in allocators if a[0] in wanted]
    return allocators


def environment(library, extra=None):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if library:
        env["LD_PRELOAD"] = library
    env.update(extra or {})
    return env


def command_line(library, argv):
    """The command as a person would type it, for reports."""
    prefix = f"LD_PRELOAD={shlex.quote(library)} " if library else ""
    return prefix + " ".join(shlex.quote(a) for a in argv)


def probe(allocators, probe_binary):
    """Keeps the allocators whose malloc/free/realloc really replace glibc's."""
    good, bad = [], []
    for name, library in allocators:
        run = subprocess.run(
            [str(probe_binary)], env=environment(library), capture_output=True, text=True
        )
        origins = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
        expected = os.path.realpath(library) if library else None
        problems = []
        if run.returncode != 0:
            problems.append(f"probe exited with {describe_exit(run.returncode)}")
        for function in ("malloc", "free", "realloc"):
            origin = origins.get(function, "?")
            if expected and os.path.realpath(origin) != expected:
                problems.append(f"{function} comes from {origin}")
            if not expected and "libc.so" not in origin:
                problems.append(f"{function} comes from {origin}, not libc")
        if problems:
            loud(f"{name}: not usable as a preloaded malloc: {'; '.join(problems)}")
            loud(f"  command: {command_line(library, [str(probe_binary)])}")
            for line in run.stderr.splitlines()[-5:]:
                loud("  stderr:", line)
            bad.append(name)
        else:
            good.append((name, library))
    return good, bad


# ---------------------------------------------------------------- running


def describe_exit(code):
    """How a run ended, in words: its exit code or the signal that killed it."""
    if code is None:
        return "?"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Run:
    """One execution of one workload under one allocator."""

    def __init__(self, workload, allocator, argv, library):
        self.workload, self.allocator = workload, allocator
        self.command = command_line(library, argv)
        self.wall = self.maxrss_kib = self.minflt = self.utime = self.stime = None
        self.exit = None
        self.timed_out = False
        self.stdout = self.stderr = ""

    @property
    def ok(self):
        return self.exit == 0 and not self.timed_out

    def failure(self):
        if self.timed_out:
            return "timed out"
        return ("crashed: " if self.exit < 0 else "failed: ") + describe_exit(self.exit)

    def frag(self):
        """Fragmentation figures from the BUDDYSLAB_STATS=json line on stderr
        (the last one, should the workload have started other processes), or None."""
        for line in reversed(self.stderr.splitlines()):
            if line.startswith('{"buddyinfo"'):
                try:
                    return frag_figures(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    return None
        return None

    def rss_phases(self):
        phases = {}
        for line in self.stderr.splitlines():
            m = RSS_LINE.match(line.strip())
            if m:
                phases[m.group(1)] = float(m.group(2))
        return phases


FRAG_ORDERS = (0, 3, 9)


def frag_figures(views):
    """The fragmentation figures of one run, from buddyslab's JSON views."""
    e = views["extfrag"]
    internal = e["internal"]
    sampled = internal["slab"].get("sampled") or {}
    return {
        "unusable_index": {str(o): e["unusable_index"][o] for o in FRAG_ORDERS},
        "slab_partial_bytes": e["slab_partial_bytes"],
        "slab_bytes": e["slab_bytes"],
        "pages_waste": internal["pages"]["handed_out"] - internal["pages"]["requested"],
        "pages_handed": internal["pages"]["handed_out"],
        "large_waste": internal["large"]["handed_out"] - internal["large"]["requested"],
        "large_handed": internal["large"]["handed_out"],
        "slab_samples": sampled.get("samples", 0),
        "slab_est_waste": sampled.get("est_live_waste") if sampled.get("samples") else None,
        "slab_waste_fraction": sampled.get("waste_fraction"),
        "slab_held": internal["slab"]["held"],
        "slab_worst_waste": internal["slab"]["worst_waste"],
    }


def execute(workload, allocator, argv, library, timeout, measure_binary, scratch, extra_env=None):
    """Runs argv under `measure` (see measure.c), which reports the child's rusage."""
    run = Run(workload, allocator, argv, library)
    result_path = scratch / "result"
    result_path.unlink(missing_ok=True)
    with open(scratch / "stdout", "w+b") as out, open(scratch / "stderr", "w+b") as err:
        cmd = [str(measure_binary), str(result_path), str(math.ceil(timeout)), library or ""]
        try:
            launcher = subprocess.run(cmd + argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=err, env=environment(None, extra_env), timeout=timeout + 30)
            launcher_exit = launcher.returncode
        except subprocess.TimeoutExpired:
            launcher_exit = None
        out.seek(0)
        err.seek(0)
        run.stdout = out.read().decode(errors="replace")
        run.stderr = err.read().decode(errors="replace")
    try:
        result = dict(line.split() for line in result_path.read_text().splitlines())
    except (OSError, ValueError):
        result = {}
    if launcher_exit != 0 or "exit" not in result:
        run.exit, run.timed_out = -1, launcher_exit is None
        run.stderr += f"\n(measure failed: {describe_exit(launcher_exit or 0)})"
        return run
    run.wall = float(result["wall_s"])
    run.maxrss_kib = int(result["maxrss_kib"])
    run.minflt = int(result["minflt"])
    run.utime, run.stime = float(result["utime_s"]), float(result["stime_s"])
    signal_number = int(result["signal"])
    run.exit = -signal_number if signal_number else int(result["exit"])
    run.timed_out = result["timed_out"] == "1"
    return run


# ---------------------------------------------------------------- reporting


def median(values):
    return statistics.median(values) if values else None


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def render(headers, aligns, rows, markdown):
    """A table: aligned text for the terminal, or a markdown pipe table."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, aligns)]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded).rstrip()

    out = [line(headers)]
    if markdown:
        out.append("|" + "|".join(
            ("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
            for w, a in zip(widths, aligns)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def report(args, workloads, allocators, runs, problems, details, scale):
    md = args.markdown
    baseline = args.baseline if args.baseline in [a for a, _ in allocators] else None
    base = baseline or "baseline"
    out = []

    def heading(text):
        out.append(f"### {text}" if md else text)
        out.append("")

    loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    glibc = " ".join(platform.libc_ver())
    info = [
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, {glibc}, load average {loadavg}",
        f"{args.runs} interleaved round(s), scale {scale}"
        + (f", threads {args.threads}" if args.threads else "")
        + "; time and faults are medians; peak RSS is the median ru_maxrss",
        "allocators: " + ", ".join(f"{n} = {p or 'no preload'}" for n, p in allocators),
    ]
    out += [("- " if md else "") + line for line in info]
    out.append("")

    headers = ["workload", "allocator", "time s", "±%", f"× {base}", "peak RSS MiB",
               f"RSS × {base}", "minor faults", "status"]
    aligns = "llrrrrrrl"
    rows = []
    time_ratios = {a: [] for a, _ in allocators}
    rss_ratios = {a: [] for a, _ in allocators}
    for w in workloads:
        stats = {}
        for a, _ in allocators:
            good = [r for r in runs[(w, a)] if r.ok]
            stats[a] = (median([r.wall for r in good]),
                        median([r.maxrss_kib / 1024 for r in good]),
                        median([r.minflt for r in good]),
                        [r.wall for r in good])
        base_time, base_rss = (stats[baseline][0], stats[baseline][1]) if baseline else (None, None)
        for a, _ in allocators:
            t, rss, faults, walls = stats[a]
            spread = (max(walls) - min(walls)) / 2 / t * 100 if len(walls) > 1 and t else None
            t_ratio = t / base_time if t and base_time else None
            r_ratio = rss / base_rss if rss and base_rss else None
            if t_ratio:
                time_ratios[a].append(t_ratio)
            if r_ratio:
                rss_ratios[a].append(r_ratio)
            status = "; ".join(problems.get((w, a), [])) or "ok"
            rows.append([w, a, fmt(t, ".3f"), fmt(spread, ".0f"), fmt(t_ratio, ".2f"),
                         fmt(rss, ".1f"), fmt(r_ratio, ".2f"), fmt(faults, ".0f"), status])
    for a, _ in allocators:
        n = len(time_ratios[a])
        label = "geomean" if n == len(workloads) else f"geomean ({n}/{len(workloads)})"
        rows.append([label, a, "", "", fmt(geomean(time_ratios[a]), ".2f"), "",
                     fmt(geomean(rss_ratios[a]), ".2f"), "", ""])
    heading("Time, peak RSS and minor faults per workload")
    out.append(render(headers, aligns, rows, md))
    out.append("")

    # Workloads that print `rss <phase> <MiB> MiB` lines (frag) get a table of their own.
    for w in workloads:
        phases = []
        per_alloc = {}
        for a, _ in allocators:
            good = [r.rss_phases() for r in runs[(w, a)] if r.ok]
            for p in good:
                phases += [k for k in p if k not in phases]
            per_alloc[a] = good
        if not phases:
            continue
        rows = []
        for a, _ in allocators:
            rows.append([a] + [fmt(median([p[k] for p in per_alloc[a] if k in p]), ".1f")
                               for k in phases])
        heading(f"{w}: RSS MiB after each phase (median)")
        out.append(render(["allocator"] + phases, "l" + "r" * len(phases), rows, md))
        out.append("")

    if not args.no_frag:
        frag_report(workloads, runs, heading, out, md)

    if problems:
        heading("Problems")
        for (w, a), what in problems.items():
            out.append(("- " if md else "") + f"{w} under {a}: {'; '.join(what)}")
            for lines in details.get((w, a), []):
                if md:
                    out += ["  ```"] + ["  " + line for line in lines] + ["  ```"]
                else:
                    out += ["    " + line for line in lines]
        out.append("")
    print("\n".join(out).rstrip())


def frag_summary(workloads, runs):
    """Per workload: glibc's and buddyslab's median peak RSS and the median of
    each of buddyslab's fragmentation figures over its runs."""
    summary = {}
    for w in workloads:
        figures = [f for r in runs.get((w, "buddyslab"), []) if r.ok for f in [r.frag()] if f]
        if not figures:
            continue

        def med(key, sub=None):
            values = [f[key][sub] if sub is not None else f[key] for f in figures]
            values = [v for v in values if v is not None]
            return median(values) if values else None
        rss = {a: median([r.maxrss_kib / 1024 for r in runs.get((w, a), []) if r.ok])
               for a in ("glibc", "buddyslab")}
        summary[w] = {
            "runs": len(figures),
            "glibc_peak_rss_mib": rss["glibc"], "buddyslab_peak_rss_mib": rss["buddyslab"],
            "unusable_index": {str(o): med("unusable_index", str(o)) for o in FRAG_ORDERS},
            **{k: med(k) for k in ("slab_partial_bytes", "slab_bytes", "pages_waste", "pages_handed",
                                   "large_waste", "large_handed", "slab_samples", "slab_est_waste",
                                   "slab_waste_fraction", "slab_held", "slab_worst_waste")},
        }
    return summary


def frag_report(workloads, runs, heading, out, md):
    summary = frag_summary(workloads, runs)
    if not summary:
        return
    kib = lambda v: fmt(v / 1024 if v is not None else None, ".0f")
    headers = ["workload", "glibc RSS MiB", "buddyslab RSS MiB"] + \
        [f"unusable o{o}" for o in FRAG_ORDERS] + \
        ["slab partial", "pages waste KiB", "large waste KiB", "slab waste KiB", "slab bound KiB"]
    rows = []
    for w, f in summary.items():
        share = f["slab_partial_bytes"] / f["slab_bytes"] if f["slab_bytes"] else None
        partial = (f"{share:.3f} ({kib(f['slab_partial_bytes'])} KiB)" if share is not None else "-")
        if f["slab_samples"]:
            slab = f"{kib(f['slab_est_waste'])} ({f['slab_waste_fraction']:.3f}, {f['slab_samples']:.0f} samples)"
        else:
            slab = "no samples"
        rows.append([w, fmt(f["glibc_peak_rss_mib"], ".1f"), fmt(f["buddyslab_peak_rss_mib"], ".1f")]
                    + [fmt(f["unusable_index"][str(o)], ".3f") for o in FRAG_ORDERS]
                    + [partial, kib(f["pages_waste"]), kib(f["large_waste"]), slab,
                       kib(f["slab_worst_waste"])])
    heading("Fragmentation under buddyslab at exit (BUDDYSLAB_STATS=json; medians over its runs)")
    out.append(render(headers, "lrr" + "r" * len(FRAG_ORDERS) + "rrrrr", rows, md))
    note = ("unusable oN: the zone's unusable free space index for order N (kernel format); "
            "slab partial: share of slab memory in partially used slabs; pages/large waste: bytes "
            "handed out beyond the requests, exact, summed since the start; slab waste: estimated "
            "from sampled request sizes over the live objects (fraction of the object size); slab "
            "bound: the class table's worst case over the live objects")
    out.append(("- " if md else "") + note)
    out.append("")


# ---------------------------------------------------------------- charts
#
# One SVG per metric (time ratio, peak RSS ratio), drawn by this script:
# a group of bars per workload, one bar per allocator, a line at 1.0 (the
# baseline), and the date, machine and versions under the title. Made from
# the --json output, so a finished run can be charted again with
# --charts-from without running anything.

# One colour per malloc, whatever its place in a run: the same map as the
# tool's charts (cli/src/chart.rs, colour_of), so every chart agrees.
NAMED_COLOURS = {"glibc": "#7f7f7f", "buddyslab": "#d62728", "jemalloc": "#1f77b4",
                 "mimalloc": "#2ca02c", "tcmalloc": "#ff7f0e"}
OTHER_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79"]


def colour_of(name):
    """A malloc's bar colour: its own for the named ones, else a stable pick."""
    if name in NAMED_COLOURS:
        return NAMED_COLOURS[name]
    h = 0xcbf29ce484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001b3) % (1 << 64)
    return OTHER_COLOURS[h % len(OTHER_COLOURS)]


def cpu_model(default):
    """The CPU's model name from /proc/cpuinfo, or `default` where none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def machine_description():
    """'CPU model, N cores' from /proc/cpuinfo (platform's name elsewhere)."""
    model = cpu_model(platform.processor() or platform.machine())
    return f"{model}, {os.cpu_count()} cores"


def package_version(package):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                           capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    except FileNotFoundError:
        return None


def allocator_versions(names):
    """name -> version text: Debian package versions, buddyslab's commit."""
    versions = {}
    for name in names:
        if name == "glibc":
            versions[name] = package_version("libc6")
        elif name in PEERS:
            versions[name] = package_version(PEERS[name][0])
        elif name.startswith("buddyslab"):
            r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                               capture_output=True, text=True, check=False)
            versions[name] = r.stdout.strip() or None
    return {k: v for k, v in versions.items() if v}


def run_metadata(allocator_names):
    import datetime
    return {"date": datetime.date.today().isoformat(), "machine": machine_description(),
            "kernel": f"{platform.system()} {platform.release()}",
            "versions": allocator_versions(allocator_names)}


def chart_ratios(data, baseline):
    """From --json data: workloads in order, allocators in order, and
    {metric: {(workload, allocator): median / baseline median}}."""
    workloads, allocators = [], []
    samples = {}
    for r in data["results"]:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
        if r["allocator"] not in allocators:
            allocators.append(r["allocator"])
        if r["exit"] == 0 and not r["timed_out"]:
            cell = samples.setdefault((r["workload"], r["allocator"]), ([], []))
            cell[0].append(r["wall_s"])
            cell[1].append(r["maxrss_kib"])
    ratios = {"time": {}, "rss": {}}
    for w in workloads:
        base = samples.get((w, baseline))
        if not base:
            continue
        for a in allocators:
            cell = samples.get((w, a))
            if not cell:
                continue
            for metric, i in (("time", 0), ("rss", 1)):
                b = median(base[i])
                if b:
                    ratios[metric][(w, a)] = median(cell[i]) / b
    return workloads, allocators, ratios


def svg_text(x, y, text, size=12, anchor="start", extra=""):
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{extra}>{text}</text>')


def svg_bar_chart(title, ylabel, workloads, allocators, values, meta, baseline):
    """A grouped bar chart as SVG text; `values` maps (workload, allocator)
    to a ratio. Bars taller than the axis are cut and labelled."""
    bar_w, gap, left, top, plot_h = 14, 18, 60, 96, 260
    group_w = bar_w * len(allocators) + gap
    width = max(left + group_w * len(workloads) + 20, 640)
    height = top + plot_h + 70 + 18 * ((len(allocators) + 3) // 4)
    present = [v for v in values.values() if v]
    y_max = max(1.5, min(max(present, default=1.0) * 1.1, 5.0))
    step = 0.25 if y_max <= 2 else 0.5 if y_max <= 4 else 1.0

    def y_of(v):
        return top + plot_h - min(v, y_max) / y_max * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           svg_text(left, 24, title, 16, extra=' font-weight="bold"'),
           svg_text(left, 44, f"{meta.get('date', '?')} on {meta.get('machine', '?')}"
                    + (f", {meta['kernel']}" if meta.get("kernel") else "")
                    + (f"; medians of {meta['runs']} runs per malloc" if meta.get("runs") else ""), 11),
           svg_text(left, 60, "versions: " + ", ".join(
               f"{k} {v}" for k, v in meta.get("versions", {}).items()), 11),
           svg_text(left, 76, f"{ylabel}; lower is better; 1.0 = {baseline}", 11)]
    tick = 0.0
    while tick <= y_max + 1e-9:
        y = y_of(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(svg_text(left - 6, y + 4, f"{tick:.2f}", 10, "end"))
        tick += step
    # The 1.0 line goes under the bars, so it strikes through no label.
    y1 = y_of(1.0)
    out.append(f'<line x1="{left}" y1="{y1:.1f}" x2="{width - 10}" y2="{y1:.1f}" stroke="black" '
               'stroke-dasharray="4 3"/>')
    for gi, w in enumerate(workloads):
        x0 = left + gi * group_w + gap / 2
        for ai, a in enumerate(allocators):
            v = values.get((w, a))
            if v is None:
                continue
            x = x0 + ai * bar_w
            y = y_of(v)
            colour = colour_of(a)
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2}" height="{top + plot_h - y:.1f}" '
                       f'fill="{colour}"><title>{w} {a}: {v:.2f}</title></rect>')
            if v > y_max:
                out.append(svg_text(x + bar_w / 2, y - 3, f"{v:.1f}", 9, "middle"))
        out.append(svg_text(x0 + bar_w * len(allocators) / 2, top + plot_h + 16, w, 11, "middle"))
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>')
    for ai, a in enumerate(allocators):
        lx = left + (ai % 4) * 150
        ly = top + plot_h + 40 + 18 * (ai // 4)
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" '
                   f'fill="{colour_of(a)}"/>')
        out.append(svg_text(lx + 18, ly, a, 11))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_charts(data, baseline, directory, meta):
    """Writes compare-time.svg and compare-rss.svg into `directory`."""
    workloads, allocators, ratios = chart_ratios(data, baseline)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, title, ylabel in (
            ("time", "Wall time relative to " + baseline, "median wall time / baseline's"),
            ("rss", "Peak RSS relative to " + baseline, "median peak RSS (ru_maxrss) / baseline's")):
        path = directory / f"compare-{metric}.svg"
        path.write_text(svg_bar_chart(title, ylabel, workloads, allocators, ratios[metric], meta, baseline))
        paths.append(path)
    return paths


def charts_from(args):
    """--charts-from: charts from a previous run's --json file. Date,
    machine and versions come from the file when it has them; otherwise
    the file's date and this machine (said so on stderr)."""
    import datetime
    path = Path(args.charts_from)
    data = json.loads(path.read_text())
    meta = dict(data.get("meta") or {})
    if data.get("runs") and "runs" not in meta:
        meta["runs"] = data["runs"]
    if not meta:
        note(f"{path}: no date/machine/versions recorded; using the file's date and this machine")
        meta = run_metadata(list(data.get("allocators", {})))
        meta["date"] = datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()
    for chart in write_charts(data, args.baseline, args.charts_dir or REPO / "docs", meta):
        print(chart)
    return 0


# ---------------------------------------------------------------- main


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, help="interleaved rounds (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: scale {QUICK_SCALE}, 1 round")
    p.add_argument("--scale", type=float, help="work multiplier passed to every workload")
    p.add_argument("--threads", type=int, help="thread count passed to every workload")
    p.add_argument("--workloads", help="comma-separated workloads (default: all)")
    p.add_argument("--only", help="comma-separated allocators (default: all found)")
    p.add_argument("--with", dest="with_", action="append", default=[], metavar="NAME=PATH",
                   help="add an allocator library (repeatable)")
    p.add_argument("--baseline", default="glibc", help="allocator the ratios divide by")
    p.add_argument("--rebuild", action="store_true",
                   help="run `cargo build --release` even if libbuddyslab.so exists")
    p.add_argument("--timeout", type=float, default=120, help="seconds per run (default 120)")
    p.add_argument("--markdown", action="store_true", help="print the report as markdown")
    p.add_argument("--json", metavar="FILE", help="also write every run's numbers to FILE")
    p.add_argument("--no-frag", action="store_true",
                   help="do not set BUDDYSLAB_STATS=json on buddyslab's runs (no fragmentation table)")
    p.add_argument("--list", action="store_true", help="list workloads and allocators, then exit")
    p.add_argument("--charts-dir", metavar="DIR",
                   help="where the SVG charts go (default docs/; benches/out/ with --quick)")
    p.add_argument("--charts-from", metavar="FILE.json",
                   help="only draw the charts from a previous run's --json output, then exit")
    args = p.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main():
    args = parse_args()
    if args.charts_from:
        return charts_from(args)
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)

    all_workloads, sources = discover_workloads()
    if args.workloads:
        # A workload with variants names all of its rows.
        workloads = [v for w in args.workloads.split(",")
                     for v in ([name for name, _ in VARIANTS[w]] if w in VARIANTS else [w])]
        unknown = [w for w in workloads if w not in sources]
        if unknown:
            sys.exit(f"--workloads: unknown {', '.join(unknown)}; have {', '.join(all_workloads)}")
    else:
        workloads = all_workloads

    allocators = discover_allocators(args)
    if args.list:
        print("workloads:", " ".join(all_workloads))
        for name, path in allocators:
            print(f"allocator: {name} = {path or 'no preload'}")
        return 0

    OUT.mkdir(exist_ok=True)
    binaries = {}
    for w in workloads:
        source = sources[w][0]
        binaries[w] = OUT / source.stem
        build_c(source, binaries[w])
    probe_binary = OUT / "which_malloc"
    build_c(BENCHES / "which_malloc.c", probe_binary)
    measure_binary = OUT / "measure"
    build_c(BENCHES / "measure.c", measure_binary)
    scratch = Path(tempfile.mkdtemp(prefix="compare-", dir=OUT))

    allocators, unusable = probe(allocators, probe_binary)
    problems = {}
    for name in unusable:
        for w in workloads:
            problems.setdefault((w, name), []).append("not interposed, not run")
    details = {}  # (workload, allocator) -> [[command, output lines...], ...] for the report
    if not allocators:
        sys.exit("no usable allocator")

    def workload_args(w):
        count = sources[w][1] or (str(args.threads) if args.threads else None)
        return [format(scale, "g")] + ([count] if count else [])
    runs = {(w, a): [] for w in workloads for a, _ in allocators}
    reference = {}  # workload -> (allocator, stdout) the others must match
    failed = set()  # (workload, allocator) pairs that crashed: not run again
    for round_number in range(args.runs):
        k = round_number % len(allocators)
        order = allocators[k:] + allocators[:k]
        for w in workloads:
            for a, library in order:
                if (w, a) in failed:
                    continue
                argv = [str(binaries[w])] + workload_args(w)
                note(f"[{round_number + 1}/{args.runs}] {w:<13} {a:<10}", end="")
                extra = {"BUDDYSLAB_STATS": "json"} if a == "buddyslab" and not args.no_frag else None
                run = execute(w, a, argv, library, args.timeout, measure_binary, scratch, extra)
                runs[(w, a)].append(run)
                if not run.ok:
                    note(f" FAILED ({run.failure()})")
                    loud(f"{w} under {a}: {run.failure()}")
                    loud(f"  command: {run.command}")
                    for line in run.stderr.splitlines()[-10:]:
                        loud("  stderr:", line)
                    problems.setdefault((w, a), []).append(run.failure())
                    details.setdefault((w, a), []).append(
                        ["$ " + run.command] + run.stderr.strip().splitlines()[-3:])
                    failed.add((w, a))
                    continue
                note(f" {run.wall:7.3f} s {run.maxrss_kib / 1024:8.1f} MiB")
                if w not in reference:
                    reference[w] = (a, run.stdout, run.command)
                elif run.stdout != reference[w][1]:
                    ref_alloc, ref_out, ref_cmd = reference[w]
                    loud(f"{w}: output under {a} differs from {ref_alloc}")
                    loud(f"  {ref_alloc}: {ref_cmd}")
                    for line in ref_out.splitlines():
                        loud("    ", line)
                    loud(f"  {a}: {run.command}")
                    for line in run.stdout.splitlines():
                        loud("    ", line)
                    what = f"checksum differs from {ref_alloc}"
                    if what not in problems.get((w, a), []):
                        problems.setdefault((w, a), []).append(what)
                        details.setdefault((w, a), []).append(
                            ["$ " + ref_cmd] + ref_out.strip().splitlines()[-3:]
                            + ["$ " + run.command] + run.stdout.strip().splitlines()[-3:])

    data = {
        "scale": scale, "runs": args.runs,
        "meta": run_metadata([a for a, _ in allocators]),
        "allocators": dict(allocators),
        "results": [
            {"workload": r.workload, "allocator": r.allocator, "command": r.command,
             "wall_s": r.wall, "maxrss_kib": r.maxrss_kib, "minflt": r.minflt,
             "utime_s": r.utime, "stime_s": r.stime, "exit": r.exit,
             "timed_out": r.timed_out, "stdout": r.stdout,
             "rss_phases": r.rss_phases(),
             **({"frag": r.frag()} if r.allocator == "buddyslab" and not args.no_frag else {})}
            for key in runs for r in runs[key]],
    }
    if not args.no_frag:
        data["fragmentation"] = frag_summary(workloads, runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    charts_dir = args.charts_dir or (OUT if args.quick else REPO / "docs")
    for chart in write_charts(data, args.baseline, charts_dir, data["meta"]):
        note(f"chart: {chart}")

    shutil.rmtree(scratch, ignore_errors=True)
    report(args, workloads, allocators, runs, problems, details, scale)
    if problems:
        loud(f"{len(problems)} workload/allocator pair(s) crashed, timed out, "
             "mismatched or could not run; see Problems above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
