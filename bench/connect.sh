#!/bin/sh
# Times `connect` on a fresh workspace (upload included) and a repeated one.
# The workspace is a fresh HOME reached through `--command` (a local shell);
# set NEXUS_BENCH_COMMAND to a real channel prefix (e.g. 'ssh localhost')
# to measure over it instead. Usage: bench/connect.sh SHIM [PROXY]
set -eu
shim=${1:?usage: bench/connect.sh SHIM [PROXY]}
proxy=${2:-target/debug/nexus-agent-proxy}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
mkdir -m 700 "$dir/home"
printf '#!/bin/sh\nexport HOME=%s\nunset XDG_STATE_HOME NEXUS_STATE_DIR\nexec sh -c "$1"\n' "$dir/home" > "$dir/shell"
chmod +x "$dir/shell"
cmd=${NEXUS_BENCH_COMMAND:-$dir/shell}
export NEXUS_CONFIG_DIR="$dir/config"
now() { date +%s.%N; }
t0=$(now)
"$proxy" connect --command "$cmd" --name bench --no-run --shim-binary "$shim" 2>/dev/null
t1=$(now)
"$proxy" connect --command "$cmd" --name bench --no-run --shim-binary "$shim" 2>/dev/null
t2=$(now)
echo "fresh connect (upload included): $(echo "$t1 - $t0" | bc) s"
echo "repeated connect:                $(echo "$t2 - $t1" | bc) s"
"$proxy" disconnect bench --uninstall 2>/dev/null
