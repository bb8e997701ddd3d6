#!/bin/sh
# Builds buddyslab (release) and installs the tool with its library:
#
#   PREFIX/bin/buddyslab
#   PREFIX/lib/libbuddyslab.so
#   PREFIX/share/{bash-completion,zsh,fish}/... completion scripts
#
# The tool finds the library in ../lib/ from its own directory, so the two
# must be installed together (`cargo install --path cli` alone installs a
# tool without a library). PREFIX is /usr/local unless set; DESTDIR, if
# set, is put in front of every path (for packaging). With --no-build the
# existing release build is installed as it is.
#
#   scripts/install.sh                        # into /usr/local (as root)
#   PREFIX="$HOME/.local" scripts/install.sh   # into ~/.local, no root needed
set -eu

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "$0"
}

build=1
for arg in "$@"; do
    case $arg in
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
prefix=${PREFIX:-/usr/local}
case $prefix in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-target}
release=$target/release

if [ "$build" = 1 ]; then
    cargo build --release -p buddyslab-cli -p buddyslab-cdylib
fi
for built in buddyslab libbuddyslab.so; do
    if [ ! -f "$release/$built" ]; then
        echo "install.sh: $release/$built is missing: build it with 'cargo build --release'" >&2
        exit 1
    fi
done

dest=${DESTDIR:-}$prefix
install -d "$dest/bin" "$dest/lib"
install -m 755 "$release/buddyslab" "$dest/bin/buddyslab"
install -m 755 "$release/libbuddyslab.so" "$dest/lib/libbuddyslab.so"

bash_dir=$dest/share/bash-completion/completions
zsh_dir=$dest/share/zsh/site-functions
fish_dir=$dest/share/fish/vendor_completions.d
install -d "$bash_dir" "$zsh_dir" "$fish_dir"
"$release/buddyslab" completions bash > "$bash_dir/buddyslab"
"$release/buddyslab" completions zsh > "$zsh_dir/_buddyslab"
"$release/buddyslab" completions fish > "$fish_dir/buddyslab.fish"

echo "installed $dest/bin/buddyslab and $dest/lib/libbuddyslab.so"
case ":${PATH:-}:" in
    *":$prefix/bin:"*) ;;
    *) echo "note: $prefix/bin is not in PATH" ;;
esac
