//! Titan's embeddings of several texts: a call per text, sent by the filter through the
//! deployment's cluster, answered as one list (`flow/fan_out.rs`).

use super::*;
use crate::mock_host::HttpCall;

/// Starts an embeddings request for `titan` with `body`; the stream waits for its calls.
fn embed(h: &Harness, body: &str) -> Stream {
    let auth = format!("Bearer {}", key(1));
    let headers: [(&str, &[u8]); 3] =
        [("authorization", auth.as_bytes()), ("content-type", b"application/json"), ("x-client-trace", b"t-1")];
    let mut s = h.start("POST", "/v1/embeddings", &headers);
    s.host.set_request_header("content-length", Some(body.len().to_string().as_bytes()));
    assert_eq!(s.flow.on_request_headers(false), Action::Pause);
    *s.host.stream.request_body.borrow_mut() = body.as_bytes().to_vec();
    assert_eq!(s.flow.on_request_body(body.len(), true), Action::Pause, "the filter sends the calls itself");
    s
}

fn calls(h: &Harness) -> Vec<HttpCall> {
    h.envoy.http_calls.borrow().clone()
}

fn text_of(call: &HttpCall) -> String {
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
    body["inputText"].as_str().unwrap().to_owned()
}

impl Stream {
    /// Delivers call `token`'s answer (None: Envoy got none).
    fn answer_call(&mut self, token: u32, status: Option<u16>, body: &str) {
        *self.host.stream.http_response.borrow_mut() = (status, body.as_bytes().to_vec());
        self.flow.on_http_response(token, body.len());
    }

    /// Answers call `token` as Titan does for `text`: a vector, and its count.
    fn titan_answers(&mut self, token: u32, count: u64) {
        let answer = format!(r#"{{"embedding":[{count}.5,-1.0],"inputTextTokenCount":{count}}}"#);
        self.answer_call(token, Some(200), &answer);
    }
}

#[test]
fn several_texts_are_a_call_each_through_the_cluster_and_one_answer_in_their_order() {
    let h = Harness::new(embeddings_config());
    let mut s = embed(&h, r#"{"model":"titan","input":["one","two two","three three three"],"dimensions":256}"#);
    let sent = calls(&h);
    assert_eq!(sent.len(), 3);
    for (call, text) in sent.iter().zip(["one", "two two", "three three three"]) {
        let header = |name: &str| call.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(call.cluster, "sluice_titan");
        assert_eq!(header(":path"), Some("/model/amazon.titan-embed-text-v2%3A0/invoke"));
        assert_eq!((header(":method"), header(":authority")), (Some("POST"), Some("titan.example")));
        assert_eq!(header("content-type"), Some("application/json"));
        // The client's own headers go too, but its key, and Bedrock's credential is Envoy's.
        assert_eq!((header("x-client-trace"), header("x-request-id")), (Some("t-1"), Some("req-1")));
        assert_eq!((header("authorization"), header("content-length")), (None, None));
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body, serde_json::json!({"inputText": text, "dimensions": 256}));
    }
    assert!(s.reply().is_none(), "waits for every call");
    // Answered out of order: the list is in the texts' order, the counts summed.
    s.titan_answers(sent[2].token, 7);
    s.titan_answers(sent[0].token, 2);
    assert!(s.reply().is_none());
    s.titan_answers(sent[1].token, 3);
    let reply = s.reply().expect("answered once the last call is");
    assert_eq!(reply.status, 200);
    let out = reply.json();
    let firsts: Vec<f64> =
        out["data"].as_array().unwrap().iter().map(|d| d["embedding"][0].as_f64().unwrap()).collect();
    assert_eq!(firsts, [2.5, 3.5, 7.5]);
    assert_eq!(out["usage"], serde_json::json!({"prompt_tokens": 12, "total_tokens": 12}));
    assert_eq!(out["model"], "titan");
    s.finish();
    let record = &h.envoy.records()[0];
    assert_eq!(
        (record["prompt_tokens"].as_u64(), record["outcome"].as_str(), record["estimated"].as_bool()),
        (Some(12), Some("completed"), Some(false))
    );
    assert!((record["cost_usd"].as_f64().unwrap() - 12.0 * 2e-8).abs() < 1e-15);
    // One text is one call through the router, as before.
    let (s, reply) = h.post("/v1/embeddings", &key(1), r#"{"model":"titan","input":["only"]}"#);
    assert!(reply.is_none());
    assert_eq!(calls(&h).len(), 3, "no call of the filter's own");
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/model/amazon.titan-embed-text-v2%3A0/invoke"));
}

#[test]
fn at_most_eight_calls_are_out_at_once() {
    let h = Harness::new(embeddings_config());
    let texts: Vec<String> = (0..11).map(|i| format!("text {i}")).collect();
    let body = serde_json::json!({"model": "titan", "input": texts}).to_string();
    let mut s = embed(&h, &body);
    assert_eq!(calls(&h).len(), 8);
    let first = calls(&h)[0].token;
    s.titan_answers(first, 1);
    assert_eq!(calls(&h).len(), 9, "an answer makes room for the next text");
    assert_eq!(text_of(&calls(&h)[8]), "text 8");
    for i in 1..11 {
        let token = calls(&h)[i].token;
        s.titan_answers(token, 1);
    }
    let out = s.reply().expect("answered").json();
    assert_eq!(out["data"].as_array().map(Vec::len), Some(11));
    assert_eq!(out["usage"]["prompt_tokens"], 11);
}

#[test]
fn a_failed_call_is_retried_on_its_own_like_a_routers_attempt() {
    let h = Harness::new(embeddings_config());
    let mut s = embed(&h, r#"{"model":"titan","input":["a","b"],"num_retries":1}"#);
    let sent = calls(&h);
    s.answer_call(sent[0].token, Some(503), r#"{"message":"busy"}"#);
    let again = calls(&h);
    assert_eq!(again.len(), 3, "the failed text is sent again");
    assert_eq!(text_of(&again[2]), "a");
    // No answer at all (a reset) is retried too, within the same count per text.
    s.answer_call(sent[1].token, None, "");
    assert_eq!(calls(&h).len(), 4);
    s.titan_answers(calls(&h)[2].token, 2);
    s.titan_answers(calls(&h)[3].token, 3);
    assert_eq!(s.reply().expect("answered").status, 200);
    s.finish();
    let record = &h.envoy.records()[0];
    assert_eq!((record["prompt_tokens"].as_u64(), record["outcome"].as_str()), (Some(5), Some("completed")));
    assert_eq!(record["failed_attempts"].as_array().map(Vec::len), Some(2), "{record}");
}

#[test]
fn a_call_that_fails_for_good_is_the_clients_error_and_what_answered_is_billed() {
    let h = Harness::new(embeddings_config());
    let mut s = embed(&h, r#"{"model":"titan","input":["a","b","c"]}"#);
    let sent = calls(&h);
    s.titan_answers(sent[0].token, 4);
    let error = r#"{"message":"Malformed input request: bad text"}"#;
    s.answer_call(sent[1].token, Some(400), error);
    assert!(s.reply().is_none(), "the call still out is waited for");
    s.titan_answers(sent[2].token, 5);
    let reply = s.reply().expect("answered");
    assert_eq!(reply.status, 400);
    let out = reply.json();
    assert_eq!(
        (out["error"]["type"].as_str(), out["error"]["message"].as_str()),
        (Some("invalid_request_error"), Some("Malformed input request: bad text"))
    );
    s.finish();
    let record = &h.envoy.records()[0];
    assert_eq!(
        (record["status"].as_u64(), record["outcome"].as_str(), record["prompt_tokens"].as_u64()),
        (Some(400), Some("upstream_error"), Some(9))
    );
    assert!((record["cost_usd"].as_f64().unwrap() - 9.0 * 2e-8).abs() < 1e-15, "{record}");
    // With more texts than room, nothing more is sent once one failed.
    let texts: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let mut s = embed(&h, &serde_json::json!({"model": "titan", "input": texts}).to_string());
    let first = calls(&h).len() - 8;
    s.answer_call(calls(&h)[first].token, Some(400), error);
    assert_eq!(calls(&h).len(), first + 8);
}

#[test]
fn a_client_that_leaves_pays_for_what_answered_and_for_the_calls_still_out() {
    let h = Harness::new(embeddings_config());
    // "aaaaaaaa" is 2 tokens by the estimate, "b" 1.
    let mut s = embed(&h, r#"{"model":"titan","input":["x","aaaaaaaa","b"]}"#);
    let sent = calls(&h);
    s.titan_answers(sent[0].token, 6);
    s.finish();
    let record = &h.envoy.records()[0];
    assert_eq!(
        (record["outcome"].as_str(), record["estimated"].as_bool(), record["prompt_tokens"].as_u64()),
        (Some("cancelled"), Some(true), Some(6 + 2 + 1))
    );
}
