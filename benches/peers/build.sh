#!/usr/bin/env bash
# Builds the mimalloc-bench programs and the newest peer allocators as
# LD_PRELOAD libraries, from their public sources, OUTSIDE this repository.
#
#   benches/peers/build.sh [--prefix DIR] [--jobs N] [--only a,b,...]
#                          [--src NAME=DIR]... [--shbench DIR] [--force]
#
# NAME is one of
#   bench      mimalloc-bench programs  https://github.com/daanx/mimalloc-bench   (default branch)
#   mimalloc2  mimalloc 2.x             https://github.com/microsoft/mimalloc     v2.4.1
#   mimalloc3  mimalloc 3.x             https://github.com/microsoft/mimalloc     v3.4.3
#   snmalloc   snmalloc                 https://github.com/microsoft/snmalloc     0.7.5
#   rpmalloc   rpmalloc                 https://github.com/mjansson/rpmalloc      2.0.1
#   jemalloc   jemalloc                 https://github.com/jemalloc/jemalloc      5.3.1
#   tcmalloc   gperftools tcmalloc      https://github.com/gperftools/gperftools  gperftools-2.18.1
#
# For every NAME without --src NAME=DIR the script clones the public
# repository at the tag above into PREFIX/src/NAME (git clone --depth 1;
# override a tag with e.g. TAG_mimalloc3=v3.4.4 in the environment). A
# --src folder is never written to: it is copied into PREFIX/build/NAME and
# built there (a git work tree gives the version recorded, `git describe`).
#
# sh6bench and sh8bench are not in mimalloc-bench (MicroQuill's licence
# forbids redistribution); its build downloads them from microquill.com.
# Give --shbench DIR with sh6bench.c and SH8BENCH.C (or bench.zip and
# SH8BENCH.zip) in it; without it the script tries that download and skips
# both programs, saying so, when it fails.
#
# Output (PREFIX defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/buddyslab-bench):
#   PREFIX/lib/lib<NAME>.so     one preloadable library per peer
#   PREFIX/bin/<program>        the benchmark programs
#   PREFIX/share/               their inputs (espresso's, barnes')
#   PREFIX/VERSIONS.tsv         name, version, commit, source, file: what
#                               benches/peers/run.py reads
#   PREFIX/log/<NAME>.log       each build's output
#
# Builds run one at a time with make -j2 (--jobs) so that a small shared
# machine stays usable. A failed build is reported and the others go on; the
# exit status is 1 if any failed.
set -u -o pipefail

PREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/buddyslab-bench"
JOBS=2
ONLY=""
FORCE=0
SHBENCH=""
declare -A SRC=()

ALL="bench mimalloc2 mimalloc3 snmalloc rpmalloc jemalloc tcmalloc"
declare -A URL=(
  [bench]=https://github.com/daanx/mimalloc-bench
  [mimalloc2]=https://github.com/microsoft/mimalloc
  [mimalloc3]=https://github.com/microsoft/mimalloc
  [snmalloc]=https://github.com/microsoft/snmalloc
  [rpmalloc]=https://github.com/mjansson/rpmalloc
  [jemalloc]=https://github.com/jemalloc/jemalloc
  [tcmalloc]=https://github.com/gperftools/gperftools
)
declare -A TAG=(
  [bench]=""
  [mimalloc2]=v2.4.1
  [mimalloc3]=v3.4.3
  [snmalloc]=0.7.5
  [rpmalloc]=2.0.1
  [jemalloc]=5.3.1
  [tcmalloc]=gperftools-2.18.1
)
for n in $ALL; do
  v="TAG_$n"
  [ -n "${!v:-}" ] && TAG[$n]="${!v}"
done

# The benchmark programs (CMake targets of mimalloc-bench/bench).
BENCH_TARGETS="cfrac espresso barnes larson larson-sized mstress rptest alloc-test
  xmalloc-test cache-scratch cache-thrash glibc-simple glibc-thread malloc-large mleak"

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2;;
    --prefix=*) PREFIX="${1#*=}"; shift;;
    --jobs|-j) JOBS="$2"; shift 2;;
    --jobs=*) JOBS="${1#*=}"; shift;;
    --only) ONLY="$2"; shift 2;;
    --only=*) ONLY="${1#*=}"; shift;;
    --src) SRC[${2%%=*}]="${2#*=}"; shift 2;;
    --src=*) a="${1#*=}"; SRC[${a%%=*}]="${a#*=}"; shift;;
    --shbench) SHBENCH="$2"; shift 2;;
    --shbench=*) SHBENCH="${1#*=}"; shift;;
    --force) FORCE=1; shift;;
    -h|--help) usage 0;;
    *) echo "build.sh: unknown argument $1" >&2; usage 64 >&2;;
  esac
done
for n in "${!SRC[@]}"; do
  case " $ALL " in *" $n "*) ;; *) echo "build.sh: --src: unknown name $n (one of: $ALL)" >&2; exit 64;; esac
  [ -d "${SRC[$n]}" ] || { echo "build.sh: --src $n: no folder ${SRC[$n]}" >&2; exit 64; }
  SRC[$n]="$(cd "${SRC[$n]}" && pwd)"
done
[ -n "$SHBENCH" ] && SHBENCH="$(cd "$SHBENCH" && pwd)"
WANT="${ONLY//,/ }"; WANT="${WANT:-$ALL}"

mkdir -p "$PREFIX"/{src,build,lib,bin,share,log}
PREFIX="$(cd "$PREFIX" && pwd)"
case "$PREFIX/" in
  "$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null)/"*)
    echo "build.sh: --prefix $PREFIX is inside the repository; pick a folder outside it" >&2; exit 64;;
esac
VERSIONS="$PREFIX/VERSIONS.tsv"
touch "$VERSIONS"
FAILED=""

say() { printf '%s\n' "build.sh: $*" >&2; }

# Records one built file: replaces the line for NAME in VERSIONS.tsv.
record() { # name version commit source file
  local tmp="$VERSIONS.tmp"
  grep -v -P "^\Q$1\E\t" "$VERSIONS" > "$tmp" || true
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$tmp"
  sort -o "$VERSIONS" "$tmp" && rm -f "$tmp"
}

# Sets SRCDIR (the sources to build from) and VERSION/COMMIT/ORIGIN for NAME.
obtain() { # name
  local n="$1" dir
  if [ -n "${SRC[$n]:-}" ]; then
    dir="${SRC[$n]}"; ORIGIN="$dir"
  else
    dir="$PREFIX/src/$n"; ORIGIN="${URL[$n]}"
    if [ ! -d "$dir/.git" ]; then
      say "$n: git clone ${URL[$n]} ${TAG[$n]:-(default branch)}"
      rm -rf "$dir"
      if [ -n "${TAG[$n]}" ]; then
        git clone -q --depth 1 --branch "${TAG[$n]}" "${URL[$n]}" "$dir" || return 1
      else
        git clone -q --depth 1 "${URL[$n]}" "$dir" || return 1
      fi
    fi
  fi
  SRCDIR="$dir"
  if git -C "$dir" rev-parse --git-dir >/dev/null 2>&1 && \
     [ "$(git -C "$dir" rev-parse --show-toplevel)" = "$dir" ]; then
    VERSION="$(git -C "$dir" describe --tags --always 2>/dev/null || echo unknown)"
    COMMIT="$(git -C "$dir" rev-parse HEAD)"
    if [ -n "$(git -C "$dir" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
      VERSION="$VERSION-modified"
    fi
  else
    VERSION="${TAG[$n]:-unknown} (not a git tree: version from the folder, unchecked)"
    COMMIT="-"
  fi
}

# Fresh copy of the sources in PREFIX/build/NAME; the build happens there.
stage() { # name
  local b="$PREFIX/build/$1"
  rm -rf "$b" && mkdir -p "$b" && cp -a "$SRCDIR/." "$b/" && rm -rf "$b/.git"
  BUILD="$b"
}

# Copies a built library (following symlinks) to PREFIX/lib/lib<name>.so.
install_lib() { # name file
  local out="$PREFIX/lib/lib$1.so"
  [ -f "$2" ] || { say "$1: expected $2 after the build, not there"; return 1; }
  cp -L "$2" "$out.tmp" && mv "$out.tmp" "$out"
  # A preloadable malloc must export malloc and free itself.
  local syms
  syms="$(nm -D --defined-only "$out")"
  if ! grep -qw malloc <<<"$syms"; then
    say "$1: $out does not export malloc; it would not replace glibc's"; return 1
  fi
  record "$1" "$VERSION" "$COMMIT" "$ORIGIN" "$out"
  say "$1: $VERSION -> $out"
}

build_mimalloc() { # name
  stage "$1" || return 1
  cmake -S "$BUILD" -B "$BUILD/out" -DCMAKE_BUILD_TYPE=Release -DMI_BUILD_TESTS=OFF \
        -DMI_BUILD_STATIC=OFF -DMI_BUILD_OBJECT=OFF -DMI_OVERRIDE=ON || return 1
  cmake --build "$BUILD/out" --target mimalloc -- -j"$JOBS" || return 1
  install_lib "$1" "$(ls "$BUILD"/out/libmimalloc.so.*.* 2>/dev/null | head -1)"
}

build_snmalloc() {
  stage snmalloc || return 1
  # CXX11_DESTRUCTORS: thread caches are flushed by a C++ thread_local
  # destructor, as mimalloc-bench builds it.
  cmake -S "$BUILD" -B "$BUILD/out" -DCMAKE_BUILD_TYPE=Release -DSNMALLOC_BUILD_TESTING=OFF \
        -DSNMALLOC_CLEANUP=CXX11_DESTRUCTORS || return 1
  cmake --build "$BUILD/out" --target snmallocshim -- -j"$JOBS" || return 1
  install_lib snmalloc "$BUILD/out/libsnmallocshim.so"
}

build_rpmalloc() {
  stage rpmalloc || return 1
  command -v ninja >/dev/null || { say "rpmalloc: needs ninja (apt-get install ninja-build)"; return 1; }
  # Its own default toolchain is clang; gcc where clang is not installed.
  local tc=clang
  command -v clang >/dev/null || tc=gcc
  ( cd "$BUILD" && python3 configure.py -c release --toolchain "$tc" ) || return 1
  sed -i 's/-Werror//' "$BUILD/build.ninja"  # newer compilers warn (rpmalloc issue 316)
  local target
  target="$(cd "$BUILD" && ninja -t targets all | sed -n 's/^\(\S*release\S*librpmalloc\.so\): .*/\1/p' | head -1)"
  [ -n "$target" ] || { say "rpmalloc: no release librpmalloc.so target in build.ninja"; return 1; }
  ( cd "$BUILD" && ninja -j"$JOBS" "$target" ) || return 1
  install_lib rpmalloc "$BUILD/$target"
}

build_jemalloc() {
  stage jemalloc || return 1
  # As mimalloc-bench configures it (statistics off).
  ( cd "$BUILD" && ./autogen.sh --enable-doc=no --enable-static=no --disable-stats \
      && make -j"$JOBS" lib/libjemalloc.so ) || return 1
  install_lib jemalloc "$(ls "$BUILD"/lib/libjemalloc.so.* | head -1)"
}

build_tcmalloc() {
  stage tcmalloc || return 1
  # tcmalloc_minimal: no heap profiler or checker, as mimalloc-bench builds it.
  ( cd "$BUILD" && ./autogen.sh \
      && CXXFLAGS="-w -DNDEBUG -O2" ./configure --enable-minimal --disable-debugalloc \
      && make -j"$JOBS" libtcmalloc_minimal.la ) || return 1
  install_lib tcmalloc "$(ls "$BUILD"/.libs/libtcmalloc_minimal.so.*.* | head -1)"
}

# sh6bench.c / SH8BENCH.C into folder $1, from --shbench or microquill.com.
get_shbench() { # dest
  local d="$1"
  if [ -n "$SHBENCH" ]; then
    for f in sh6bench.c SH8BENCH.C bench.zip SH8BENCH.zip; do
      [ -f "$SHBENCH/$f" ] && cp "$SHBENCH/$f" "$d/"
    done
  else
    say "bench: no --shbench; trying MicroQuill's download as mimalloc-bench does"
    ( cd "$d" && curl -fsSLO --max-time 60 http://www.microquill.com/smartheap/shbench/bench.zip \
        && curl -fsSLO --max-time 60 http://www.microquill.com/smartheap/SH8BENCH.zip ) || true
  fi
  ( cd "$d"
    [ -f sh6bench.c ] || { [ -f bench.zip ] && unzip -o -q bench.zip sh6bench.c; }
    [ -f SH8BENCH.C ] || { [ -f SH8BENCH.zip ] && unzip -o -q SH8BENCH.zip SH8BENCH.C; } ) || true
  local ok=0 p
  for p in "sh6bench sh6bench.c" "sh8bench SH8BENCH.C"; do
    set -- $p
    if [ -f "$d/$2" ]; then
      # dos2unix, then mimalloc-bench's patch; -l: copies in public forks lost
      # the original's trailing blanks, which the patch's context keeps.
      sed -i 's/\r$//' "$d/$2" "$d/$1.patch"
      if patch -s -l -p1 -o "$d/$1-new.c" "$d/$2" "$d/$1.patch"; then
        ok=$((ok + 1))
      else
        say "bench: $1: mimalloc-bench's patch does not apply to the $2 given"; rm -f "$d/$1-new.c"
      fi
    else
      say "bench: $1: source not available (give --shbench DIR); skipped"
    fi
  done
  return 0
}

build_bench() {
  stage bench || return 1
  local b="$BUILD/bench" targets="$BENCH_TARGETS"
  get_shbench "$b/shbench"
  # The security tests are not benchmarks; shbench only where its sources are.
  sed -i '/add_subdirectory(security)/d' "$b/CMakeLists.txt"
  for s in sh6bench sh8bench; do
    if [ -f "$b/shbench/$s-new.c" ]; then
      targets="$targets $s"
    else
      sed -i "/add_executable($s /,/target_link_libraries($s /d" "$b/CMakeLists.txt"
    fi
  done
  cmake -S "$b" -B "$b/out" -DCMAKE_BUILD_TYPE=Release || return 1
  local t bad=""
  for t in $targets; do
    if cmake --build "$b/out" --target "$t" -- -j"$JOBS"; then
      cp "$b/out/$t" "$PREFIX/bin/$t"
      record "bench:$t" "$VERSION" "$COMMIT" "$ORIGIN" "$PREFIX/bin/$t"
    else
      bad="$bad $t"
    fi
  done
  cp "$b/espresso/largest.espresso" "$PREFIX/share/" && cp "$b/barnes/input" "$PREFIX/share/barnes.input"
  [ -z "$bad" ] || { say "bench: failed to build:$bad"; return 1; }
}

for n in $WANT; do
  case " $ALL " in *" $n "*) ;; *) say "unknown name $n (one of: $ALL)"; FAILED="$FAILED $n"; continue;; esac
  if [ "$FORCE" = 0 ] && [ "$n" != bench ] && [ -f "$PREFIX/lib/lib$n.so" ] && grep -q -P "^$n\t" "$VERSIONS"; then
    say "$n: already built ($PREFIX/lib/lib$n.so; --force rebuilds)"; continue
  fi
  log="$PREFIX/log/$n.log"
  say "$n: building (log: $log)"
  if ! obtain "$n" >"$log" 2>&1; then
    say "$n: could not obtain the sources (see $log)"; FAILED="$FAILED $n"; continue
  fi
  case "$n" in
    mimalloc2|mimalloc3) fn="build_mimalloc $n";;
    *) fn="build_$n";;
  esac
  if ! $fn >>"$log" 2>&1; then
    say "$n: build FAILED; last lines of $log:"; tail -15 "$log" >&2
    FAILED="$FAILED $n"
  fi
  grep -h '^build.sh:' "$log" >&2 || true
done

say "done; versions in $VERSIONS:"
column -t -s $'\t' "$VERSIONS" >&2 2>/dev/null || cat "$VERSIONS" >&2
[ -z "$FAILED" ] || { say "FAILED:$FAILED"; exit 1; }
