#!/usr/bin/env bash
# KiB of an allocator's library resident in a program, per library: the
# part of peak RSS that the allocator's own code and data take.
#
# Builds benches/libpages.c (a preloaded probe that reads /proc/self/smaps
# at exit), drops each library from the page cache once with
# benches/peers/run.py's drop_from_page_cache (a file just written can sit
# in large folios, which the kernel maps whole), then runs the program
# RUNS times per library, interleaved, and prints each run's figure and
# the mean.
#
# usage: bash benches/libpages.sh [-n RUNS] NAME=LIBRARY... -- PROGRAM [ARGS...]
#   e.g. bash benches/libpages.sh new=target/release/libbuddyslab.so old=/tmp/old.so -- ls -l /
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/out"
runs=5
libs=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *=*) libs+=("$1"); shift ;;
        *) echo "libpages.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done
[ ${#libs[@]} -gt 0 ] && [ $# -gt 0 ] || { echo "libpages.sh: give NAME=LIBRARY... -- PROGRAM (try --help)" >&2; exit 64; }
case "$runs" in ''|*[!0-9]*) echo "libpages.sh: -n takes a number" >&2; exit 64 ;; esac

mkdir -p "$out"
probe="$out/libpages.so"
if [ ! -e "$probe" ] || [ "$here/libpages.c" -nt "$probe" ]; then
    cc -O2 -shared -fPIC -o "$probe" "$here/libpages.c"
fi
for spec in "${libs[@]}"; do
    lib=${spec#*=}
    [ -f "$lib" ] || { echo "libpages.sh: $lib: no such library" >&2; exit 66; }
    python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import run; run.drop_from_page_cache(sys.argv[2])' \
        "$here/peers" "$lib"
done

declare -A sum all
for ((i = 1; i <= runs; i++)); do
    for spec in "${libs[@]}"; do
        name=${spec%%=*}
        lib=$(realpath "${spec#*=}")
        kib=$(LIBPAGES_NAME=$(basename "$lib") LD_PRELOAD="$probe $lib" "$@" 2>&1 >/dev/null |
            sed -n 's/^libpages: \([0-9]*\) KiB.*/\1/p' | tail -1)
        [ -n "$kib" ] || { echo "libpages.sh: no figure from a run with $name" >&2; exit 70; }
        sum[$name]=$(( ${sum[$name]:-0} + kib ))
        all[$name]="${all[$name]:-} $kib"
    done
done
for spec in "${libs[@]}"; do
    name=${spec%%=*}
    awk -v n="$name" -v s="${sum[$name]}" -v r="$runs" -v a="${all[$name]}" \
        'BEGIN { printf "%-12s mean %6.1f KiB  runs:%s\n", n, s / r, a }'
done
