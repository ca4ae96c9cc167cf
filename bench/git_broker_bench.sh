#!/usr/bin/env bash
# Brokered git over SSH (issue 16) against today's path, in one run:
#
#   direct : the workspace's git -> ssh (SSH_AUTH_SOCK = the shim's agent.sock,
#            signatures from the laptop) -> git host sshd
#   broker : the workspace's git -> nexus-shim git-ssh -> tunnel -> laptop's
#            own ssh (its agent, its known_hosts) -> git host sshd
#
#   laptop ssh-agent <- nexus-agent-proxy run <- delay_proxy.py (D) <- nexus-shim serve
#                                   | ssh (broker)                         | agent.sock (direct)
#                                   +--------> git host sshd <-------------+ workspace git
#
# Measures: a 100 MB push and a 100 MB clone (incompressible data) each way
# at D = 0 (target: broker >= 80 % of direct throughput), and a small push
# (one empty commit) at D = 0 and D = 50 ms (target: at most 2 tunnel RTT
# more at 50 ms than at 0 ms).
#
# Not in CI. Run as root (sshd logs in as root with a key only), from anywhere:
#   sudo bench/git_broker_bench.sh
#   N_SMALL=20 SIZE_MB=100 bench/git_broker_bench.sh
# Uses target/release binaries (BIN=... for others). Knobs: SIZE_MB N_BIG
# N_SMALL RTT_MS KEEP_TMP NEXUS_SHARED (default ../shared).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${NEXUS_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
[ -r "$SHARED/tools/delay_proxy.py" ] || SHARED=/work/shared
DELAY_PROXY=$SHARED/tools/delay_proxy.py
BIN=${BIN:-$ROOT/target/release}
SIZE_MB=${SIZE_MB:-100}
N_BIG=${N_BIG:-3}
N_SMALL=${N_SMALL:-15}
RTT_MS=${RTT_MS:-50}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[git-broker-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sshd lets root in with a key only)"
for b in ssh ssh-agent ssh-add ssh-keygen git python3; do
  command -v "$b" >/dev/null || die "$b not found"
done
for b in nexus-shim nexus-agent-proxy; do [ -x "$BIN/$b" ] || die "$BIN/$b missing (cargo build --release)"; done
[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing"
[ -r "$DELAY_PROXY" ] || die "missing $DELAY_PROXY"

T=$(mktemp -d /tmp/nexus-git-bench.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null; done
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do wait "${PIDS[$i]}" 2>/dev/null; done
  [ "$rc" = 0 ] || tail -n 20 "$T"/*.log >&2
  if [ "$KEEP_TMP" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_for() { local i; for ((i=0; i<1000; i++)); do "$@" && return 0; sleep 0.02; done; return 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print int(NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# -- laptop agent and git host
mkdir -p "$T/laptop" "$T/git" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$T/laptop/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$T/git/host_ed25519"
AGENT_SOCK=$T/laptop/agent.sock
ssh-agent -D -a "$AGENT_SOCK" >/dev/null & PIDS+=($!)
wait_for test -S "$AGENT_SOCK"
SSH_AUTH_SOCK=$AGENT_SOCK ssh-add -q "$T/laptop/id_ed25519"
cp "$T/laptop/id_ed25519.pub" "$T/git/authorized_keys"
GIT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$T/git/sshd_config" <<EOF
Port $GIT_PORT
ListenAddress 127.0.0.1
HostKey $T/git/host_ed25519
PidFile none
AuthorizedKeysFile $T/git/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
UseDNS no
MaxStartups 100
LogLevel ERROR
EOF
/usr/sbin/sshd -D -e -f "$T/git/sshd_config" 2>>"$T/sshd.log" & PIDS+=($!)
wait_for port_open "$GIT_PORT" || die "sshd did not start"
HOSTKEY=$(cut -d' ' -f1,2 "$T/git/host_ed25519.pub")
echo "[127.0.0.1]:$GIT_PORT $HOSTKEY" > "$T/known_hosts"
SSH_CFG_LINES="  UserKnownHostsFile $T/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  IdentityFile $T/no-such-key
  ControlMaster no
  ControlPath none
  BatchMode yes
  LogLevel ERROR"
printf 'Host *\n%s\n' "$SSH_CFG_LINES" > "$T/ssh_config"
# The laptop's ssh for brokered git: same host pin, the laptop agent.
printf '#!/bin/sh\nexec ssh -F %s "$@"\n' "$T/ssh_config" > "$T/laptop/ssh"
chmod 755 "$T/laptop/ssh"

# -- workspace shim, pairing, policy
STATE=$T/ws/state
mkdir -p "$T/ws"; chmod 700 "$T/ws"
NEXUS_STATE_DIR=$STATE "$BIN/nexus-shim" serve --listen 127.0.0.1:0 2>>"$T/shim.log" & PIDS+=($!)
wait_for test -s "$STATE/pairing.uri" || die "shim did not start"
URI=$(cat "$STATE/pairing.uri")
SHIM_ADDR=${URI#nexus://}; SHIM_ADDR=${SHIM_ADDR%%\?*}
CFG=$T/laptop-config
NEXUS_CONFIG_DIR=$CFG "$BIN/nexus-agent-proxy" pair "$URI" --name bench >>"$T/proxy.log" 2>&1
WS_RECORD=$CFG/workspaces/bench.toml
cat > "$T/policy.toml" <<EOF
version = 1

# Today's path: the workspace's ssh signs through agent.sock.
[[ssh.allow]]
host = "127.0.0.1:$GIT_PORT"
user = "root"
host_keys = ["$HOSTKEY"]

# The brokered path.
[[git.allow]]
host = "127.0.0.1:$GIT_PORT"
repo = "**"
push = ["**"]
ssh_user = "root"
EOF

PROXY_PID=
link_at() {  # link_at D: (re)start the proxy behind a delay proxy of D ms
  [ -z "$PROXY_PID" ] || { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; }
  rm -f "$T/delay_$1.port"
  python3 "$DELAY_PROXY" --listen 127.0.0.1:0 --target "$SHIM_ADDR" --rtt-ms "$1" \
      --port-file "$T/delay_$1.port" --tcp-handshake 2>>"$T/delay.log" & PIDS+=($!)
  wait_for test -s "$T/delay_$1.port"
  sed -i -E "s/^address = .*/address = \"127.0.0.1:$(cat "$T/delay_$1.port")\"/" "$WS_RECORD"
  NEXUS_CONFIG_DIR=$CFG NEXUS_GIT_SSH=$T/laptop/ssh "$BIN/nexus-agent-proxy" run \
      --workspace bench --policy "$T/policy.toml" --ssh-agent "$AGENT_SOCK" 2>>"$T/proxy.log" &
  PROXY_PID=$!; PIDS+=($PROXY_PID)
  wait_for env NEXUS_STATE_DIR="$STATE" "$BIN/nexus-shim" status --wait 0 >/dev/null 2>&1 \
    || die "the proxy did not link"
  BROKER_ENV=$(NEXUS_STATE_DIR=$STATE "$BIN/nexus-shim" env 2>/dev/null)
}

export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=B GIT_AUTHOR_EMAIL=b@x GIT_COMMITTER_NAME=B GIT_COMMITTER_EMAIL=b@x
direct() { (unset GIT_CONFIG_COUNT; SSH_AUTH_SOCK=$STATE/agent.sock GIT_SSH_COMMAND="ssh -F $T/ssh_config" git "$@"); }
# `nexus-shim env` once per link, as a shell start-up file would, not per push.
broker() { (unset GIT_SSH_COMMAND; eval "$BROKER_ENV"; git "$@"); }
url() { echo "ssh://root@127.0.0.1:$GIT_PORT$T/git/$1.git"; }
bare() { rm -rf "$T/git/$1.git"; git init -q --bare -b main "$T/git/$1.git"; }
timed() { local t0; t0=$(now_ms); "$@" >/dev/null 2>>"$T/git.log"; echo $(( $(now_ms) - t0 )); }

# -- the 100 MB repository (incompressible), made once
git init -q -b main "$T/big"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$T/big/data.bin"
git -C "$T/big" add data.bin && git -C "$T/big" commit -q -m big

link_at 0
log "D=0: $N_BIG x ${SIZE_MB} MB push and clone, direct and broker alternately"
: > "$T/big.txt"
for i in $(seq "$N_BIG"); do
  for way in direct broker; do
    bare "big-$way"
    p=$(timed $way -C "$T/big" push -q "$(url "big-$way")" main)
    rm -rf "$T/clone-$way"
    c=$(timed $way clone -q "$(url "big-$way")" "$T/clone-$way")
    echo "$way $p $c" >> "$T/big.txt"
  done
done

small_pushes() {  # small_pushes LABEL: N_SMALL one-commit pushes, broker
  bare small
  rm -rf "$T/small"; git init -q -b main "$T/small"
  git -C "$T/small" commit -q --allow-empty -m 0
  broker -C "$T/small" push -q "$(url small)" main:refs/heads/agent/s 2>>"$T/git.log"
  for i in $(seq "$N_SMALL"); do
    git -C "$T/small" commit -q --allow-empty -m "$i"
    echo "$1 $(timed broker -C "$T/small" push -q "$(url small)" main:refs/heads/agent/s)"
    echo "ls$1 $(timed broker ls-remote "$(url small)")"
  done
}
log "D=0: $N_SMALL small pushes through the broker"
small_pushes 0 > "$T/small.txt"
link_at "$RTT_MS"
log "D=$RTT_MS: $N_SMALL small pushes through the broker"
small_pushes "$RTT_MS" >> "$T/small.txt"

# -- report
mb=$SIZE_MB
for way in direct broker; do
  p=$(awk -v w=$way '$1==w {print $2}' "$T/big.txt" | median)
  c=$(awk -v w=$way '$1==w {print $3}' "$T/big.txt" | median)
  printf '%-6s push %6d ms (%5.1f MB/s)   clone %6d ms (%5.1f MB/s)\n' "$way" "$p" \
    "$(echo "$mb * 1000 / $p" | bc -l)" "$c" "$(echo "$mb * 1000 / $c" | bc -l)"
  eval "${way}_p=$p ${way}_c=$c"
done
printf 'broker/direct throughput: push %.0f %%, clone %.0f %%\n' \
  "$(echo "100 * $direct_p / $broker_p" | bc -l)" "$(echo "100 * $direct_c / $broker_c" | bc -l)"
s0=$(awk '$1==0 {print $2}' "$T/small.txt" | median)
s1=$(awk -v d="$RTT_MS" '$1==d {print $2}' "$T/small.txt" | median)
printf 'small push p50: %d ms at 0 ms, %d ms at %d ms RTT: +%d ms = %.2f RTT\n' \
  "$s0" "$s1" "$RTT_MS" "$((s1 - s0))" "$(echo "($s1 - $s0) / $RTT_MS" | bc -l)"
l0=$(awk '$1=="ls0" {print $2}' "$T/small.txt" | median)
l1=$(awk -v d="ls$RTT_MS" '$1==d {print $2}' "$T/small.txt" | median)
printf 'ls-remote p50: %d ms at 0 ms, %d ms at %d ms RTT: +%d ms = %.2f RTT\n' \
  "$l0" "$l1" "$RTT_MS" "$((l1 - l0))" "$(echo "($l1 - $l0) / $RTT_MS" | bc -l)"
log "done (load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cpus)"
