#!/usr/bin/env bash
# Installs Nexus Agent Proxy from this checkout, for people who build from
# source: the laptop's nexus-agent-proxy and a nexus-shim (release builds)
# into PREFIX/bin, and on Linux the static shim that goes to workspaces as
# $NEXUS_CONFIG_DIR/shims/nexus-shim-linux-ARCH, where the laptop looks for
# it when it installs a shim into a workspace.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [--prefix DIR] [--no-static]

Builds (release) and installs nexus-agent-proxy and nexus-shim into
DIR/bin (default ~/.local, so ~/.local/bin), and on Linux builds the static
shim with scripts/build-static.sh and installs it as
$NEXUS_CONFIG_DIR/shims/nexus-shim-linux-ARCH (NEXUS_CONFIG_DIR defaults to
$XDG_CONFIG_HOME/nexus, else ~/.config/nexus).

  --prefix DIR   install the binaries into DIR/bin
  --no-static    skip the static workspace shim
  -h, --help     this text

macOS laptops: the static shim is Linux-only and is not built here; take
nexus-shim-linux-ARCH.gz from a release (put it into the shims directory,
and a gunzipped copy beside it).
EOF
}

die() { echo "install: $*" >&2; exit 1; }

prefix=${HOME:?HOME is not set}/.local
static=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix=$2; shift 2 ;;
    --no-static) static=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}
command -v "$cargo" >/dev/null 2>&1 || die "cargo not found (install Rust from https://rustup.rs)"

# Copy, then rename: replacing a binary that is running (a proxy under
# launchd/systemd) must not truncate it under its feet.
put() { # put SOURCE DEST
  local tmp
  tmp="$(dirname "$2")/.$(basename "$2").$$"
  cp "$1" "$tmp" && chmod 0755 "$tmp" && mv -f "$tmp" "$2" || { rm -f "$tmp"; die "installing $2 failed"; }
  echo "installed $2"
}

echo "==> building nexus-agent-proxy and nexus-shim (release)" >&2
"$cargo" build --release --locked -p nexus-proxy -p nexus-shim >&2
target_dir=$("$cargo" metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target directory"
mkdir -p "$prefix/bin"
for bin in nexus-agent-proxy nexus-shim; do
  put "$target_dir/release/$bin" "$prefix/bin/$bin"
done

if [ "$static" = 1 ]; then
  if [ "$(uname -s)" = Linux ]; then
    echo "==> building the static workspace shim" >&2
    shim=$(scripts/build-static.sh | tail -n 1)
    config=${NEXUS_CONFIG_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/nexus}
    # The config dir holds the laptop's keys: private, as the proxy makes it.
    mkdir -p "$config"
    chmod 0700 "$config"
    mkdir -p "$config/shims"
    put "$shim" "$config/shims/nexus-shim-linux-$(uname -m)"
    # Its gzip -9 beside it: what `connect` uploads, compressed once here.
    put "$shim.gz" "$config/shims/nexus-shim-linux-$(uname -m).gz"
  else
    echo "install: no static shim on $(uname -s): take nexus-shim-linux-ARCH.gz from a release" >&2
  fi
fi

case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "install: $prefix/bin is not on PATH; add it to your shell's profile" >&2 ;;
esac
