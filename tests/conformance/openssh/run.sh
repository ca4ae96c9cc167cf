#!/usr/bin/env bash
# OpenSSH's agent regression scripts (Debian's openssh-tests, the installed
# OpenSSH 9.2p1) with every client on the shim's agent.sock and the keys in a
# real ssh-agent behind `nexus-agent-proxy run --ssh-agent` (see ssh-agent and
# ssh-add here: only that plumbing is adapted). Scripts: agent.sh,
# agent-restrict.sh, the agent part of sshsig.sh, agent-timeout.sh, and
# agent-getpeereid.sh as a non-root user. A case is one `fail` site of a
# script as it ran (with its key type, host or user); it passes when its
# check ran and did not fail. Prints each case, then `N passed, N failed`.
# Exits non-zero when a case outside expected-failures.txt fails, or a listed
# case passes (shrink the list then).
# Usage: tests/conformance/openssh/run.sh [SCRIPT...] (default: all five)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
export NEXUS_BIN=${NEXUS_BIN:-$repo/target/debug}
regress=/usr/lib/openssh/regress
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(agent agent-restrict sshsig agent-timeout agent-getpeereid)

if [ ! -f "$regress/agent.sh" ] || ! command -v sudo >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-tests sudo >/dev/null
  fi
  [ -f "$regress/agent.sh" ] || { echo "openssh-tests is not installed (apt-get install openssh-tests)" >&2; exit 1; }
fi
# sshd's privilege separation directory (made only when the service starts).
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
[ -x "$NEXUS_BIN/nexus-shim" ] || (cd "$repo" && cargo build --quiet --bins) || exit 1

work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-openssh.XXXXXX")
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
cp -a "$regress" "$work/regress"
r=$work/regress
for s in agent agent-restrict agent-timeout agent-getpeereid; do
  python3 "$here/instrument.py" "$r/$s.sh"
done
# sshsig.sh: only its agent part counts. The laptop's policy must name the
# script's SSHSIG namespace, so it is exported to the agent stand-in.
a=$(grep -n 'Check signing keys using ssh-agent' "$r/sshsig.sh" | cut -d: -f1)
python3 "$here/instrument.py" "$r/sshsig.sh" "$a" $((a + 13))
sed -i 's/^sig_namespace="test-\$\$"$/&; export sig_namespace/' "$r/sshsig.sh"
# Clearing the agent between cases is setup (the keys sit on the laptop);
# a removal the script checks still goes through the workspace.
sed -i 's/^\(\s*\)\${SSHADD} -D >\/dev\/null 2>&1 # Remove all/\1NEXUS_LAPTOP=1 ${SSHADD} -D >\/dev\/null 2>\&1 # Remove all/' "$r/sshsig.sh"
sed -i 's/^\(\s*\)\${SSHADD} -D > \/dev\/null 2>&1 || fatal "clear agent failed"/\1NEXUS_LAPTOP=1 ${SSHADD} -D > \/dev\/null 2>\&1 || fatal "clear agent failed"/' "$r/agent-restrict.sh"

run_make() { # run_make USER SUDO SCRIPTS...
  local user=$1 sudo=$2; shift 2
  local cmd=(make -C "$r" .OBJDIR="$r" .CURDIR="$r" BUILDDIR="$r" OBJ="$r"
    SUDO="$sudo" TEST_SHELL=sh TEST_SSH_SSH=ssh TEST_SSH_SFTPSERVER=/usr/lib/openssh/sftp-server
    TEST_SSH_SSHAGENT="$here/ssh-agent" TEST_SSH_SSHADD="$here/ssh-add"
    TEST_SSH_UNSAFE_PERMISSIONS=1 LTESTS="$*" t-exec)
  if [ "$user" = "$(id -un)" ]; then
    env NEXUS_BIN="$NEXUS_BIN" "${cmd[@]}" </dev/null >>"$work/make.log" 2>&1
  else
    sudo -u "$user" env PATH="$PATH" NEXUS_BIN="$NEXUS_BIN" HOME="$work/home-$user" "${cmd[@]}" </dev/null >>"$work/make.log" 2>&1
  fi
}
as_root=() as_user=()
for s in "${scripts[@]}"; do
  if [ "$s" = agent-getpeereid ]; then as_user+=("$s"); else as_root+=("$s"); fi
done
# One make per script: make stops at the first script that fails.
for s in "${as_root[@]}"; do run_make "$(id -un)" "" "$s"; done
if [ ${#as_user[@]} -gt 0 ]; then
  # agent-getpeereid skips as root, and needs sudo both for test-exec's
  # own steps and to try the socket as `nobody`: run it as a throwaway
  # unprivileged user with password-less sudo.
  if [ "$(id -u)" = 0 ]; then
    id nexus-conform >/dev/null 2>&1 || useradd -M -s /bin/sh nexus-conform
    echo 'nexus-conform ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/nexus-conform
    chmod 440 /etc/sudoers.d/nexus-conform
    mkdir -p "$work/home-nexus-conform"
    chown -R nexus-conform "$r" "$work/home-nexus-conform"
    run_make nexus-conform sudo "${as_user[@]}"
  else
    run_make "$(id -un)" sudo "${as_user[@]}"
  fi
fi

sort -u "$r/nexus-reached" 2>/dev/null >"$work/reached"
sort -u "$r/nexus-failed" 2>/dev/null >"$work/failed"
expected=$here/expected-failures.txt
sed -e 's/ *|.*//' -e '/^#/d' -e '/^$/d' -e 's/^~ //' "$expected" | sort -u >"$work/expected"
# `~ ` marks a case whose outcome depends on timing: it may pass without
# failing the run.
sed -n -e 's/ *|.*//' -e 's/^~ //p' "$expected" | sort -u >"$work/timing"
passed=0 failed=0 status=0
while IFS= read -r c; do
  if grep -qxF -- "$c" "$work/failed"; then
    failed=$((failed + 1))
    if grep -qxF -- "$c" "$work/expected"; then echo "FAIL (expected) $c"
    else echo "FAIL (unexpected) $c"; status=1; fi
  else
    passed=$((passed + 1))
    if grep -qxF -- "$c" "$work/timing"; then
      echo "PASS (listed as timing-dependent) $c"
    elif grep -qxF -- "$c" "$work/expected"; then
      echo "PASS (listed as failing: remove it from expected-failures.txt) $c"; status=1
    else echo "PASS $c"; fi
  fi
done <"$work/reached"
# A listed case that no longer runs at all (a script aborted, or changed).
while IFS= read -r c; do
  grep -qxF -- "$c" "$work/reached" || { echo "MISSING (listed but never ran) $c"; status=1; }
done <"$work/expected"
grep -h "FATAL\|^ok \|^failed " "$work/make.log" | sed 's/^/  make: /'
# A script that aborts leaves its later cases uncounted: never a pass.
if grep -q FATAL "$work/make.log"; then echo "a script aborted (FATAL)"; status=1; fi
echo "by-design refusals (adding, removing, locking keys through the workspace):"
grep '| by design' "$expected" | sed 's/ *|.*//; s/^/  /'
echo "openssh agent: $passed passed, $failed failed"
[ $status = 0 ] || { echo "openssh agent: results differ from expected-failures.txt" >&2; cp "$work/make.log" "${TMPDIR:-/tmp}/nexus-openssh-make.log"; }
exit $status
