"""Numbers the `fail` sites of an OpenSSH regression script so the runner
can count cases: before the statement that checks (the `if`, or the command
whose `|| fail` reports), `nexus_case SITE` records that the check ran; the
`fail` call itself becomes `nexus_fail SITE ...`. A case is a site plus the
loop variables set when it ran (key type, host, user). Usage:
instrument.py SCRIPT [FIRST LAST] (only sites on lines FIRST..LAST count)."""
import re
import sys

path = sys.argv[1]
first, last = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1, 10**9)
name = path.rsplit("/", 1)[-1]
lines = open(path).read().split("\n")
call = re.compile(r"(^\s*|\|\|\s*|then\s+|;\s*)fail(\s)")
inserts = {}  # line index -> markers to put before it
for i, line in enumerate(lines):
    if not (first <= i + 1 <= last) or not call.search(line):
        continue
    site = f"{name}:{i + 1}"
    lines[i] = call.sub(lambda m: f"{m.group(1)}nexus_fail '{site}'{m.group(2)}", line, count=1)
    start = i
    if line.strip().startswith("fail") and not lines[i - 1].rstrip().endswith("\\"):
        # The body of an if: mark before the if (never before an elif).
        while start > 0 and not re.match(r"\s*if\s", lines[start]):
            start -= 1
    while start > 0 and lines[start - 1].rstrip().endswith("\\"):
        start -= 1
    inserts.setdefault(start, []).append(f"nexus_case '{site}'")
out = []
prelude = r'''
# Added by tests/conformance/openssh/instrument.py: count cases.
nexus_ctx() {
	for v in t h u _host _case _key; do
		eval "x=\${$v-}"; [ -n "$x" ] && printf ' %s=%s' "$v" "${x#"$OBJ"/}"
	done
}
nexus_case() { nexus_rc=$?; echo "$1$(nexus_ctx)" >> "$OBJ/nexus-reached"; return $nexus_rc; }
nexus_fail() { echo "$1$(nexus_ctx)" >> "$OBJ/nexus-failed"; shift; fail "$@"; }
'''
for i, line in enumerate(lines):
    if i == 2:
        out.append(prelude)
    out.extend(inserts.get(i, []))
    out.append(line)
open(path, "w").write("\n".join(out))
