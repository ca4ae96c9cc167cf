#!/bin/sh
# Times `connect` on a fresh workspace (upload included), a repeated one, and
# a fresh one up to the first answered `nexus-shim token get` in the
# workspace (the link included). The workspace is a fresh HOME reached
# through `--command` (a local shell); set NEXUS_BENCH_COMMAND to a real
# channel prefix (e.g. 'ssh -p 2222 me@127.0.0.1') to measure over it
# instead: a throwaway account, as each fresh run first removes its shim and
# nexus state. Usage: bench/connect.sh SHIM [PROXY]
set -eu
shim=${1:?usage: bench/connect.sh SHIM [PROXY]}
proxy=${2:-target/debug/nexus-agent-proxy}
dir=$(mktemp -d)
mkdir -m 700 "$dir/home"
printf '#!/bin/sh\nexport HOME=%s\nunset XDG_STATE_HOME NEXUS_STATE_DIR\nexec sh -c "$1"\n' "$dir/home" > "$dir/shell"
chmod +x "$dir/shell"
cmd=${NEXUS_BENCH_COMMAND:-$dir/shell}
export NEXUS_CONFIG_DIR="$dir/config"
printf 'version = 1\n\n[tokens.demo]\nsource = "env:NEXUS_BENCH_TOKEN"\n' > "$dir/policy.toml"
export NEXUS_BENCH_TOKEN=bench-token
linked=
cleanup() {
  [ -n "$linked" ] && kill "$linked" 2>/dev/null && wait "$linked" 2>/dev/null
  "$proxy" disconnect bench --uninstall 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
now() { date +%s.%N; }
fresh() { $cmd 'rm -rf "$HOME/.local/bin/nexus-shim" "${XDG_STATE_HOME:-$HOME/.local/state}/nexus"'; }
fresh
t0=$(now)
"$proxy" connect --command "$cmd" --name bench --no-run --shim-binary "$shim" 2>/dev/null
t1=$(now)
"$proxy" connect --command "$cmd" --name bench --no-run --shim-binary "$shim" 2>/dev/null
t2=$(now)
echo "fresh connect (upload included): $(echo "$t1 - $t0" | bc) s"
echo "repeated connect:                $(echo "$t2 - $t1" | bc) s"
"$proxy" disconnect bench --uninstall 2>/dev/null
fresh
# Fresh again, linked this time; the workspace asks for a token at once and
# waits for the link (`--wait`), so the clock stops at the first answer.
t3=$(now)
"$proxy" connect --command "$cmd" --name bench --shim-binary "$shim" --policy "$dir/policy.toml" 2>/dev/null &
linked=$!
got=
end=$(($(date +%s) + 60))
# Until the shim is installed there is nothing to ask: retry at once.
while [ "$got" != "$NEXUS_BENCH_TOKEN" ] && [ "$(date +%s)" -lt $end ]; do
  got=$($cmd '[ -x "$HOME/.local/bin/nexus-shim" ] && "$HOME/.local/bin/nexus-shim" token get demo --wait 20s' 2>/dev/null) || true
done
t4=$(now)
[ "$got" = "$NEXUS_BENCH_TOKEN" ] || { echo "no token from the workspace" >&2; exit 1; }
echo "fresh connect to the first token: $(echo "$t4 - $t3" | bc) s"
