#!/bin/sh
# Container entrypoint: starts the nexus-shim daemon in the background, then
# the container's command. The pairing URI appears in
# $NEXUS_STATE_DIR/pairing.uri and from `nexus-shim pairing-uri`.
set -eu
state="${NEXUS_STATE_DIR:-$HOME/.local/state/nexus}"
mkdir -p "$state" && chmod 0700 "$state"
if [ -n "${NEXUS_ADVERTISE:-}" ]; then
  nexus-shim serve --listen "${NEXUS_LISTEN:-0.0.0.0:7676}" --advertise "$NEXUS_ADVERTISE" &
else
  nexus-shim serve --listen "${NEXUS_LISTEN:-0.0.0.0:7676}" &
fi
exec "$@"
