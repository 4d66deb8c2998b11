#!/bin/sh
# Generates Envoy's bootstrap, then becomes Envoy.
#   SLUICE_XDS=host:port  xDS mode: only the control plane's address; clusters, the filter's
#                         config and provider credentials come from `sluice serve`.
#     SLUICE_XDS_CA, SLUICE_XDS_CERT, SLUICE_XDS_KEY
#                         required, all three: mTLS to the control plane's data-plane port.
#                         PEM files (mounted from a Secret, e.g. made by `sluice pki`): the CA
#                         that signed the control plane's certificate (which must name the host
#                         of SLUICE_XDS), and this Envoy's certificate (naming
#                         <SLUICE_NODE_ID>.envoy.sluice or *.envoy.sluice) and key.
#     SLUICE_INSECURE_DATA_PLANE=1
#                         instead: plaintext to a control plane run with --insecure-data-plane
#                         (local development only).
#   otherwise             standalone mode, from the mounted LiteLLM-style config.
#   SLUICE_MAX_HEAP_MB, SLUICE_MAX_CONNECTIONS
#                         optional, both modes: Envoy's heap limit (keep it a few hundred MiB
#                         under the container's memory limit) and its downstream connection limit
#                         (sluice envoy-config --max-heap-mb / --max-connections).
set -eu
OUT="${SLUICE_ENVOY_CONFIG:-/tmp/sluice-envoy.yaml}"
WASM=/usr/local/lib/sluice/sluice_filter.wasm
LISTEN="${SLUICE_LISTEN:-0.0.0.0:4000}"
ADMIN_PORT="${SLUICE_ADMIN_PORT:-9901}"
LIMITS=""
if [ -n "${SLUICE_MAX_HEAP_MB:-}" ]; then LIMITS="$LIMITS --max-heap-mb $SLUICE_MAX_HEAP_MB"; fi
if [ -n "${SLUICE_MAX_CONNECTIONS:-}" ]; then LIMITS="$LIMITS --max-connections $SLUICE_MAX_CONNECTIONS"; fi
xds_config() {
  # shellcheck disable=SC2086 # LIMITS is flags and numbers, split on purpose
  sluice envoy-config --xds "$SLUICE_XDS" --node-id "${SLUICE_NODE_ID:-$(hostname)}" --wasm "$WASM" \
    --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT" $LIMITS "$@"
}
if [ -n "${SLUICE_XDS:-}" ]; then
  if [ -n "${SLUICE_XDS_CA:-}${SLUICE_XDS_CERT:-}${SLUICE_XDS_KEY:-}" ]; then
    TOGETHER="set SLUICE_XDS_CA, SLUICE_XDS_CERT and SLUICE_XDS_KEY together"
    xds_config --xds-ca "${SLUICE_XDS_CA:?$TOGETHER}" --xds-cert "${SLUICE_XDS_CERT:?$TOGETHER}" \
      --xds-key "${SLUICE_XDS_KEY:?$TOGETHER}"
  elif [ "${SLUICE_INSECURE_DATA_PLANE:-}" = 1 ]; then
    xds_config --insecure-data-plane
  else
    echo "entrypoint: SLUICE_XDS needs SLUICE_XDS_CA, SLUICE_XDS_CERT and SLUICE_XDS_KEY (mTLS), or SLUICE_INSECURE_DATA_PLANE=1 for local development" >&2
    exit 1
  fi
else
  CONFIG="${SLUICE_CONFIG:-/etc/sluice/config.yaml}"
  sluice config check -c "$CONFIG"
  # shellcheck disable=SC2086
  sluice envoy-config -c "$CONFIG" --wasm "$WASM" --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT" $LIMITS
fi
exec envoy -c "$OUT" --log-level "${SLUICE_LOG_LEVEL:-info}" "$@"
