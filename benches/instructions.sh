#!/usr/bin/env bash
# Instructions per workload, per allocator, counted by callgrind: the
# secure build's cost where wall time on a shared machine is noise.
#
# Runs each workload once under `valgrind --tool=callgrind` with each
# library preloaded and prints the program's total instructions (every
# thread, the program's own work included) and each library's ratio to the
# first one. Scales are small, so a run takes seconds to a minute under
# callgrind; the instructions of one workload do not depend on the load
# of the machine (threaded ones vary by a percent or two with scheduling).
#
# Workloads: the project's larson, bintree, mixed and prodcons (scale
# 0.05), and from mimalloc-bench (built by benches/peers/build.sh, under
# ${XDG_CACHE_HOME:-~/.cache}/buddyslab-bench): cfrac on a 35-digit number,
# mstress 2 10 25, and glibc-simple with 20000 iterations instead of its
# 2000000 (compiled here from its source, which fixes the count).
#
# usage: bash benches/instructions.sh [--workloads a,b] NAME=LIBRARY...
#   e.g. bash benches/instructions.sh default=target/release/libbuddyslab.so \
#            secure=target/release/libbuddyslab_secure.so
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/out/instructions"
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/buddyslab-bench"
wanted="larson,bintree,mixed,prodcons,cfrac,glibc-simple,mstress"
libs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workloads) wanted=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *=*) libs+=("$1"); shift ;;
        *) echo "instructions.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done
[ ${#libs[@]} -gt 0 ] || { echo "instructions.sh: name at least one NAME=LIBRARY" >&2; exit 64; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 69; }
mkdir -p "$out"

# The command line of workload $1, building what it needs; empty if it
# cannot be run here.
command_of() {
    case "$1" in
        larson|bintree|mixed|prodcons)
            if [ ! -x "$out/$1" ] || [ "$here/workloads/$1.c" -nt "$out/$1" ]; then
                ${CC:-cc} -O2 -pthread -o "$out/$1" "$here/workloads/$1.c"
            fi
            echo "$out/$1 0.05" ;;
        cfrac) [ -x "$prefix/bin/cfrac" ] && echo "$prefix/bin/cfrac 41757646344123832613190542166099121" ;;
        mstress) [ -x "$prefix/bin/mstress" ] && echo "$prefix/bin/mstress 2 10 25" ;;
        glibc-simple)
            local src="$prefix/build/bench/bench/glibc-bench/bench-malloc-simple.c"
            [ -f "$src" ] || return 0
            if [ ! -x "$out/glibc-simple" ]; then
                sed 's/^#define NUM_ITERS 2000000$/#define NUM_ITERS 20000/' "$src" > "$out/glibc-simple.c"
                ${CC:-cc} -O2 -pthread -o "$out/glibc-simple" "$out/glibc-simple.c"
            fi
            echo "$out/glibc-simple" ;;
    esac
}

# Total instructions of `LIBRARY COMMAND...` under callgrind.
instructions() {
    local library=$1; shift
    local file
    file=$(mktemp "$out/callgrind.XXXXXX")
    env -u LD_PRELOAD ${library:+LD_PRELOAD=$library} \
        valgrind --tool=callgrind --callgrind-out-file="$file.%p" "$@" >/dev/null 2>"$file.log"
    grep -h '^summary:' "$file".* | awk '{ s += $2 } END { printf "%.0f\n", s }'
    rm -f "$file" "$file".*
}

header="| workload"
rule="|---"
for spec in "${libs[@]}"; do
    header="$header | ${spec%%=*}"
    rule="$rule|---:"
done
for spec in "${libs[@]:1}"; do
    header="$header | ${spec%%=*} / ${libs[0]%%=*}"
    rule="$rule|---:"
done
echo "$header |"
echo "$rule|"
IFS=, read -r -a workloads <<<"$wanted"
for w in "${workloads[@]}"; do
    cmd=$(command_of "$w")
    if [ -z "$cmd" ]; then
        echo "note: $w not found under $prefix; left out" >&2
        continue
    fi
    counts=()
    for spec in "${libs[@]}"; do
        # shellcheck disable=SC2086 # the command line splits on spaces
        counts+=("$(instructions "${spec#*=}" $cmd)")
    done
    row="| $w"
    for c in "${counts[@]}"; do row="$row | $c"; done
    for c in "${counts[@]:1}"; do row="$row | $(awk -v a="$c" -v b="${counts[0]}" 'BEGIN { printf "%.2f", a / b }')"; done
    echo "$row |"
done
