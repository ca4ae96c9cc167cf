#!/usr/bin/env bash
# Builds a fully static Linux nexus-shim (no dynamic dependencies: it runs in
# an empty root holding nothing but the binary, as on musl distributions) and
# prints the path of the stripped binary as its last line.
#
# Static glibc, not musl: the std for the host's gnu target is all this needs
# (no toolchain download). Two consequences, both handled:
#   - getrandom's default Linux backend finds getrandom(2) through the dynamic
#     loader, which a static binary does not have, so `serve` would panic
#     ("could not initialize ThreadRng"): the build selects the syscall.
#   - glibc resolves host names through NSS modules loaded at run time, which
#     a static binary cannot load: the shim takes numeric addresses only.
#
# Outputs, in target/static/dist/ (or --out-dir):
#   nexus-shim          stripped, what is shipped and uploaded
#   nexus-shim.debug    its debug info, kept apart for crash reports
#                       (the binary names it in .gnu_debuglink)
#   nexus-shim.gz       gzip -9, what travels
#   *.sha256            SHA-256 sums of the three, in `sha256sum -c` format
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/build-static.sh [--target TRIPLE] [--out-dir DIR]

Builds a static, stripped nexus-shim (the shim-static profile: release with LTO) and prints its path
as the last line of output.

  --target TRIPLE   a *-unknown-linux-gnu target whose std is installed
                    (default: the host's, e.g. x86_64-unknown-linux-gnu)
  --out-dir DIR     where the stripped binary, its debug info, the .gz and
                    the .sha256 files go (default: target/static/dist)
  -h, --help        this text

Environment: CARGO (default cargo), CARGO_TARGET_DIR is ignored (the static
build has its own, target/static, so it never invalidates the normal one).
EOF
}

die() { echo "build-static: $*" >&2; exit 1; }

cd "$(dirname "$0")/.."
root=$PWD
cargo=${CARGO:-cargo}
target=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || die "--target needs a value"; target=$2; shift 2 ;;
    --out-dir) [ $# -ge 2 ] || die "--out-dir needs a value"; out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
if [ -z "$target" ]; then
  target=$(rustc -vV | sed -n 's/^host: //p')
fi
case "$target" in
  *-unknown-linux-gnu) ;;
  *) die "target $target: only *-unknown-linux-gnu targets are supported (static glibc)" ;;
esac
for tool in objcopy gzip sha256sum readelf; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (binutils, gzip, coreutils)"
done

target_dir=$root/target/static
out=${out:-$target_dir/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --target keeps these flags off build scripts and proc macros, which run on
# the host and must stay dynamic. crt-static makes the cc-built C of aws-lc-sys
# (and ring, if present) static too: their build scripts read it.
export RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\""
export CARGO_TARGET_DIR=$target_dir
unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS

start=$(date +%s)
"$cargo" build --profile shim-static --locked --target "$target" -p nexus-shim >&2
built=$target_dir/$target/shim-static/nexus-shim
elapsed=$(( $(date +%s) - start ))

# Static means no interpreter and no needed libraries, whatever ldd says
# about static-pie on this host.
if readelf -lW "$built" | grep -q 'Requesting program interpreter'; then
  die "$built has a program interpreter: it is not static"
fi
if readelf -dW "$built" | grep -q '(NEEDED)'; then
  die "$built needs shared libraries: $(readelf -dW "$built" | grep '(NEEDED)' | tr -s ' ' | tr '\n' ';')"
fi

bin=$out/nexus-shim
dbg=$out/nexus-shim.debug
rm -f "$bin" "$dbg" "$bin.gz"
objcopy --only-keep-debug "$built" "$dbg"
chmod 0644 "$dbg"
# The debuglink records the debug file's name and CRC, so a crash report's
# addresses can be symbolized later with `nexus-shim.debug` next to the binary.
(cd "$out" && objcopy --strip-all --add-gnu-debuglink=nexus-shim.debug "$built" nexus-shim)
chmod 0755 "$bin"
gzip -9 -n -c "$bin" > "$bin.gz"
(cd "$out" && for f in nexus-shim nexus-shim.debug nexus-shim.gz; do sha256sum "$f" > "$f.sha256"; done)

"$bin" --version >/dev/null || die "the stripped binary does not run: $bin"
size() { stat -c %s "$1"; }
echo "build-static: $target in ${elapsed}s; stripped $(size "$bin") bytes, gzip -9 $(size "$bin.gz") bytes, debug info $(size "$dbg") bytes" >&2
echo "$bin"
