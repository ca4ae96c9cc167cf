#!/usr/bin/env bash
# Local demo: a workspace shim and a laptop proxy on this machine, paired over
# pinned mutual TLS, then an agent-side `token get` answered by the laptop
# under the example policy. Everything lives in a temporary directory and is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building (debug)"
cargo build --quiet --bins
bin=$PWD/target/debug
demo=$(mktemp -d -t nexus-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$demo"
}
trap cleanup EXIT

export NEXUS_STATE_DIR=$demo/workspace-state   # the workspace side
export NEXUS_CONFIG_DIR=$demo/laptop-config    # the laptop side
export NEXUS_LOG=warn

wait_for() { # wait_for DESCRIPTION COMMAND...: poll a condition for up to 15 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}

echo "==> workspace: nexus-shim serve --listen 127.0.0.1:0"
"$bin/nexus-shim" serve --listen 127.0.0.1:0 2>"$demo/shim.log" &
pids+=($!)
wait_for "pairing.uri" test -s "$NEXUS_STATE_DIR/pairing.uri"
uri=$("$bin/nexus-shim" pairing-uri 2>/dev/null)
echo "    pairing URI: ${uri%%&token=*}&token=<one-time>"

echo "==> laptop: nexus-agent-proxy pair URI --name demo"
"$bin/nexus-agent-proxy" pair "$uri" --name demo

echo "==> laptop: nexus-agent-proxy policy check policies/examples/policy.toml"
"$bin/nexus-agent-proxy" policy check policies/examples/policy.toml

echo "==> laptop: nexus-agent-proxy run --policy policies/examples/policy.toml"
NEXUS_DEMO_TOKEN="hello from the laptop" NEXUS_LOG=info \
  "$bin/nexus-agent-proxy" run --policy policies/examples/policy.toml 2>"$demo/proxy.log" &
pids+=($!)
wait_for "the link" "$bin/nexus-shim" status --wait 0

echo "==> workspace: nexus-shim status"
"$bin/nexus-shim" status

echo "==> workspace: nexus-shim token get demo"
"$bin/nexus-shim" token get demo

echo "==> workspace: nexus-shim token get prod-db   (denied by a [[tokens.deny]] rule: exit 3)"
set +e
"$bin/nexus-shim" token get prod-db
echo "    exit code $?"
set -e

echo "==> workspace: nexus-shim http list   (HTTP APIs the laptop calls with its own keys)"
"$bin/nexus-shim" http list
echo "    an agent uses: OPENAI_BASE_URL=\$NEXUS_HTTP_URL/openai/v1 (from: eval \"\$(nexus-shim env)\")"
echo "    NEXUS_HTTP_URL=$("$bin/nexus-shim" http url)"

echo "==> laptop log (decisions):"
grep -h "decision" "$demo/proxy.log" | sed 's/^/    /'
echo "==> done; stopping both sides"
