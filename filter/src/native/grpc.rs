//! Unary gRPC over Envoy's HTTP callouts. The dynamic-module ABI has no gRPC call, so a call is
//! an HTTP/2 POST through the control plane's cluster (mTLS and all, as the cluster says) with
//! gRPC's framing written here; the answer is read back from the callout's headers and body.
//!
//! The callout's answer carries no trailers, where gRPC puts the status of a normal answer: a
//! 200 with one whole message and no `grpc-status` header is OK (a unary server sends its
//! message only with status OK); an error comes as a trailers-only answer, whose `grpc-status`
//! is a header.

/// gRPC's codes as the flow and the service read them.
pub const OK: u32 = 0;
const UNKNOWN: u32 = 2;
const UNAVAILABLE: u32 = 14;

/// A call of `/<service>/<method>` on `cluster`: `start` sends the callout (a stream's or a
/// config's) with the call's headers and framed body; the call's token, or None if Envoy did not
/// start it.
pub fn call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    start: impl FnOnce(&[(&str, &[u8])], &[u8]) -> Option<u64>,
) -> Option<u32> {
    let (path, body) = request(service, method, message);
    let id = start(&headers(&path, cluster), &body)?;
    u32::try_from(id).ok()
}

/// The request's path and framed body for `/<service>/<method>`.
fn request(service: &str, method: &str, message: &[u8]) -> (String, Vec<u8>) {
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0); // not compressed
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(message);
    (format!("/{service}/{method}"), body)
}

/// The headers of a call: `:authority` is required by Envoy (and unread by the control plane).
fn headers<'a>(path: &'a str, cluster: &'a str) -> [(&'a str, &'a [u8]); 5] {
    [
        (":method", b"POST"),
        (":path", path.as_bytes()),
        (":authority", cluster.as_bytes()),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ]
}

/// The gRPC status and message of a callout's answer. `delivered` is false when Envoy gave up
/// (reset, timeout, an answer too large): unavailable.
pub fn answer(delivered: bool, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> (u32, Vec<u8>) {
    if !delivered {
        return (UNAVAILABLE, Vec::new());
    }
    let header = |name: &[u8]| headers.iter().find(|(k, _)| k.as_slice() == name).map(|(_, v)| v.as_slice());
    if header(b":status") != Some(b"200") {
        // Envoy's own reply (no healthy upstream, a timeout) or a proxy's: not the server's.
        return (UNAVAILABLE, Vec::new());
    }
    if let Some(status) = header(b"grpc-status") {
        let code = std::str::from_utf8(status).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(UNKNOWN);
        if code != OK {
            return (code, Vec::new());
        }
    }
    match body {
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            match rest.get(..len) {
                Some(message) => (OK, message.to_vec()),
                None => (UNKNOWN, Vec::new()),
            }
        }
        // No message (or a compressed one, which the control plane never sends).
        _ => (UNKNOWN, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn a_request_is_one_uncompressed_length_prefixed_message() {
        let (path, body) = request("sluice.v1.KeyLookupService", "Lookup", b"abc");
        assert_eq!(path, "/sluice.v1.KeyLookupService/Lookup");
        assert_eq!(body, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let headers = headers(&path, "sluice_control_plane");
        assert!(headers.contains(&("content-type", b"application/grpc".as_slice())));
    }

    #[test]
    fn answers_read_as_grpc_statuses() {
        let ok = h(&[(":status", "200"), ("content-type", "application/grpc")]);
        assert_eq!(answer(true, &ok, &[0, 0, 0, 0, 2, 7, 8]), (OK, vec![7, 8]));
        // An empty message is still a message.
        assert_eq!(answer(true, &ok, &[0, 0, 0, 0, 0]), (OK, vec![]));
        // Trailers-only errors carry the status in the headers.
        let denied = h(&[(":status", "200"), ("grpc-status", "7")]);
        assert_eq!(answer(true, &denied, &[]), (7, vec![]));
        // Truncated, missing or compressed messages, Envoy's 503s and failed callouts.
        assert_eq!(answer(true, &ok, &[0, 0, 0, 0, 9, 1]).0, UNKNOWN);
        assert_eq!(answer(true, &ok, &[]).0, UNKNOWN);
        assert_eq!(answer(true, &ok, &[1, 0, 0, 0, 1, 1]).0, UNKNOWN);
        assert_eq!(answer(true, &h(&[(":status", "503")]), b"no healthy upstream").0, UNAVAILABLE);
        assert_eq!(answer(false, &[], &[]).0, UNAVAILABLE);
    }
}
