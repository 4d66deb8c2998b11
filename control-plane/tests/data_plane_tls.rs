//! mTLS on the data-plane port (`sluice serve --xds-tls-cert --xds-tls-key --xds-client-ca`):
//! a gRPC client is answered only with an Envoy's client certificate signed by the configured
//! CA; without one, with one from another CA, with one naming no Envoy, or in plaintext, no call
//! gets through. Certificates are made
//! at test time (`common::certs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::certs::{Leaf, TestCa};
use common::{Db, Plane};
use sluice_control_plane::server::data_plane_tls;
use sluice_proto::gateway::v1::KeyLookupRequest;
use sluice_proto::gateway::v1::key_lookup_service_client::KeyLookupServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A key lookup through a fresh connection: Ok if the server answered at all.
async fn lookup(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Channel::from_shared(url.to_owned()).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    // With TLS 1.3 the client's side of the handshake may finish before the server has
    // refused its certificate: the refusal then fails the call rather than the connection.
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    KeyLookupServiceClient::new(channel)
        .lookup(KeyLookupRequest { key_hash: format!("sha256:{}", "0".repeat(64)) })
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e:?}"))
}

fn client_tls(ca: &TestCa, identity: Option<&Leaf>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca.cert()).unwrap()))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(&leaf.cert).unwrap(), std::fs::read(&leaf.key).unwrap()));
    }
    tls
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_configured_ca_are_answered() {
    let ca = TestCa::new("data-plane test CA");
    let server = ca.leaf("control-plane", "DNS:localhost,IP:127.0.0.1");
    let envoy = ca.leaf("envoy", "DNS:edge-1.envoy.sluice");
    // From the right CA, but not an Envoy's (a shared CA signs other workloads' certificates).
    let workload = ca.leaf("workload", "DNS:edge-1");
    let rogue_ca = TestCa::new("rogue CA");
    let rogue = rogue_ca.leaf("rogue-envoy", "DNS:edge-1");
    let tls = data_plane_tls(&server.cert, &server.key, &ca.cert()).unwrap();
    let plane = Plane::start_with(Db::Sqlite, Some(tls)).await;

    lookup(&plane.data_url, Some(client_tls(&ca, Some(&envoy)))).await.unwrap();

    let no_cert = lookup(&plane.data_url, Some(client_tls(&ca, None))).await;
    assert!(no_cert.is_err(), "a client without a certificate was answered");
    let wrong_ca = lookup(&plane.data_url, Some(client_tls(&ca, Some(&rogue)))).await;
    assert!(wrong_ca.is_err(), "a certificate from another CA was accepted");
    let plaintext = lookup(&plane.data_url.replace("https://", "http://"), None).await;
    assert!(plaintext.is_err(), "plaintext gRPC was answered");
    let not_envoy = lookup(&plane.data_url, Some(client_tls(&ca, Some(&workload)))).await.unwrap_err();
    assert!(not_envoy.contains("PermissionDenied") && not_envoy.contains("names no Envoy node"), "{not_envoy}");

    // The port still answers the right client after refusing the others.
    lookup(&plane.data_url, Some(client_tls(&ca, Some(&envoy)))).await.unwrap();
    plane.stop().await;
}

#[test]
fn wrong_files_stop_the_server_at_start_without_showing_key_material() {
    let ca = TestCa::new("data-plane test CA");
    let server = ca.leaf("control-plane", "DNS:localhost");
    let other = ca.leaf("other", "DNS:localhost");
    let missing = std::path::Path::new("/nonexistent/tls.pem");
    let key_text = std::fs::read_to_string(&server.key).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap().to_owned();

    let cases = [
        (data_plane_tls(missing, &server.key, &ca.cert()), "--xds-tls-cert /nonexistent/tls.pem"),
        (data_plane_tls(&server.cert, missing, &ca.cert()), "--xds-tls-key /nonexistent/tls.pem"),
        (data_plane_tls(&server.cert, &server.key, missing), "--xds-client-ca /nonexistent/tls.pem"),
        // Swapped: a key where the certificate goes, a certificate where the key goes.
        (data_plane_tls(&server.key, &server.key, &ca.cert()), "no PEM certificate"),
        (data_plane_tls(&server.cert, &server.cert, &ca.cert()), "no PEM private key"),
        (data_plane_tls(&server.cert, &server.key, &server.key), "no PEM certificate"),
        // Another certificate's key.
        (data_plane_tls(&server.cert, &other.key, &ca.cert()), "data-plane TLS"),
    ];
    for (result, expected) in cases {
        let e = result.map(|_| ()).unwrap_err();
        assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        assert!(!e.contains(&secret_line) && !e.contains("BEGIN"), "{e}");
    }
    assert!(data_plane_tls(&server.cert, &server.key, &ca.cert()).is_ok());
}
