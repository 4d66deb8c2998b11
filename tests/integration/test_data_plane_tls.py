"""mTLS on the data-plane port: `sluice serve --xds-tls-cert --xds-tls-key --xds-client-ca` and
`sluice envoy-config --xds-ca --xds-cert --xds-key` (every other xDS test uses `sluice pki`'s
files through `--pki-dir`, the same thing).

Certificates here come from a CA made with `openssl` (`conftest.CertAuthority`), as an operator's
own CA would. An Envoy with a client certificate from that CA naming its node
(`<node-id>.envoy.sluice`) gets its config over ADS (clusters, the filter, the provider
credential over SDS) and makes the filter's calls (key lookup, usage, invalidation watch, limit
sync) through the same TLS cluster; a plain gRPC client without such a certificate gets
nothing, not even a connection that answers, and a certificate for another node gets no
configuration. The bootstrap names the certificate files and holds no key. Without TLS flags,
`sluice serve` does not start.
"""

import os
import subprocess
import threading
import time

import grpc
import httpx
import pytest

from conftest import CertAuthority
from test_xds import CHAT, Fleet, create_key, spend, wait_until

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
LOOKUP = "/sluice.v1.KeyLookupService/Lookup"
USAGE = "/sluice.v1.UsageService/Report"
SYNC = "/sluice.v1.LimitService/Sync"


def field(number, payload: bytes) -> bytes:
    """A length-delimited protobuf field (a string or a message)."""

    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sds_request(node_id):
    # DiscoveryRequest {node: {id}, type_url: Secret}; no resource names: every secret.
    return field(2, field(1, node_id.encode())) + field(4, SECRET.encode())


def fetch_secrets(target, credentials=None, node_id="edge-mtls"):
    """The first answer an SDS request gets on the ADS stream (raw DiscoveryResponse bytes), or
    the grpc.RpcError that ended the call. `credentials` None: plaintext gRPC."""
    options = [("grpc.ssl_target_name_override", "localhost")]
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials
               else grpc.insecure_channel(target))
    finished = threading.Event()

    def requests():
        yield sds_request(node_id)
        finished.wait(10)  # keep the stream open until the answer is read

    with channel:
        call = channel.stream_stream(ADS)(requests(), timeout=5)
        try:
            return next(call)
        except grpc.RpcError as e:
            return e
        finally:
            finished.set()
            call.cancel()


@pytest.fixture
def pki(tmp_path):
    ca = CertAuthority(tmp_path / "pki", "Sluice data-plane test CA")
    return {
        "ca": ca.cert,
        "server": ca.leaf("control-plane", "DNS:localhost,IP:127.0.0.1"),
        "envoy": ca.leaf("envoy", "DNS:edge-mtls.envoy.sluice"),
        "fleet": ca.leaf("fleet", "DNS:*.envoy.sluice"),
        # A well-formed client certificate from a CA the control plane does not trust.
        "rogue": CertAuthority(tmp_path / "rogue", "Rogue CA").leaf("rogue-envoy", "DNS:edge-mtls.envoy.sluice"),
    }


@pytest.fixture
def mtls_fleet(tmp_path, pki):
    f = Fleet(tmp_path)
    cert, key = pki["server"]
    f.serve_args = ["--xds-tls-cert", str(cert), "--xds-tls-key", str(key), "--xds-client-ca", str(pki["ca"])]
    try:
        f.start_control_plane()
        yield f
    finally:
        f.stop()


def test_an_envoy_with_a_client_certificate_gets_its_config_and_serves_keys_over_mtls(mtls_fleet, pki):
    fleet = mtls_fleet
    assert "(mTLS: client certificates required)" in fleet.cp_log_path.read_text()
    cert, key = pki["envoy"]
    envoy = fleet.start_envoy("edge-mtls", ["--xds-ca", str(pki["ca"]), "--xds-cert", str(cert), "--xds-key", str(key)])
    # Serving at all means clusters, the filter's config and the provider credential (SDS) came.
    assert envoy.stat("control_plane.connected_state") == "1"
    assert int(envoy.stat("cluster.sluice_control_plane.ssl.handshake")) >= 1

    # A key made with the CLI: looked up and its usage shipped through the same TLS cluster.
    api_key, key_id = create_key(fleet, "--alias", "over-mtls")
    for _ in range(3):
        resp = envoy.chat(CHAT, key=api_key)
        assert resp.status_code == 200, resp.text
    report = wait_until(lambda: (r := spend(fleet, "--key", key_id)) and r["requests"] == 3 and r,
                        what="usage ingested over mTLS")
    assert report["spend"] > 0
    metrics = fleet.metrics()
    assert 'sluice_key_lookups_total{result="found"} ' in metrics
    assert "sluice_xds_connected_envoys 1\n" in metrics
    # Never a plaintext connection: every one of them completed a TLS handshake.
    assert envoy.stat("cluster.sluice_control_plane.ssl.connection_error") == "0"

    # The bootstrap names the files; no key material reaches Envoy's config or /config_dump.
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    assert str(cert) in dump and str(pki["ca"]) in dump and "UpstreamTlsContext" in dump
    assert str(key) in envoy.yaml.read_text()  # the bootstrap names it; Envoy's dump redacts even that
    key_body = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    for text in (dump, envoy.yaml.read_text()):
        assert "PRIVATE KEY" not in text
        assert not any(line in text for line in key_body)
    assert fleet.openai_key not in dump


def test_without_a_client_certificate_from_the_ca_nothing_is_served(mtls_fleet, pki):
    fleet = mtls_fleet
    target = f"127.0.0.1:{fleet.xds_port}"
    ca = pki["ca"].read_bytes()

    def tls(identity=None):
        if identity is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        cert, key = identity
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key.read_bytes(),
                                            certificate_chain=cert.read_bytes())

    # The probe works: with the right certificate it reads the provider credential over SDS.
    answer = fetch_secrets(target, tls(pki["envoy"]))
    assert isinstance(answer, bytes) and fleet.openai_key.encode() in answer, answer

    for name, credentials in (("no client certificate", tls()),
                              ("a certificate from another CA", tls(pki["rogue"])),
                              ("plaintext gRPC", None)):
        refused = fetch_secrets(target, credentials)
        assert isinstance(refused, grpc.RpcError), f"{name}: got an answer"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, (name, refused)
        assert fleet.openai_key not in str(refused.details())

    # A certificate from the CA, but for another node: the stream is refused before any answer.
    refused = fetch_secrets(target, tls(pki["envoy"]), node_id="edge-other")
    assert isinstance(refused, grpc.RpcError), "a certificate for edge-mtls read edge-other's config"
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused
    assert "edge-other" in refused.details() and fleet.openai_key not in refused.details()
    assert fleet.metric("sluice_xds_refused_streams_total") >= 1

    # An Envoy from a plain bootstrap never gets a config: it keeps trying.
    plain = fleet.start_envoy("edge-plain", ["--insecure-data-plane"], wait=False)
    wait_until(lambda: int(plain.stat("cluster.sluice_control_plane.upstream_cx_total") or 0) >= 2, timeout=20,
               what="the plain Envoy retried")
    assert plain.stat("control_plane.connected_state") == "0"
    assert "sluice_xds_connected_envoys 0\n" in fleet.metrics()
    with pytest.raises(httpx.ConnectError):  # its listener never left warming
        plain.chat(CHAT)


def varint_field(number, n):
    """A varint protobuf field (an integer)."""
    out = bytes([number << 3])
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def unary(target, credentials, method, request: bytes):
    """One unary call with raw protobuf bytes: the answer's bytes, or the grpc.RpcError."""
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        try:
            return channel.unary_unary(method)(request, timeout=5)
        except grpc.RpcError as e:
            return e


def test_only_envoys_certificates_reach_the_filters_services_and_each_reports_limits_as_itself(mtls_fleet, pki):
    """The CA may be a shared one (a cluster-wide issuer) that signs other workloads' client
    certificates too: those look up no key, report no usage and sync no limit counts; and an
    Envoy's certificate syncs limit counts only as its own node, since reports for another node
    would overwrite that node's counts."""
    fleet = mtls_fleet
    target = f"127.0.0.1:{fleet.xds_port}"
    ca = pki["ca"].read_bytes()

    def tls(identity):
        cert, key = identity
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key.read_bytes(),
                                            certificate_chain=cert.read_bytes())

    envoy, workload = tls(pki["envoy"]), tls(pki["server"])  # the latter: CA-signed, clientAuth, not an Envoy
    window = int(time.time() * 1000) // 60000
    scope = f"sluice:k:probe-{os.urandom(4).hex()}".encode()  # the counts may live in a shared Redis

    def scope_counts(requests, tokens):
        return field(1, scope) + varint_field(2, requests) + varint_field(3, tokens)

    def sync_as(instance):
        return field(1, instance.encode()) + varint_field(2, window) + field(3, scope_counts(5, 50))

    lookup = field(1, b"0" * 64)
    usage = field(1, field(23, b"probe-record") + field(6, b"gpt-4o-mini"))

    refused_before = fleet.metric("sluice_data_plane_refused_calls_total")
    for method, request in ((LOOKUP, lookup), (USAGE, usage), (SYNC, sync_as("edge-mtls/1"))):
        answer = unary(target, workload, method, request)
        assert isinstance(answer, grpc.RpcError), f"{method}: a non-Envoy certificate got an answer"
        assert answer.code() == grpc.StatusCode.PERMISSION_DENIED, (method, answer)
        assert "names no Envoy node" in answer.details()
    # Nor does it get configuration.
    refused = fetch_secrets(target, workload)
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused

    # The Envoy's certificate: a lookup of an unknown key is answered (not found is an answer).
    assert not isinstance(unary(target, envoy, LOOKUP, lookup), grpc.RpcError)
    # Its own node's counts are taken; another node's are refused and change nothing.
    assert not isinstance(unary(target, envoy, SYNC, sync_as("edge-mtls/1")), grpc.RpcError)
    other = unary(target, envoy, SYNC, sync_as("edge-other/1"))
    assert isinstance(other, grpc.RpcError) and other.code() == grpc.StatusCode.PERMISSION_DENIED, other
    assert "edge-other" in other.details()
    # What a third instance (a fleet certificate: any node) hears the others counted: edge-mtls's
    # 5 requests and 50 tokens, not edge-other's.
    answer = unary(target, tls(pki["fleet"]), SYNC, sync_as("edge-third/1"))
    assert not isinstance(answer, grpc.RpcError), answer
    assert field(2, scope_counts(5, 50)) in answer, answer
    assert fleet.metric("sluice_data_plane_refused_calls_total") == refused_before + 4


def test_the_data_plane_port_needs_tls_unless_told_it_is_local_development(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        fleet.serve_args = []
        with pytest.raises(AssertionError):
            fleet.start_control_plane()
        log = fleet.cp_log_path.read_text()
        assert "needs mTLS" in log and "--pki-dir" in log and "--insecure-data-plane" in log, log
        assert fleet.control_plane.wait(timeout=10) != 0
        # `sluice envoy-config --xds` refuses a plaintext bootstrap the same way.
        out = subprocess.run([fleet.bins["SLUICE_CLI"], "envoy-config", "--xds", "127.0.0.1:1",
                              *fleet.filter_args(), "--out", str(tmp_path / "e.yaml")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "--insecure-data-plane" in out.stderr, out.stderr

        # Local development, said explicitly: plaintext, with a warning.
        fleet.serve_args = ["--insecure-data-plane"]
        fleet.start_control_plane()
        assert "answers any client in plaintext" in fleet.cp_log_path.read_text()
        envoy = fleet.start_envoy("edge-dev", ["--insecure-data-plane"])
        assert envoy.chat(CHAT).status_code == 200
    finally:
        fleet.stop()
