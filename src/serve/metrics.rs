//! `GET /metrics`: the server's counters, gauges and histograms in Prometheus text format.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `quill_http_requests_total` | `path`, `status` | answered HTTP requests |
//! | `quill_tokens_generated_total` | `model` | tokens sampled |
//! | `quill_streams_ended_total` | `model`, `reason` | texts that ended: `stop`, `length`, `timeout`, `shutdown`, `disconnect` |
//! | `quill_active_streams` | `model` | texts in the engine (rows of the batch) |
//! | `quill_queued_requests` | `model` | requests waiting for rows |
//! | `quill_time_to_first_token_seconds` | `model` | request arrival to its first sampled token |
//! | `quill_inter_token_latency_seconds` | `model` | between two sampled tokens of one text |
//!
//! Latencies are taken in the engine thread when a token is sampled (before it is written to
//! the client).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::{Error, Result};

/// Buckets of the time to first token, seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the inter-token latency, seconds.
const ITL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    http: IntCounterVec,
    tokens: IntCounterVec,
    ended: IntCounterVec,
    active: IntGaugeVec,
    queued: IntGaugeVec,
    ttft: HistogramVec,
    itl: HistogramVec,
}

/// One model's metrics, for its engine thread.
#[derive(Clone, Debug)]
pub struct ModelMetrics {
    model: String,
    ended: IntCounterVec,
    /// Tokens sampled.
    pub tokens: IntCounter,
    /// Texts in the engine.
    pub active: IntGauge,
    /// Requests waiting.
    pub queued: IntGauge,
    /// Time to first token, seconds.
    pub ttft: Histogram,
    /// Inter-token latency, seconds.
    pub itl: Histogram,
}

impl ModelMetrics {
    /// Counts `count` texts that ended for `reason`.
    pub fn ended(&self, reason: &str, count: usize) {
        self.ended
            .with_label_values(&[self.model.as_str(), reason])
            .inc_by(count as u64);
    }
}

fn metric_err(e: prometheus::Error) -> Error {
    Error::Serve(format!("metrics: {e}"))
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(metric_err)?;
            registry.register(Box::new(c.clone())).map_err(metric_err)?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).map_err(metric_err)?;
            registry.register(Box::new(g.clone())).map_err(metric_err)?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| -> Result<HistogramVec> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["model"],
            )
            .map_err(metric_err)?;
            registry.register(Box::new(h.clone())).map_err(metric_err)?;
            Ok(h)
        };
        Ok(Metrics {
            http: counter(
                "quill_http_requests_total",
                "HTTP requests answered, by route and status",
                &["path", "status"],
            )?,
            tokens: counter("quill_tokens_generated_total", "Tokens sampled", &["model"])?,
            ended: counter(
                "quill_streams_ended_total",
                "Texts that ended, by reason (stop, length, timeout, shutdown, disconnect)",
                &["model", "reason"],
            )?,
            active: gauge(
                "quill_active_streams",
                "Texts being generated (rows of the batch)",
            )?,
            queued: gauge("quill_queued_requests", "Requests waiting for rows")?,
            ttft: histogram(
                "quill_time_to_first_token_seconds",
                "From a request's arrival to its first sampled token",
                TTFT_BUCKETS,
            )?,
            itl: histogram(
                "quill_inter_token_latency_seconds",
                "Between two sampled tokens of one text",
                ITL_BUCKETS,
            )?,
            registry,
        })
    }

    /// The metrics of model `name`.
    pub fn for_model(&self, name: &str) -> ModelMetrics {
        ModelMetrics {
            model: name.to_string(),
            ended: self.ended.clone(),
            tokens: self.tokens.with_label_values(&[name]),
            active: self.active.with_label_values(&[name]),
            queued: self.queued.with_label_values(&[name]),
            ttft: self.ttft.with_label_values(&[name]),
            itl: self.itl.with_label_values(&[name]),
        }
    }

    /// Counts one answered request.
    pub fn http(&self, path: &str, status: u16) {
        self.http
            .with_label_values(&[path, status.to_string().as_str()])
            .inc();
    }

    /// Everything, in Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .map_err(metric_err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_every_family() {
        let m = Metrics::new().unwrap();
        let mm = m.for_model("tiny");
        mm.tokens.inc_by(3);
        mm.ttft.observe(0.02);
        mm.itl.observe(0.001);
        mm.ended("length", 2);
        m.http("/v1/completions", 200);
        let t = m.encode().unwrap();
        for needle in [
            "quill_tokens_generated_total{model=\"tiny\"} 3",
            "quill_http_requests_total{path=\"/v1/completions\",status=\"200\"} 1",
            "quill_streams_ended_total{model=\"tiny\",reason=\"length\"} 2",
            "quill_time_to_first_token_seconds_bucket{model=\"tiny\",le=\"0.025\"} 1",
            "quill_inter_token_latency_seconds_count{model=\"tiny\"} 1",
            "quill_active_streams{model=\"tiny\"} 0",
            "quill_queued_requests{model=\"tiny\"} 0",
            "# TYPE quill_time_to_first_token_seconds histogram",
        ] {
            assert!(t.contains(needle), "{needle} missing from\n{t}");
        }
    }
}
