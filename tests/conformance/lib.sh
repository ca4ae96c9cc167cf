# Shared by the conformance runners: a workspace shim and a laptop proxy on
# this machine, paired over pinned mutual TLS the way a user pairs them
# (`nexus-shim serve`, `nexus-agent-proxy pair URI`, `nexus-agent-proxy run`).
# Source it; it needs NEXUS_BIN (the directory holding both binaries).

# wait_for SECONDS COMMAND...: poll a condition (a socket, a file, a link)
# that has no event to wait on from a shell.
wait_for() {
  local tries=$(($1 * 20)); shift
  while [ "$tries" -gt 0 ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
    tries=$((tries - 1))
  done
  return 1
}

# nexus_link DIR POLICY [PROXY-ARGS...]: start a shim (state DIR/ws) and a
# proxy (config DIR/laptop) under POLICY, paired and linked. The pids go to
# DIR/pids for nexus_unlink; logs to DIR/shim.log and DIR/proxy.log.
nexus_link() {
  local dir=$1 policy=$2; shift 2
  mkdir -p "$dir"
  NEXUS_STATE_DIR=$dir/ws NEXUS_LOG=warn \
    "$NEXUS_BIN/nexus-shim" serve --listen 127.0.0.1:0 \
    </dev/null >"$dir/shim.log" 2>&1 &
  echo $! >>"$dir/pids"
  wait_for 20 test -s "$dir/ws/pairing.uri" || { echo "shim did not start: $(cat "$dir/shim.log")" >&2; return 1; }
  NEXUS_CONFIG_DIR=$dir/laptop "$NEXUS_BIN/nexus-agent-proxy" pair \
    "$(cat "$dir/ws/pairing.uri")" --name conform >/dev/null 2>>"$dir/proxy.log" || return 1
  NEXUS_CONFIG_DIR=$dir/laptop NEXUS_LOG=${NEXUS_CONFORM_LOG:-warn} \
    "$NEXUS_BIN/nexus-agent-proxy" run --policy "$policy" "$@" \
    </dev/null >>"$dir/proxy.log" 2>&1 &
  echo $! >>"$dir/pids"
  wait_for 20 env NEXUS_STATE_DIR="$dir/ws" "$NEXUS_BIN/nexus-shim" status --wait 0 \
    || { echo "no link: $(cat "$dir/proxy.log" "$dir/shim.log")" >&2; return 1; }
}

# nexus_unlink DIR: stop what nexus_link started.
nexus_unlink() {
  local p
  [ -f "$1/pids" ] || return 0
  for p in $(cat "$1/pids"); do kill -TERM "$p" 2>/dev/null || true; done
  for p in $(cat "$1/pids"); do
    while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
  done
  rm -f "$1/pids"
}
