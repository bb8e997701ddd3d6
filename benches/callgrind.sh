#!/usr/bin/env bash
# Instructions per malloc+free pair, per allocator, counted by callgrind.
#
# Runs benches/pairs.c (N malloc+free pairs of one size after a warm-up)
# under `valgrind --tool=callgrind` with each allocator preloaded, once with
# N pairs and once with 0, and prints (Ir(N) - Ir(0)) / N: start-up,
# warm-up and exit cancel out. The figure includes the loop's own
# instructions (10 per pair with glibc, measured), the same for every allocator.
# Instruction counts, unlike times, do not care how noisy the machine is.
#
# usage: bash benches/callgrind.sh [-n PAIRS] [-s SIZE] [--only a,b] [--with NAME=PATH]...
#   -n PAIRS     pairs in the measured run (default 1000000)
#   -s SIZE      bytes per malloc (default 64)
#   --only LIST  comma-separated allocators (glibc buddyslab jemalloc mimalloc tcmalloc)
#   --with N=P   add the library P under the name N
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out="$here/out"
pairs=1000000
size=64
only=""
extra=()

while [ $# -gt 0 ]; do
    case "$1" in
        -n) pairs=$2; shift 2 ;;
        -s) size=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --with) extra+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done
case "$pairs$size" in *[!0-9]*) echo "callgrind.sh: -n and -s take numbers" >&2; exit 64 ;; esac
[ "$pairs" -gt 0 ] || { echo "callgrind.sh: -n must be positive" >&2; exit 64; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 69; }

wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

mkdir -p "$out"
bin="$out/pairs"
if [ ! -x "$bin" ] || [ "$here/pairs.c" -nt "$bin" ]; then
    # -fno-builtin: the compiler must not reason about malloc/free and drop pairs.
    ${CC:-cc} -O2 -fno-builtin -o "$bin" "$here/pairs.c"
fi

# name=path ("" for glibc), in table order
allocators=("glibc=")
if wanted buddyslab; then
    so="${CARGO_TARGET_DIR:-$repo/target}/release/libbuddyslab.so"
    if [ ! -f "$so" ]; then
        echo "building buddyslab: cargo build --release" >&2
        (cd "$repo" && cargo build --release) >&2 || echo "!!! buddyslab: build failed; left out" >&2
    fi
    if [ -f "$so" ]; then allocators+=("buddyslab=$so"); else echo "note: $so not found; buddyslab left out" >&2; fi
fi
for peer in jemalloc:libjemalloc2:libjemalloc.so mimalloc:libmimalloc2.0:libmimalloc.so \
            tcmalloc:libtcmalloc-minimal4:libtcmalloc_minimal.so; do
    IFS=: read -r name package prefix <<<"$peer"
    wanted "$name" || continue
    path=$(dpkg -L "$package" 2>/dev/null | grep "/$prefix" | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2- || true)
    if [ -n "$path" ] && [ -f "$path" ]; then
        allocators+=("$name=$path")
    else
        echo "note: $name not installed (apt-get install -y $package); left out" >&2
    fi
done
for spec in "${extra[@]+"${extra[@]}"}"; do allocators+=("$spec"); done
if [ -n "$only" ] && ! wanted glibc; then allocators=("${allocators[@]:1}"); fi

tmp=$(mktemp -d "$out/callgrind.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Ir of one run: `instructions NAME LIBRARY PAIRS`
instructions() {
    local name=$1 library=$2 n=$3 file="$tmp/$1.$3.out"
    local -a env=(env -u LD_PRELOAD)
    [ -n "$library" ] && env+=("LD_PRELOAD=$library")
    if ! "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" "$n" "$size" \
            >"$tmp/$name.$n.log" 2>&1; then
        echo "!!! $name: pairs $n $size failed under callgrind:" >&2
        echo "    ${env[*]} valgrind --tool=callgrind $bin $n $size" >&2
        tail -n 15 "$tmp/$name.$n.log" | sed 's/^/    /' >&2
        return 1
    fi
    awk '/^summary:/ { print $2; exit }' "$file"
}

failed=0
rows=("allocator|Ir ($pairs pairs)|Ir (0 pairs)|Ir per pair")
for spec in "${allocators[@]}"; do
    name=${spec%%=*}
    library=${spec#*=}
    echo "callgrind: $name" >&2
    if [ -n "$library" ] && [ ! -f "$library" ]; then
        echo "!!! $name: $library does not exist" >&2
        rows+=("$name|missing|-|-"); failed=1; continue
    fi
    if ! with=$(instructions "$name" "$library" "$pairs") || ! without=$(instructions "$name" "$library" 0); then
        rows+=("$name|failed|-|-"); failed=1; continue
    fi
    per_pair=$(awk -v a="$with" -v b="$without" -v n="$pairs" 'BEGIN { printf "%.1f", (a - b) / n }')
    rows+=("$name|$with|$without|$per_pair")
done

printf '%s pairs of malloc(%s)+free, Ir from callgrind (valgrind %s)\n\n' \
    "$pairs" "$size" "$(valgrind --version | sed 's/valgrind-//')"
# A markdown table, padded so that it also reads in a terminal.
printf '%s\n' "${rows[@]}" | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    END {
        for (r = 1; r <= NR; r++) {
            line = "| " sprintf("%-" w[1] "s", cell[r, 1])
            for (i = 2; i <= 4; i++) line = line " | " sprintf("%" w[i] "s", cell[r, i])
            print line " |"
            if (r == 1) {
                line = "|" sprintf("%" w[1] + 2 "s", "")
                gsub(/ /, "-", line)
                for (i = 2; i <= 4; i++) { dash = sprintf("%" w[i] + 1 "s", ""); gsub(/ /, "-", dash); line = line "|" dash ":" }
                print line "|"
            }
        }
    }'
printf '\nIr per pair = (Ir(%s pairs) - Ir(0 pairs)) / %s; it includes ~10 instructions of the loop itself.\n' "$pairs" "$pairs"
exit $failed
