#!/bin/sh
# Starts the nexus-shim daemon in the background, then the container's command.
# The pairing URI appears in $NEXUS_STATE_DIR/pairing.uri (and `nexus-shim pairing-uri`).
set -eu
nexus-shim serve --listen "${NEXUS_LISTEN:-0.0.0.0:7676}" ${NEXUS_ADVERTISE:+--advertise "$NEXUS_ADVERTISE"} &
exec "$@"
