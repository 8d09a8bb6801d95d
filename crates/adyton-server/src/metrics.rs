//! Prometheus metrics under Triton's names, so that existing dashboards work:
//!
//! - `nv_inference_request_success{model,version}`: successful infer requests;
//! - `nv_inference_request_failure{model,version,reason}`: failed ones, by reason (`REJECTED`
//!   before the model ran, `BACKEND` when the engine failed, `QUEUE_FULL` when the pool was full);
//! - `nv_inference_count{model,version}`: inferences performed (the batch size summed over
//!   requests: the first dimension of the first input, or 1);
//! - `nv_inference_request_duration_us{model,version}` and
//!   `nv_inference_queue_duration_us{model,version}`: cumulative microseconds;
//! - `nv_inference_exec_count{model,version}`: runs of the engine; with dynamic batching, one run
//!   serves several requests, and `nv_inference_count` over it is the mean batch size;
//! - `adyton_inference_batch_size{model,version}`: a histogram of the rows of each run;
//! - `adyton_inference_request_duration_seconds{model,version}`: a histogram of request latency;
//! - `adyton_model_info{model,version,engine,plan}`: 1 for each model served;
//! - `adyton_plan_cache_*{model,version}`: a model's plans per input shape, read from the engine at
//!   each scrape: `compiled_total`, `hits_total`, `evictions_total`, `refusals_total`,
//!   `rate_limited_total`, `compile_seconds_total`, and the gauges `plans` and `bytes`.
//!
//! Labels carry model names and versions only: never tensors or tokens.

use std::time::Duration;

use std::fmt::Write as _;

use crate::runtime::{EngineKind, Plan, PlanStats};

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
    exec_count: IntCounterVec,
    batch_size: HistogramVec,
}

/// A served model's figures read at scrape time.
#[derive(Clone, Debug)]
pub struct ModelFigures {
    /// Its name (letters, digits, `.`, `_`, `-`: nothing to escape in a label).
    pub model: String,
    /// Its version.
    pub version: u64,
    /// Its engine.
    pub engine: EngineKind,
    /// Its plan.
    pub plan: Plan,
    /// Its plan cache.
    pub stats: PlanStats,
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
        let exec_count = counter(
            &registry,
            "nv_inference_exec_count",
            "Number of model executions performed",
            mv,
        );
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "adyton_inference_batch_size",
                "Rows of each model execution (dynamic batching)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
            ]),
            mv,
        )
        .unwrap_or_else(|e| unreachable!("histogram is well formed: {e}"));
        registry
            .register(Box::new(batch_size.clone()))
            .unwrap_or_else(|e| unreachable!("histogram is registered once: {e}"));
        Metrics {
            registry,
            success,
            failure,
            count,
            request_us,
            queue_us,
            seconds,
            exec_count,
            batch_size,
        }
    }

    /// Records one run of the engine over `rows` rows.
    pub fn exec(&self, model: &str, version: &str, rows: usize) {
        let labels = [model, version];
        self.exec_count.with_label_values(&labels).inc();
        // Rows are small counts; the histogram only shows them.
        #[allow(clippy::cast_precision_loss)]
        self.batch_size
            .with_label_values(&labels)
            .observe(rows as f64);
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
        self.render_with(&[])
    }

    /// The Prometheus text exposition, with the figures of the models served now.
    pub fn render_with(&self, models: &[ModelFigures]) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on malformed metrics, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8_lossy(&out).into_owned();
        render_models(&mut text, models);
        text
    }
}

/// The plan cache's figures are the engine's own counters, read at scrape time: they are written
/// here as text rather than copied into the registry's counters, which only count up by steps.
fn render_models(text: &mut String, models: &[ModelFigures]) {
    if models.is_empty() {
        return;
    }
    let _ = writeln!(
        text,
        "# HELP adyton_model_info The engine and plan of each model served\n\
         # TYPE adyton_model_info gauge"
    );
    for m in models {
        let _ = writeln!(
            text,
            "adyton_model_info{{engine=\"{}\",model=\"{}\",plan=\"{}\",version=\"{}\"}} 1",
            m.engine.as_str(),
            m.model,
            m.plan.as_str(),
            m.version
        );
    }
    type Figure = fn(&PlanStats) -> String;
    let families: [(&str, &str, &str, Figure); 8] = [
        (
            "compiled_total",
            "counter",
            "Plans compiled, ahead and on first use",
            |s| s.compiled.to_string(),
        ),
        (
            "hits_total",
            "counter",
            "Requests served by a cached plan",
            |s| s.hits.to_string(),
        ),
        (
            "evictions_total",
            "counter",
            "Plans evicted from the cache",
            |s| s.evictions.to_string(),
        ),
        (
            "refusals_total",
            "counter",
            "Input shapes refused (and cached as refused)",
            |s| s.refusals.to_string(),
        ),
        (
            "rate_limited_total",
            "counter",
            "Compilations refused by the per-minute cap",
            |s| s.rate_limited.to_string(),
        ),
        (
            "compile_seconds_total",
            "counter",
            "Seconds spent compiling plans",
            |s| s.compile_seconds.to_string(),
        ),
        ("plans", "gauge", "Plans in the cache", |s| {
            s.cached_plans.to_string()
        }),
        (
            "bytes",
            "gauge",
            "Memory of the cached plans, by the engine's estimate",
            |s| s.cached_bytes.to_string(),
        ),
    ];
    for (suffix, kind, help, figure) in families {
        let name = format!("adyton_plan_cache_{suffix}");
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for m in models {
            let _ = writeln!(
                text,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                m.model,
                m.version,
                figure(&m.stats)
            );
        }
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
        m.exec("m", "1", 3);
        let text = m.render_with(&[ModelFigures {
            model: "m".into(),
            version: 1,
            engine: EngineKind::OnnxRuntime,
            plan: Plan::OnnxRuntime,
            stats: PlanStats {
                compiled: 2,
                compile_seconds: 0.5,
                cached_bytes: 4096,
                ..PlanStats::default()
            },
        }]);
        for needle in [
            "nv_inference_exec_count{model=\"m\",version=\"1\"} 1",
            "adyton_inference_batch_size_bucket{model=\"m\",version=\"1\",le=\"4\"} 1",
            "adyton_model_info{engine=\"onnxruntime\",model=\"m\",plan=\"onnxruntime\",version=\"1\"} 1",
            "# TYPE adyton_plan_cache_compiled_total counter",
            "adyton_plan_cache_compiled_total{model=\"m\",version=\"1\"} 2",
            "adyton_plan_cache_compile_seconds_total{model=\"m\",version=\"1\"} 0.5",
            "adyton_plan_cache_bytes{model=\"m\",version=\"1\"} 4096",
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
