//! Prometheus metrics under Triton's names, so that existing dashboards work:
//!
//! - `nv_inference_request_success{model,version}`: successful infer requests;
//! - `nv_inference_request_failure{model,version,reason}`: failed ones, by reason (`REJECTED`
//!   before the model ran, `BACKEND` when the engine failed, `QUEUE_FULL` when the pool was full);
//! - `nv_inference_count{model,version}`: inferences performed (the batch size summed over
//!   requests: the first dimension of the first input, or 1);
//! - `nv_inference_request_duration_us{model,version}` and
//!   `nv_inference_queue_duration_us{model,version}`: cumulative microseconds;
//! - `adyton_inference_request_duration_seconds{model,version}`: a histogram of request latency.
//!
//! Labels carry model names and versions only: never tensors or tokens.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Why an infer request failed, as Triton labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The request was refused before the model ran (bad input, unknown output).
    Rejected,
    /// The pool was full.
    QueueFull,
    /// The engine failed.
    Backend,
}

impl FailureReason {
    fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::QueueFull => "QUEUE_FULL",
            FailureReason::Backend => "BACKEND",
        }
    }
}

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    success: IntCounterVec,
    failure: IntCounterVec,
    count: IntCounterVec,
    request_us: IntCounterVec,
    queue_us: IntCounterVec,
    seconds: HistogramVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well formed: {e}"));
    registry
        .register(Box::new(counter.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
    counter
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let mv = &["model", "version"];
        let success = counter(
            &registry,
            "nv_inference_request_success",
            "Number of successful inference requests",
            mv,
        );
        let failure = counter(
            &registry,
            "nv_inference_request_failure",
            "Number of failed inference requests",
            &["model", "version", "reason"],
        );
        let count = counter(
            &registry,
            "nv_inference_count",
            "Number of inferences performed",
            mv,
        );
        let request_us = counter(
            &registry,
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds",
            mv,
        );
        let queue_us = counter(
            &registry,
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds",
            mv,
        );
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "adyton_inference_request_duration_seconds",
                "Inference request duration in seconds",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            mv,
        )
        .unwrap_or_else(|e| unreachable!("histogram is well formed: {e}"));
        registry
            .register(Box::new(seconds.clone()))
            .unwrap_or_else(|e| unreachable!("histogram is registered once: {e}"));
        Metrics {
            registry,
            success,
            failure,
            count,
            request_us,
            queue_us,
            seconds,
        }
    }

    /// Records a successful request.
    pub fn success(
        &self,
        model: &str,
        version: &str,
        batch: u64,
        total: Duration,
        queue: Duration,
    ) {
        let labels = [model, version];
        self.success.with_label_values(&labels).inc();
        self.count.with_label_values(&labels).inc_by(batch);
        self.request_us
            .with_label_values(&labels)
            .inc_by(micros(total));
        self.queue_us
            .with_label_values(&labels)
            .inc_by(micros(queue));
        self.seconds
            .with_label_values(&labels)
            .observe(total.as_secs_f64());
    }

    /// Records a failed request.
    pub fn failure(&self, model: &str, version: &str, reason: FailureReason, total: Duration) {
        self.failure
            .with_label_values(&[model, version, reason.as_str()])
            .inc();
        self.request_us
            .with_label_values(&[model, version])
            .inc_by(micros(total));
        self.seconds
            .with_label_values(&[model, version])
            .observe(total.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on malformed metrics, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_names_are_rendered() {
        let m = Metrics::new();
        m.success(
            "m",
            "1",
            4,
            Duration::from_micros(1500),
            Duration::from_micros(20),
        );
        m.failure("m", "1", FailureReason::QueueFull, Duration::from_micros(3));
        let text = m.render();
        for needle in [
            "nv_inference_request_success{model=\"m\",version=\"1\"} 1",
            "nv_inference_count{model=\"m\",version=\"1\"} 4",
            "nv_inference_request_failure{model=\"m\",reason=\"QUEUE_FULL\",version=\"1\"} 1",
            "nv_inference_request_duration_us{model=\"m\",version=\"1\"} 1503",
            "nv_inference_queue_duration_us{model=\"m\",version=\"1\"} 20",
            "adyton_inference_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
