#!/usr/bin/env bash
# git's t/t0303-credential-external.sh (git v2.47.3, from Debian trixie's
# source package, with its own test library) against the workspace's helper,
# `nexus-shim git-credential`, while the laptop answers with git's `store`,
# then its `cache` helper. Only the plumbing is adapted (helper, helper-timeout,
# test-tool stand-in); the laptop's policy allows the hosts t0303 uses with
# get, store and erase, and leaves `username` unset (t0303 stores two
# accounts for one host). Prints each case, then `N passed, N failed`; exits
# non-zero when a case outside expected-failures.txt fails, or a listed case
# passes (shrink the list then).
# Usage: tests/conformance/git/run.sh [store|cache]... (default: both)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
. "$here/../lib.sh"
export NEXUS_BIN=${NEXUS_BIN:-$repo/target/debug}
version=2.47.3
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nexus-conformance/git-src
src=$cache/git-$version
helpers=("$@")
[ ${#helpers[@]} -gt 0 ] || helpers=(store cache)

git version | grep -q "^git version $version" \
  || { echo "t0303 runs against git $version; on PATH: $(git version)" >&2; exit 1; }
if [ ! -f "$src/t/t0303-credential-external.sh" ]; then
  # Debian trixie's source package carries git 2.47.3 (bookworm's 2.39.5
  # has no expiry or refresh-token cases).
  list=/etc/apt/sources.list.d/nexus-conformance-src.sources
  if [ ! -f "$list" ] && [ "$(id -u)" = 0 ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$list"
    apt-get update -qq || exit 1
  fi
  mkdir -p "$cache"
  (cd "$cache" && apt-get source --download-only -qq "git=1:$version-0+deb13u1" >/dev/null 2>&1 \
    || apt-get source --download-only -qq git/trixie >/dev/null) || { echo "apt-get source git/trixie failed" >&2; exit 1; }
  tar -C "$cache" -xJf "$cache/git_$version.orig.tar.xz" || exit 1
fi
[ -x "$NEXUS_BIN/nexus-shim" ] || (cd "$repo" && cargo build --quiet --bins) || exit 1

# test-lib.sh wants a built tree; with GIT_TEST_INSTALLED it needs only
# these: the build options, an (empty) template dir and test-tool.
printf "SHELL_PATH='/bin/sh'\nPERL_PATH='/usr/bin/perl'\nDIFF='diff'\nPYTHON_PATH='/usr/bin/python3'\nTAR='tar'\nX=''\nNO_PYTHON=''\nGIT_TEST_CMP_USE_COPIED_CONTEXT=''\n" >"$src/GIT-BUILD-OPTIONS"
mkdir -p "$src/templates/blt" "$src/t/helper"
cp "$here/test-tool" "$src/t/helper/test-tool"

work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-t0303.XXXXXX")
export NEXUS_CONFORM_DIR=$work
cleanup() {
  HOME=$work/laptop-home git credential-cache exit >/dev/null 2>&1
  nexus_unlink "$work"
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/laptop-home"
# Every host t0303 asks for (lib-credential.sh), over both protocols.
hosts="example.com other.tld victim.example.com badguy.example.com path.tld timeout.tld sso.tld"
for h in $hosts; do
  for p in https http; do
    printf '[[git-credential.allow]]\nprotocol = "%s"\nhost = "%s"\nactions = ["get", "store", "erase"]\n\n' "$p" "$h"
  done
done >"$work/policy.toml"
# The laptop's own config decides whether its helpers key by path: t0303's
# "requires matching path" case sets credential.useHttpPath for path.tld, so
# the laptop sets it for that host too (the workspace's setting cannot reach
# the laptop's git, and forcing it there would miss host-only credentials).
printf '[credential]\n\thelper = !%s\n[credential "http://path.tld"]\n\tuseHttpPath = true\n' \
  "$here/laptop-helper" >"$work/laptop-home/.gitconfig"
HOME=$work/laptop-home GIT_CONFIG_NOSYSTEM=1 nexus_link "$work" "$work/policy.toml" || exit 1

sed -e 's/ *|.*//' -e '/^#/d' -e '/^$/d' "$here/expected-failures.txt" | sort -u >"$work/expected"
passed=0 failed=0 status=0
for helper in "${helpers[@]}"; do
  echo "$helper" >"$work/laptop-helper"
  : >"$work/laptop-home/.git-credentials"
  timeout=()
  # `store` keeps no expiry, so its timeout case cannot run.
  [ "$helper" = cache ] && timeout=(GIT_TEST_CREDENTIAL_HELPER_TIMEOUT="$here/helper --timeout=1")
  (cd "$src/t" && env GIT_TEST_INSTALLED="$(dirname "$(command -v git)")" \
    GIT_TEST_CREDENTIAL_HELPER="$here/helper" "${timeout[@]}" \
    sh t0303-credential-external.sh --root="$work/trash-$helper" -v) >"$work/t0303-$helper.log" 2>&1
  while IFS= read -r line; do
    case $line in
      "ok "*) ok=1 ;;
      "not ok "*) ok='' ;;
      *) continue ;;
    esac
    # "ok 3 - helper (/path/helper) can retrieve password" -> "store: can retrieve password"
    name="$helper: ${line#*) }"
    if [ -n "$ok" ]; then
      passed=$((passed + 1))
      if grep -qxF -- "$name" "$work/expected"; then
        echo "PASS (listed as failing: remove it from expected-failures.txt) $name"; status=1
      else echo "PASS $name"; fi
    else
      failed=$((failed + 1))
      if grep -qxF -- "$name" "$work/expected"; then echo "FAIL (expected) $name"
      else echo "FAIL (unexpected) $name"; status=1; fi
    fi
  done < <(grep -E '^(not )?ok [0-9]+ - ' "$work/t0303-$helper.log")
done
echo "by-design refusals and the laptop helper's own limits:"
sed -e '/^#/d' -e '/^$/d' -e 's/^/  /' "$here/expected-failures.txt"
echo "git t0303: $passed passed, $failed failed"
if [ $status != 0 ]; then
  echo "git t0303: results differ from expected-failures.txt; logs kept in ${TMPDIR:-/tmp}/nexus-t0303-logs" >&2
  mkdir -p "${TMPDIR:-/tmp}/nexus-t0303-logs" && cp "$work"/t0303-*.log "$work/proxy.log" "${TMPDIR:-/tmp}/nexus-t0303-logs/"
fi
exit $status
