//! The control plane's own metrics, in Prometheus' text format on `--metrics-listen`
//! (default 127.0.0.1:4003, `GET /metrics`): connected Envoys and what xDS sent them, NACKs with
//! their detail, key lookups, usage ingestion; and LiteLLM's usage metrics (`usage_metrics.rs`).

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
pub struct Metrics {
    pub xds_connected: AtomicI64,
    pub xds_pushes: AtomicU64,
    pub xds_acks: AtomicU64,
    pub xds_nacks: AtomicU64,
    /// ADS streams refused: the client certificate does not name the node.
    pub xds_refused: AtomicU64,
    /// Key lookups, usage reports and limit syncs refused: not an Envoy's certificate, or a
    /// limit report for another node.
    pub data_plane_refused: AtomicU64,
    pub xds_snapshots: AtomicU64,
    /// The most recent NACK: node, type URL, Envoy's error detail.
    pub last_nack: Mutex<Option<(String, String, String)>>,
    pub lookups_found: AtomicU64,
    pub lookups_unknown: AtomicU64,
    pub lookups_failed: AtomicU64,
    pub usage_ingested: AtomicU64,
    pub usage_duplicates: AtomicU64,
    pub usage_failed_batches: AtomicU64,
    pub budget_soft_alerts: AtomicU64,
    pub budget_exhausted: AtomicU64,
    /// Budget webhook events (`alerting.rs`): delivered, given up, dropped (queue full).
    pub webhook_sent: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub limit_syncs: AtomicU64,
    pub limit_sync_failures: AtomicU64,
    /// Invalidations shared with the other replicas (Redis stream): added, read from the
    /// others, failed Redis calls, and resets forced because entries may have been missed.
    pub invalidations_shared: AtomicU64,
    pub invalidations_received: AtomicU64,
    pub invalidation_stream_failures: AtomicU64,
    pub invalidation_resets: AtomicU64,
    /// LiteLLM's `generic_api` callback events: delivered, given up, dropped (queue full).
    pub callback_sent: AtomicU64,
    pub callback_failed: AtomicU64,
    pub callback_dropped: AtomicU64,
    /// LiteLLM's spend, token and request metrics from ingested usage (`usage_metrics.rs`).
    pub usage: crate::usage_metrics::UsageMetrics,
}

pub fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let connected = u64::try_from(self.xds_connected.load(Ordering::Relaxed).max(0)).unwrap_or(0);
        metric("sluice_xds_connected_envoys", "gauge", "Envoys with an open ADS stream.", &[("", connected)]);
        metric("sluice_xds_pushes_total", "counter", "DiscoveryResponses sent.", &[("", get(&self.xds_pushes))]);
        metric("sluice_xds_acks_total", "counter", "Responses Envoys accepted.", &[("", get(&self.xds_acks))]);
        metric("sluice_xds_nacks_total", "counter", "Responses Envoys rejected.", &[("", get(&self.xds_nacks))]);
        metric(
            "sluice_xds_refused_streams_total",
            "counter",
            "ADS streams refused because the client certificate does not name the node.",
            &[("", get(&self.xds_refused))],
        );
        metric(
            "sluice_data_plane_refused_calls_total",
            "counter",
            "Key lookups, usage reports and limit syncs refused: the client certificate is not an Envoy's, or names another node.",
            &[("", get(&self.data_plane_refused))],
        );
        metric("sluice_xds_snapshots_total", "counter", "Snapshots published.", &[("", get(&self.xds_snapshots))]);
        if let Ok(last) = self.last_nack.lock()
            && let Some((node, type_url, detail)) = last.as_ref()
        {
            let labels =
                format!("{{node=\"{}\",type_url=\"{}\",detail=\"{}\"}}", label(node), label(type_url), label(detail));
            metric(
                "sluice_xds_last_nack_info",
                "gauge",
                "The most recent rejection, with Envoy's detail.",
                &[(&labels, 1)],
            );
        }
        metric(
            "sluice_key_lookups_total",
            "counter",
            "Key lookups from Envoys' cache misses, by result.",
            &[
                ("{result=\"found\"}", get(&self.lookups_found)),
                ("{result=\"unknown\"}", get(&self.lookups_unknown)),
                ("{result=\"error\"}", get(&self.lookups_failed)),
            ],
        );
        metric(
            "sluice_usage_records_ingested_total",
            "counter",
            "Usage records stored as spend.",
            &[("", get(&self.usage_ingested))],
        );
        metric(
            "sluice_usage_records_duplicate_total",
            "counter",
            "Usage records received again and ignored (replayed batches).",
            &[("", get(&self.usage_duplicates))],
        );
        metric(
            "sluice_usage_batches_failed_total",
            "counter",
            "Usage batches the store could not take (Envoys retry them).",
            &[("", get(&self.usage_failed_batches))],
        );
        metric(
            "sluice_budget_soft_alerts_total",
            "counter",
            "Keys, teams, users and organizations that reached their soft budget (once per window).",
            &[("", get(&self.budget_soft_alerts))],
        );
        metric(
            "sluice_budget_exhausted_total",
            "counter",
            "Keys, teams, users and organizations that reached their max budget across the fleet (once per window).",
            &[("", get(&self.budget_exhausted))],
        );
        metric(
            "sluice_webhook_events_total",
            "counter",
            "Budget webhook events, by result (sent; failed after retries; dropped, the queue being full).",
            &[
                ("{result=\"sent\"}", get(&self.webhook_sent)),
                ("{result=\"failed\"}", get(&self.webhook_failed)),
                ("{result=\"dropped\"}", get(&self.webhook_dropped)),
            ],
        );
        metric(
            "sluice_limit_syncs_total",
            "counter",
            "Fleet rate-limit reports answered (each Envoy about every 200 ms while it has traffic).",
            &[("", get(&self.limit_syncs))],
        );
        metric(
            "sluice_limit_sync_failures_total",
            "counter",
            "Fleet rate-limit reports that failed (Redis unavailable); Envoys limit locally meanwhile.",
            &[("", get(&self.limit_sync_failures))],
        );
        metric(
            "sluice_invalidations_shared_total",
            "counter",
            "Invalidations this replica added to the replicas' Redis stream.",
            &[("", get(&self.invalidations_shared))],
        );
        metric(
            "sluice_invalidations_received_total",
            "counter",
            "Invalidations read from the Redis stream that other replicas published.",
            &[("", get(&self.invalidations_received))],
        );
        metric(
            "sluice_invalidation_stream_failures_total",
            "counter",
            "Failed Redis calls of the invalidation stream (retried; entries are kept meanwhile).",
            &[("", get(&self.invalidation_stream_failures))],
        );
        metric(
            "sluice_invalidation_resets_total",
            "counter",
            "Times this replica's watchers were reset because stream entries may have been missed.",
            &[("", get(&self.invalidation_resets))],
        );
        metric(
            "sluice_callback_events_total",
            "counter",
            "generic_api callback events, by result (sent; failed after retries; dropped, the queue being full).",
            &[
                ("{callback=\"generic_api\",result=\"sent\"}", get(&self.callback_sent)),
                ("{callback=\"generic_api\",result=\"failed\"}", get(&self.callback_failed)),
                ("{callback=\"generic_api\",result=\"dropped\"}", get(&self.callback_dropped)),
            ],
        );
        self.usage.render(&mut out);
        out
    }
}

/// Serves `GET /metrics` until the process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = std::sync::Arc::clone(&metrics);
                async move {
                    if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    }
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_every_counter_and_escapes_the_nack_detail() {
        let m = Metrics::default();
        inc(&m.xds_nacks, 2);
        m.xds_connected.store(3, Ordering::Relaxed);
        *m.last_nack.lock().unwrap() = Some(("edge-1".into(), "type/x".into(), "bad \"wasm\"\nline".into()));
        let text = m.render();
        assert!(text.contains("sluice_xds_nacks_total 2\n"));
        assert!(text.contains("sluice_xds_connected_envoys 3\n"));
        assert!(text.contains(r#"detail="bad \"wasm\"\nline""#), "{text}");
        assert!(text.contains("sluice_key_lookups_total{result=\"found\"} 0\n"));
        assert!(text.contains("sluice_webhook_events_total{result=\"failed\"} 0\n"));
    }
}
