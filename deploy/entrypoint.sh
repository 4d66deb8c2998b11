#!/bin/sh
# Generates Envoy's bootstrap, then becomes Envoy.
#   SLUICE_XDS=host:port  xDS mode: only the control plane's address; clusters, the filter's
#                         config and provider credentials come from `sluice serve`.
#   otherwise             standalone mode, from the mounted LiteLLM-style config.
set -eu
OUT="${SLUICE_ENVOY_CONFIG:-/tmp/sluice-envoy.yaml}"
WASM=/usr/local/lib/sluice/sluice_filter.wasm
LISTEN="${SLUICE_LISTEN:-0.0.0.0:4000}"
ADMIN_PORT="${SLUICE_ADMIN_PORT:-9901}"
if [ -n "${SLUICE_XDS:-}" ]; then
  sluice envoy-config --xds "$SLUICE_XDS" --node-id "${SLUICE_NODE_ID:-$(hostname)}" --wasm "$WASM" \
    --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT"
else
  CONFIG="${SLUICE_CONFIG:-/etc/sluice/config.yaml}"
  sluice config check -c "$CONFIG"
  sluice envoy-config -c "$CONFIG" --wasm "$WASM" --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT"
fi
exec envoy -c "$OUT" --log-level "${SLUICE_LOG_LEVEL:-info}" "$@"
