#!/bin/sh
# Dev container feature install script for nexus-shim. Runs as root at image
# build time with the options as upper-case variables (BINARY, VERSION,
# LISTEN, ADVERTISE, HTTPLISTEN, GITCREDENTIALHELPER) and the dev container user as
# _REMOTE_USER. It:
#   1. installs /usr/local/bin/nexus-shim;
#   2. creates the state directory /var/lib/nexus/state, owned by the remote
#      user, mode 0700 (the shim refuses anything looser), on the feature's
#      volume so the workspace key survives a rebuild and the laptop's pin
#      stays valid;
#   3. installs the entrypoint that starts `nexus-shim serve` as that user;
#   4. points git's credential helper at the shim (system git config).
# The binary is the static shim (it runs on any Linux, glibc or musl):
#   - `binary` set: that path in the build context, or an https:// URL, of
#     the binary or of the release archive nexus-shim-linux-ARCH.gz;
#   - else nexus-shim-linux-ARCH (or .gz) next to this script, which is how
#     an offline or air-gapped image carries it (copy the output of
#     scripts/build-static.sh into the feature's folder);
#   - else the release archive of `version`, checked against its .sha256.
set -eu

BINARY="${BINARY:-}"
VERSION="${VERSION:-latest}"
LISTEN="${LISTEN:-0.0.0.0:7676}"
ADVERTISE="${ADVERTISE:-}"
HTTPLISTEN="${HTTPLISTEN:-127.0.0.1:0}"
GITCREDENTIALHELPER="${GITCREDENTIALHELPER:-true}"
REMOTE_USER="${_REMOTE_USER:-root}"
# GitHub's layout: $RELEASES/latest/download/ASSET, $RELEASES/download/TAG/ASSET.
RELEASES="${NEXUS_RELEASES_URL:-https://example.invalid/nexus-agent-proxy/releases}"

BIN_DIR=/usr/local/bin
SHARE=/usr/local/share/nexus-shim
STATE_ROOT=/var/lib/nexus
STATE="$STATE_ROOT/state"

die() { echo "nexus-shim feature: $*" >&2; exit 1; }

case "$REMOTE_USER" in
  *[!A-Za-z0-9._-]*|'') die "unexpected remote user name: '$REMOTE_USER'" ;;
esac
id "$REMOTE_USER" >/dev/null 2>&1 || die "remote user '$REMOTE_USER' does not exist in the image"

# 1. The binary.
mkdir -p "$BIN_DIR" "$SHARE"
tmp="$BIN_DIR/.nexus-shim.$$"
trap 'rm -f "$tmp" "$tmp.sha256" "$tmp.unpacked"' EXIT
name="nexus-shim-linux-$(uname -m)"
here=$(cd "$(dirname "$0")" && pwd)
fetch() { # fetch URL DEST
  command -v curl >/dev/null 2>&1 || die "curl is needed to download $1 (or pass the binary option)"
  curl -fsSL --proto '=https' -o "$2" "$1" || die "could not download $1"
}
case "$BINARY" in
  https://*) fetch "$BINARY" "$tmp" ;;
  "")
    if [ -f "$here/$name" ]; then
      cp "$here/$name" "$tmp"
    elif [ -f "$here/$name.gz" ]; then
      cp "$here/$name.gz" "$tmp"
    else
      case "$VERSION" in
        latest) url="$RELEASES/latest/download/$name.gz" ;;
        *) url="$RELEASES/download/$VERSION/$name.gz" ;;
      esac
      fetch "$url" "$tmp"
      fetch "$url.sha256" "$tmp.sha256"
      want=$(cut -d' ' -f1 < "$tmp.sha256")
      got=$(sha256sum "$tmp" | cut -d' ' -f1)
      [ "$want" = "$got" ] || die "$url does not match its .sha256 (got $got, want $want)"
    fi ;;
  *)
    [ -f "$BINARY" ] || die "binary '$BINARY' not found (paths are relative to the feature's build context)"
    cp "$BINARY" "$tmp" ;;
esac
# The release archive is gzip (magic 1f 8b): unpack it.
if [ "$(head -c 2 "$tmp" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; then
  command -v gzip >/dev/null 2>&1 || die "gzip is needed to unpack $name.gz"
  gzip -dc < "$tmp" > "$tmp.unpacked" || die "could not unpack $name.gz"
  mv -f "$tmp.unpacked" "$tmp"
fi
chmod 0755 "$tmp"
"$tmp" --version >/dev/null 2>&1 || die "the installed binary does not run here (wrong architecture, or not the static build?)"
mv -f "$tmp" "$BIN_DIR/nexus-shim"
rm -f "$tmp.sha256"
trap - EXIT

# 2. State directory on the feature's volume. Only the state dir is the
# user's: the volume's root stays root's, because the entrypoint (as root)
# appends shim.log there, and a user-owned directory would let anything in
# the workspace swap shim.log for a symlink to a file root then appends to.
mkdir -p "$STATE"
chown root "$STATE_ROOT"
chmod 0755 "$STATE_ROOT"
chown "$REMOTE_USER" "$STATE"
chmod 0700 "$STATE"

# 3. Entrypoint and its settings (values quoted for sh).
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
  echo "# Written by the nexus-shim feature's install.sh."
  echo "NEXUS_USER=$(quote "$REMOTE_USER")"
  echo "NEXUS_LISTEN=$(quote "$LISTEN")"
  echo "NEXUS_ADVERTISE=$(quote "$ADVERTISE")"
  echo "NEXUS_HTTP_LISTEN=$(quote "$HTTPLISTEN")"
} > "$SHARE/feature.env"
cat > "$SHARE/entrypoint.sh" <<'ENTRY'
#!/bin/sh
# Dev container entrypoint added by the nexus-shim feature: starts the shim
# daemon in the background as the dev container user (the sockets it makes are
# 0600, so the agent must run as that same user), then the container's command.
set -eu
. /usr/local/share/nexus-shim/feature.env
state="${NEXUS_STATE_DIR:-/var/lib/nexus/state}"
log="$(dirname "$state")/shim.log"
start() {
  if [ -n "$NEXUS_ADVERTISE" ]; then
    "$@" /usr/local/bin/nexus-shim serve --state-dir "$state" --listen "$NEXUS_LISTEN" --http-listen "$NEXUS_HTTP_LISTEN" --advertise "$NEXUS_ADVERTISE"
  else
    "$@" /usr/local/bin/nexus-shim serve --state-dir "$state" --listen "$NEXUS_LISTEN" --http-listen "$NEXUS_HTTP_LISTEN"
  fi
}
if [ "$(id -u)" = 0 ] && [ "$NEXUS_USER" != root ]; then
  # A volume made by an older version of this feature has its root owned
  # by the user, who may have left a symlink as shim.log: take the
  # directory back before opening the log as root.
  logdir=$(dirname "$log")
  if [ "$logdir" = /var/lib/nexus ]; then
    chown root "$logdir" && chmod 0755 "$logdir"
    if [ -L "$log" ] || { [ -e "$log" ] && [ ! -f "$log" ]; }; then rm -f "$log"; fi
  fi
  if command -v setpriv >/dev/null 2>&1; then
    uid=$(id -u "$NEXUS_USER"); gid=$(id -g "$NEXUS_USER")
    start setpriv --reuid "$uid" --regid "$gid" --init-groups env HOME="$(getent passwd "$NEXUS_USER" | cut -d: -f6)" >>"$log" 2>&1 &
  else
    start su -s /bin/sh "$NEXUS_USER" -c 'exec "$0" "$@"' >>"$log" 2>&1 &
  fi
else
  start env >>"$log" 2>&1 &
fi
if [ "$#" -eq 0 ]; then
  set -- sleep infinity
fi
exec "$@"
ENTRY
chmod 0755 "$SHARE/entrypoint.sh"

# 4. git: ask the laptop for HTTPS credentials (the policy decides which).
if [ "$GITCREDENTIALHELPER" = true ]; then
  if command -v git >/dev/null 2>&1; then
    git config --system credential.helper '!nexus-shim git-credential'
    git config --system credential.useHttpPath true
  else
    echo "nexus-shim feature: git is not installed; skipping the credential helper" >&2
  fi
fi

echo "nexus-shim feature: installed $("$BIN_DIR/nexus-shim" --version); state in $STATE (user $REMOTE_USER)"
