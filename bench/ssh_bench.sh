#!/usr/bin/env bash
# SSH agent forwarding benchmark: Nexus (workspace shim + laptop proxy) side by
# side with OpenSSH `ssh -A`, in one run, on this machine.
#
# What it measures, at each emulated network RTT D (default 0 and 50 ms):
#   * `ssh-add -l`, `ssh-keygen -Y sign -n file` and `git push` over SSH, run
#     inside the "workspace" by ../shared/bench/anchors/ws_bench.py, each
#     alternately against a forwarded agent and the laptop agent itself
#     ("direct": the same command with a local agent, same process, same noise);
#   * forwarded = `ssh -A` (the anchor, ../shared/bench/anchors/run.sh, run first
#     and unchanged) and forwarded = our shim's agent.sock, whose tunnel to the
#     laptop proxy goes through ../shared/tools/delay_proxy.py at D;
#   * the "1 RTT" unit: a 32-byte TCP echo through a delay proxy at D;
#   * agent traffic: agent_counter.py in front of the shim's agent.sock for one
#     run of each op (done by ws_bench.py, exactly as for the anchor), then
#     COUNT_REPS more untimed runs of each op with a counter on both sides: in
#     front of agent.sock (requests, and how long each waited) and in front of
#     the laptop agent (every call that crossed the tunnel and reached it; the
#     proxy's --ssh-agent is a symlink that is pointed at the counter).
#
#   laptop ssh-agent <- nexus-agent-proxy run <- delay_proxy.py (D) <- nexus-shim serve
#                                                                         | agent.sock
#                               ws_bench.py (as $BENCH_USER) -------------+
#                               git push --ssh (no delay) --> git-server sshd, bare repo
#
# Targets (issue 4): a push costs at most 1 network RTT of agent traffic;
# `ssh-add -l` needs none; a signature costs 1 RTT; at D = 0 the overhead per
# signature is below the `ssh -A` overhead measured in the same run.
#
# Run as root (the anchor installs packages, creates user `anchorbench`, starts
# sshds), from anywhere:
#   sudo bench/ssh_bench.sh                       # ~4 min on 2 vCPUs
#   RTTS="0 20 50" N_AGENT=30 N_PUSH=5 bench/ssh_bench.sh
#   OUT_DIR=/tmp/ssh-bench KEEP_TMP=1 bench/ssh_bench.sh
#   SKIP_ANCHOR=1 bench/ssh_bench.sh              # ours only (no ssh -A columns)
# Builds target/release/ binaries first when missing or older than the sources
# (BUILD=always|never to force). Knobs: RTTS N_AGENT N_PUSH COUNT_REPS OUT_DIR
# KEEP_TMP SKIP_ANCHOR BENCH_USER NEXUS_SHARED (default ../shared).
# Writes OUT_DIR/results.json (combined), OUT_DIR/anchor.json + anchor-raw/
# (the anchor's own output), OUT_DIR/nexus-raw/ (our samples and counts), and
# prints the combined table (also in OUT_DIR/table.txt).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${NEXUS_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
[ -d "$SHARED/bench/anchors" ] || SHARED=/work/shared
ANCHOR=$SHARED/bench/anchors
DELAY_PROXY=$SHARED/tools/delay_proxy.py
RTTS=${RTTS:-"0 50"}
N_AGENT=${N_AGENT:-50}
N_PUSH=${N_PUSH:-10}
COUNT_REPS=${COUNT_REPS:-5}   # counted runs per op (counts from each; wait = median)
OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}/nexus-ssh-bench.$(date -u +%Y%m%dT%H%M%SZ)}
KEEP_TMP=${KEEP_TMP:-0}
SKIP_ANCHOR=${SKIP_ANCHOR:-0}
BU=${BENCH_USER:-anchorbench}     # same user as the anchor: workspace + git logins
BIN=$ROOT/target/release

log() { printf '[nexus-ssh-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the anchor starts sshds and creates user $BU)"
for f in run.sh ws_bench.py harness.py agent_counter.py; do
  [ -r "$ANCHOR/$f" ] || die "missing $ANCHOR/$f (set NEXUS_SHARED)"
done
[ -r "$DELAY_PROXY" ] || die "missing $DELAY_PROXY"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
log "results in $OUT_DIR; load before start: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cpus"

# ---------------------------------------------------------------- build
# BUILD=auto (default): build when a binary is missing or older than a source
# file; BUILD=always / BUILD=never.
BUILD=${BUILD:-auto}
stale=0
for b in nexus-shim nexus-agent-proxy; do [ -x "$BIN/$b" ] || stale=1; done
if [ "$stale" = 0 ] && [ -n "$(find "$ROOT"/{protocol,transport,policies,proxy,workspace-shim} \
      \( -name '*.rs' -o -name Cargo.toml \) -newer "$BIN/nexus-shim" -print -quit)" ]; then
  stale=1
fi
if [ "$BUILD" = always ] || { [ "$BUILD" = auto ] && [ "$stale" = 1 ]; }; then
  log "building release binaries (cargo build --release --workspace)"
  (cd "$ROOT" && cargo build --release --workspace)
fi
for b in nexus-shim nexus-agent-proxy; do [ -x "$BIN/$b" ] || die "$BIN/$b missing"; done

# ---------------------------------------------------------------- 1. anchor: ssh -A
if [ "$SKIP_ANCHOR" != 1 ]; then
  log "anchor: $ANCHOR/run.sh (RTTS=\"$RTTS\")"
  RTTS="$RTTS" N_AGENT="$N_AGENT" N_PUSH="$N_PUSH" BENCH_USER="$BU" \
    OUT="$OUT_DIR/anchor.json" RAWOUT="$OUT_DIR/anchor-raw" \
    bash "$ANCHOR/run.sh" 2>&1 | tee "$OUT_DIR/anchor.txt"
  log "load after the anchor: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# ---------------------------------------------------------------- 2. our stack
# Same prerequisites as the anchor (it installs them; this checks).
for b in ssh ssh-agent ssh-add ssh-keygen git python3 setpriv; do
  command -v "$b" >/dev/null || die "$b not found (run the anchor once: it installs it)"
done
mkdir -p /run/sshd
id "$BU" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' -c "ssh -A anchor benchmark" "$BU"
PY=$(python3 -c 'import sys; print(sys.executable)')   # laptop-side helpers
RPY=/usr/bin/python3                                     # workspace side ($BU), as the anchor
export PYTHONDONTWRITEBYTECODE=1
BU_HOME=$(getent passwd "$BU" | cut -d: -f6)
# Workspace-side commands: as $BU, with a clean login-like environment.
AS_BU=(setpriv --reuid="$BU" --regid="$(id -g "$BU")" --init-groups
       env -i HOME="$BU_HOME" USER="$BU" LOGNAME="$BU" SHELL=/bin/sh
       PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)

T=$(mktemp -d /tmp/nexus-ssh-bench.XXXXXX)
RAW=$OUT_DIR/nexus-raw
rm -rf "$RAW"; mkdir -p "$RAW"
mkdir -p "$T/laptop" "$T/git" "$T/ws" "$T/count"
chmod 755 "$T" "$T/git"
chown "$BU" "$T/count"; chmod 755 "$T/count"   # both counters' sockets and logs
chown "$BU" "$T/laptop"; chmod 755 "$T/laptop"
chown "$BU" "$T/ws"; chmod 700 "$T/ws"      # the shim's state lives here, 0700, owned by $BU
PIDS=()
COUNTERS=()

stop_pid() {  # stop_pid PID: TERM, then wait for it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null; done
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do wait "${PIDS[$i]}" 2>/dev/null; done
  if [ "$rc" != 0 ]; then
    log "FAILED (rc=$rc); last log lines:"
    tail -n 25 "$T"/*.log "$T"/git/sshd.log 2>/dev/null >&2
  fi
  cp "$T"/*.log "$RAW/" 2>/dev/null
  if [ "$KEEP_TMP" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # wait_for CMD...; up to 20 s
  local i
  for ((i=0; i<1000; i++)); do "$@" && return 0; sleep 0.02; done
  log "timeout waiting for: $*"; return 1
}
shim_status() { "${AS_BU[@]}" "${SHIM_ENV[@]}" "$BIN/nexus-shim" status --wait 0 >/dev/null 2>&1; }
linked() { shim_status; }
not_linked() { local rc=0; shim_status || rc=$?; [ "$rc" = 4 ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
freeport() { "$PY" "$ANCHOR/harness.py" freeport; }
start_delay() {  # start_delay TARGET RTT_MS PORTFILE [--tcp-handshake]
  "$PY" "$DELAY_PROXY" --listen 127.0.0.1:0 --target "$1" --rtt-ms "$2" \
      --port-file "$3" "${@:4}" 2>>"$T/delay.log" &
  PIDS+=($!)
  wait_for test -s "$3"
}

# -- laptop agent: fresh ed25519 key, private file deleted after ssh-add. Runs
#    as $BU (like the anchor's) so the workspace user can reach it for "direct";
#    root (our proxy) may always connect to it.
ssh-keygen -q -t ed25519 -N '' -C laptop-key -f "$T/laptop/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -C git-host -f "$T/git/host_ed25519"
cp "$T/laptop/id_ed25519.pub" "$T/authorized_keys"
chmod 644 "$T/authorized_keys" "$T/laptop/id_ed25519.pub"
PUBKEY=$T/laptop/id_ed25519.pub
AGENT_SOCK=$T/laptop/agent.sock
"${AS_BU[@]}" ssh-agent -D -a "$AGENT_SOCK" >/dev/null &
PIDS+=($!)
wait_for test -S "$AGENT_SOCK"
SSH_AUTH_SOCK=$AGENT_SOCK ssh-add -q "$T/laptop/id_ed25519"
rm -f "$T/laptop/id_ed25519"
# The proxy reaches the agent through this link, so that the counting pass can
# put agent_counter.py in front of it without restarting anything.
PROXY_AGENT=$T/laptop/proxy-agent.sock
ln -sfn "$AGENT_SOCK" "$PROXY_AGENT"

# -- git server: sshd with a bare repo, as in the anchor
GIT_PORT=$(freeport)
cat > "$T/git/sshd_config" <<EOF
Port $GIT_PORT
ListenAddress 127.0.0.1
HostKey $T/git/host_ed25519
PidFile $T/git/sshd.pid
AuthorizedKeysFile $T/authorized_keys
PermitRootLogin no
AllowUsers $BU
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxSessions 100
MaxStartups 100
LogLevel ERROR
EOF
/usr/sbin/sshd -D -e -f "$T/git/sshd_config" 2>>"$T/git/sshd.log" &
PIDS+=($!)
wait_for port_open "$GIT_PORT"
mkdir "$T/git/repo.git"; chown "$BU" "$T/git/repo.git"
"${AS_BU[@]}" git init -q --bare "$T/git/repo.git"
GIT_URL="ssh://$BU@127.0.0.1:$GIT_PORT$T/git/repo.git"
GIT_HOSTKEY=$(cut -d' ' -f1,2 "$T/git/host_ed25519.pub")
echo "anchor-git $GIT_HOSTKEY" > "$T/known_hosts"
cat > "$T/ssh_config_ws" <<EOF
Host *
  HostKeyAlias anchor-git
  UserKnownHostsFile $T/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  ControlMaster no
  ControlPath none
  BatchMode yes
  LogLevel ERROR
EOF
chmod 644 "$T/ssh_config_ws" "$T/known_hosts"
log "laptop agent $AGENT_SOCK, git sshd :$GIT_PORT"

# -- workspace: nexus-shim serve as $BU, state dir of its own (0700)
STATE=$T/ws/state
WS_SOCK=$STATE/agent.sock
SHIM_ENV=(NEXUS_STATE_DIR="$STATE" NEXUS_LOG=info)
"${AS_BU[@]}" "${SHIM_ENV[@]}" "$BIN/nexus-shim" serve --listen 127.0.0.1:0 2>>"$T/shim.log" &
PIDS+=($!)
wait_for test -s "$STATE/pairing.uri"
URI=$(cat "$STATE/pairing.uri")
SHIM_ADDR=${URI#nexus://}; SHIM_ADDR=${SHIM_ADDR%%\?*}

# -- laptop: pair, policy allowing the git host (pinned key) for $BU
CFG=$T/laptop-config
NEXUS_CONFIG_DIR=$CFG "$BIN/nexus-agent-proxy" pair "$URI" --name bench >>"$T/proxy.log" 2>&1
WS_RECORD=$CFG/workspaces/bench.toml
grep -q "$SHIM_ADDR" "$WS_RECORD" || die "$WS_RECORD does not hold $SHIM_ADDR"
POLICY=$T/policy.toml
cat > "$POLICY" <<EOF
version = 1

[[ssh.allow]]
host = "127.0.0.1:$GIT_PORT"
user = "$BU"
host_keys = ["$GIT_HOSTKEY"]
sshsig_namespaces = ["file", "git"]
description = "bench git server; ws_bench.py signs in namespace file"
EOF
NEXUS_CONFIG_DIR=$CFG "$BIN/nexus-agent-proxy" policy check "$POLICY" >>"$T/proxy.log" 2>&1 \
  || die "policy check failed: $(tail -n 5 "$T/proxy.log")"
log "shim at $SHIM_ADDR (state $STATE), paired; policy allows 127.0.0.1:$GIT_PORT as $BU"

# -- the "1 RTT" unit, measured like the anchor does
"$PY" "$ANCHOR/harness.py" echo-server --port-file "$T/echo.port" 2>>"$T/echo.log" &
PIDS+=($!)
wait_for test -s "$T/echo.port"
ECHO_PORT=$(cat "$T/echo.port")

cat > "$RAW/meta.json" <<EOF
{"nexus_commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty)",
 "openssh": "$(ssh -V 2>&1 | cut -d, -f1)", "git": "$(git --version | cut -d' ' -f3)",
 "kernel": "$(uname -r)", "cpus": $(nproc), "date": "$(date -u +%FT%TZ)",
 "loadavg_before_nexus": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "n_agent": $N_AGENT, "n_push": $N_PUSH, "count_reps": $COUNT_REPS, "rtts_ms": "$RTTS"}
EOF

# count_op D OP K CMD...: one untimed run of OP as $BU, through agent_counter.py
# in front of agent.sock (workspace side: requests and how long each waited)
# while another sits in front of the laptop agent (laptop side: the calls that
# crossed the tunnel). Keeps that run's events of both logs.
count_op() {
  local d=$1 op=$2 k=$3; shift 3
  local side before=() after
  for side in ws laptop; do before+=("$(wc -l < "$T/count/${side}_$d.jsonl")"); done
  "${AS_BU[@]}" SSH_AUTH_SOCK="$T/count/ws.sock" GIT_SSH_COMMAND="ssh -F $T/ssh_config_ws" "$@" \
      >/dev/null 2>>"$T/count.log" </dev/null
  sleep 0.3   # let background identity refreshes and close events land
  local i=0
  for side in ws laptop; do
    after=$(wc -l < "$T/count/${side}_$d.jsonl")
    sed -n "$((before[i] + 1)),${after}p" "$T/count/${side}_$d.jsonl" > "$RAW/${side}_${op}_${d}_$k.jsonl"
    i=$((i + 1))
  done
}

start_counters() {  # start_counters D: workspace side as $BU, laptop side as root
  : > "$T/count/ws_$1.jsonl"; : > "$T/count/laptop_$1.jsonl"
  chown "$BU" "$T/count/ws_$1.jsonl"
  "${AS_BU[@]}" "$RPY" -B "$ANCHOR/agent_counter.py" --listen "$T/count/ws.sock" \
      --target "$WS_SOCK" --log "$T/count/ws_$1.jsonl" --ready-file "$T/count/ws_ready_$1" \
      2>>"$T/count.log" &
  PIDS+=($!); COUNTERS=($!)
  "$PY" "$ANCHOR/agent_counter.py" --listen "$T/count/laptop.sock" --target "$AGENT_SOCK" \
      --log "$T/count/laptop_$1.jsonl" --ready-file "$T/count/laptop_ready_$1" 2>>"$T/count.log" &
  PIDS+=($!); COUNTERS+=($!)
  wait_for test -e "$T/count/ws_ready_$1"
  wait_for test -e "$T/count/laptop_ready_$1"
}

# ---------------------------------------------------------------- per-RTT runs
for D in $RTTS; do
  log "D=${D}ms: echo RTT through delay_proxy.py"
  start_delay "127.0.0.1:$ECHO_PORT" "$D" "$T/echo_delay_$D.port"
  "$PY" "$ANCHOR/harness.py" rtt --port "$(cat "$T/echo_delay_$D.port")" \
      --n "$N_AGENT" --out "$RAW/rtt_$D.json"

  # The proxy dials the delay proxy, which forwards to the shim.
  start_delay "$SHIM_ADDR" "$D" "$T/tunnel_delay_$D.port" --tcp-handshake
  sed -i -E "s/^address = .*/address = \"127.0.0.1:$(cat "$T/tunnel_delay_$D.port")\"/" "$WS_RECORD"
  NEXUS_CONFIG_DIR=$CFG "$BIN/nexus-agent-proxy" run --workspace bench --policy "$POLICY" \
      --ssh-agent "$PROXY_AGENT" 2>>"$T/proxy.log" &
  PROXY_PID=$!
  PIDS+=($PROXY_PID)
  wait_for linked || die "the proxy did not link (see proxy.log)"
  log "D=${D}ms: linked through delay_proxy.py; in-workspace loops (ws_bench.py)"

  WD=$T/wsdata-$D
  mkdir -p "$WD"; chown "$BU" "$WD"
  "${AS_BU[@]}" "$RPY" -B "$ANCHOR/ws_bench.py" --fwd-sock "$WS_SOCK" \
      --direct-sock "$AGENT_SOCK" --pubkey "$PUBKEY" \
      --n-agent "$N_AGENT" --n-push "$N_PUSH" --git-url "$GIT_URL" \
      --git-ssh-config "$T/ssh_config_ws" --branch "nexus-d$D" \
      --workdir "$WD" --out "$WD/ws.json"
  cp "$WD/ws.json" "$RAW/ws_$D.json"

  log "D=${D}ms: agent traffic, $COUNT_REPS untimed runs per op (agent_counter.py on both sides)"
  start_counters "$D"
  ln -sfn "$T/count/laptop.sock" "$PROXY_AGENT"
  sleep 0.3   # identity refreshes still in flight from the loops land first
  head -c 256 /dev/urandom > "$T/count/data"; chmod 644 "$T/count/data"
  for ((k=1; k<=COUNT_REPS; k++)); do
    count_op "$D" ssh_add_l "$k" ssh-add -l
    count_op "$D" sign "$k" sh -c "ssh-keygen -Y sign -f '$PUBKEY' -n file < '$T/count/data'"
    "${AS_BU[@]}" sh -c "cd '$WD/repo' && echo count $k >> f.txt && git add f.txt && git commit -qm count"
    count_op "$D" git_push "$k" git -C "$WD/repo" push -q origin "HEAD:refs/heads/nexus-d$D"
  done
  ln -sfn "$AGENT_SOCK" "$PROXY_AGENT"
  for p in "${COUNTERS[@]}"; do stop_pid "$p"; done
  stop_pid "$PROXY_PID"
  wait_for not_linked || die "the shim still reports a link after the proxy stopped"
done
log "load after our runs: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- 3. combined report
"$PY" "$HERE/ssh_bench_report.py" --anchor-dir "$ANCHOR" \
    --anchor "$([ "$SKIP_ANCHOR" = 1 ] || echo "$OUT_DIR/anchor.json")" \
    --raw "$RAW" --rtts "$(echo $RTTS | tr ' ' ',')" --out "$OUT_DIR/results.json" \
  | tee "$OUT_DIR/table.txt"
