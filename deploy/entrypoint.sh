#!/bin/sh
# Generates Envoy's bootstrap, then becomes Envoy.
#   SLUICE_XDS=host:port  xDS mode: only the control plane's address; clusters, the filter's
#                         config and provider credentials come from `sluice serve`.
#     SLUICE_XDS_CA, SLUICE_XDS_CERT, SLUICE_XDS_KEY
#                         optional, all three: mTLS to a control plane started with
#                         --xds-tls-cert/--xds-tls-key/--xds-client-ca. PEM files (mounted from
#                         a Secret): the CA that signed the control plane's certificate (which
#                         must name the host of SLUICE_XDS), this Envoy's certificate and key.
#   otherwise             standalone mode, from the mounted LiteLLM-style config.
set -eu
OUT="${SLUICE_ENVOY_CONFIG:-/tmp/sluice-envoy.yaml}"
WASM=/usr/local/lib/sluice/sluice_filter.wasm
LISTEN="${SLUICE_LISTEN:-0.0.0.0:4000}"
ADMIN_PORT="${SLUICE_ADMIN_PORT:-9901}"
xds_config() {
  sluice envoy-config --xds "$SLUICE_XDS" --node-id "${SLUICE_NODE_ID:-$(hostname)}" --wasm "$WASM" \
    --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT" "$@"
}
if [ -n "${SLUICE_XDS:-}" ]; then
  if [ -n "${SLUICE_XDS_CA:-}${SLUICE_XDS_CERT:-}${SLUICE_XDS_KEY:-}" ]; then
    TOGETHER="set SLUICE_XDS_CA, SLUICE_XDS_CERT and SLUICE_XDS_KEY together"
    xds_config --xds-ca "${SLUICE_XDS_CA:?$TOGETHER}" --xds-cert "${SLUICE_XDS_CERT:?$TOGETHER}" \
      --xds-key "${SLUICE_XDS_KEY:?$TOGETHER}"
  else
    xds_config
  fi
else
  CONFIG="${SLUICE_CONFIG:-/etc/sluice/config.yaml}"
  sluice config check -c "$CONFIG"
  sluice envoy-config -c "$CONFIG" --wasm "$WASM" --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT"
fi
exec envoy -c "$OUT" --log-level "${SLUICE_LOG_LEVEL:-info}" "$@"
