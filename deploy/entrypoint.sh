#!/bin/sh
# Generates Envoy's bootstrap from the mounted LiteLLM-style config, then becomes Envoy.
set -eu
CONFIG="${SLUICE_CONFIG:-/etc/sluice/config.yaml}"
OUT="${SLUICE_ENVOY_CONFIG:-/tmp/sluice-envoy.yaml}"
sluice config check -c "$CONFIG"
sluice envoy-config -c "$CONFIG" --wasm /usr/local/lib/sluice/sluice_filter.wasm --out "$OUT" \
  --listen "${SLUICE_LISTEN:-0.0.0.0:4000}" --admin-port "${SLUICE_ADMIN_PORT:-9901}"
exec envoy -c "$OUT" --log-level "${SLUICE_LOG_LEVEL:-info}" "$@"
