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
#   SLUICE_FILTER=native  optional, both modes: the native build (libsluice_filter.so, an Envoy
#                         dynamic module) instead of the wasm one (SLUICE_FILTER=wasm, the
#                         default). In xDS mode the control plane names the module: run it with
#                         `sluice serve --envoy-native /usr/local/lib/sluice/libsluice_filter.so`.
#   SLUICE_LISTEN, SLUICE_ADMIN_PORT, SLUICE_CONFIG, SLUICE_ENVOY_CONFIG, SLUICE_LOG_LEVEL
#                         optional: the listener (0.0.0.0:4000), Envoy's admin port (9901, bound
#                         to 127.0.0.1), the standalone config (/etc/sluice/config.yaml), where
#                         the bootstrap is written (/tmp/sluice-envoy.yaml) and Envoy's log level.
set -eu
OUT="${SLUICE_ENVOY_CONFIG:-/tmp/sluice-envoy.yaml}"
WASM=/usr/local/lib/sluice/sluice_filter.wasm
NATIVE=/usr/local/lib/sluice/libsluice_filter.so
case "${SLUICE_FILTER:-wasm}" in
  wasm) XDS_MODULE="--wasm $WASM"; STANDALONE_MODULE="--wasm $WASM" ;;
  native) XDS_MODULE="--native"; STANDALONE_MODULE="--native $NATIVE" ;;
  *) echo "entrypoint: SLUICE_FILTER=${SLUICE_FILTER}: wasm or native" >&2; exit 1 ;;
esac
LISTEN="${SLUICE_LISTEN:-0.0.0.0:4000}"
ADMIN_PORT="${SLUICE_ADMIN_PORT:-9901}"
LIMITS=""
if [ -n "${SLUICE_MAX_HEAP_MB:-}" ]; then LIMITS="$LIMITS --max-heap-mb $SLUICE_MAX_HEAP_MB"; fi
if [ -n "${SLUICE_MAX_CONNECTIONS:-}" ]; then LIMITS="$LIMITS --max-connections $SLUICE_MAX_CONNECTIONS"; fi
xds_config() {
  # shellcheck disable=SC2086 # XDS_MODULE and LIMITS are flags and paths, split on purpose
  sluice envoy-config --xds "$SLUICE_XDS" --node-id "${SLUICE_NODE_ID:-$(hostname)}" $XDS_MODULE \
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
  sluice envoy-config -c "$CONFIG" $STANDALONE_MODULE --out "$OUT" --listen "$LISTEN" --admin-port "$ADMIN_PORT" $LIMITS
fi
exec envoy -c "$OUT" --log-level "${SLUICE_LOG_LEVEL:-info}" "$@"
