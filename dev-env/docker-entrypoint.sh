#!/bin/sh
# Runs `esdb node start` with the container's settings (ESDB_* variables and any arguments).
# ESDB_ADVERTISE=auto: advertise this container's first IP address, which peers and clients
# on the same network can reach (nodes listen on 0.0.0.0 and must say where they are).
set -eu
if [ "${ESDB_ADVERTISE:-}" = "auto" ]; then
    ESDB_ADVERTISE="$(hostname -i | cut -d ' ' -f 1)"
    export ESDB_ADVERTISE
fi
exec esdb node start "$@"
