//! Logs in Cloud Logging's structure, so they can be searched by job, stage and trace.
//!
//! Each line is one JSON object: `severity` (Cloud Logging's names), `message`, `time`,
//! the event's fields, the fields of the enclosing spans (the worker opens one span per
//! message with `stage`, `job_id`, `ce_id`, `ce_type`, `delivery_attempt`, `trace`),
//! `logging.googleapis.com/labels` with `job_id` and `stage`, and
//! `logging.googleapis.com/trace` = `projects/{project}/traces/{trace id}`,
//! `logging.googleapis.com/spanId` and `logging.googleapis.com/trace_sampled` from the
//! job's W3C `traceparent`, so one job reads as one trace across the five programs.

/// The line the worker logs once for each job that ends (completed, failed or
/// cancelled), with [`JOB_ENDED_FIELDS`]: what terraform's log-based job metrics read
/// (`terraform/monitoring.tf`; `topology-check` keeps the two in step).
pub const JOB_ENDED: &str = "job ended";

/// The fields of the [`JOB_ENDED`] line: the job's type, how it ended, its attempt and
/// `errorType` (`none` when it completed, `cancelled` when cancelled), its duration from
/// acceptance to the end, the most memory one of its deliveries held (program and
/// ffmpeg), its clips, and MB of reel per second of its duration.
pub const JOB_ENDED_FIELDS: [&str; 9] = [
    "job_type",
    "status",
    "retry_attempt",
    "error_type",
    "duration_seconds",
    "memory_usage_mb",
    "video_count",
    "processing_rate_mbps",
    "estimated_usd",
];

/// The line the worker logs when a stage finished its work on a job (its outcome
/// emitted events), with [`STAGE_DONE_FIELDS`] among others.
pub const STAGE_DONE: &str = "stage done";

/// The fields of the [`STAGE_DONE`] line that terraform's per-stage metric reads (`stage`
/// comes from the worker's span).
pub const STAGE_DONE_FIELDS: [&str; 2] = ["stage", "elapsed_ms"];

use crate::config::LogFormat;
use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber: JSON (Cloud Logging) or human-readable, at `level`
/// (a level name or `EnvFilter` directives, checked by the settings), and make a panic
/// one `ERROR` record in that format instead of free text on stderr. Safe to call twice
/// (the second is a no-op).
pub fn init(level: &str, format: LogFormat, project: Option<&str>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = match format {
        // Colours only where a person reads a terminal, never into a file or a pipe.
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging { project: project.map(String::from) })
            .with_writer(std::io::stdout)
            .try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(log_panic));
    }
}

/// A panic as one log record: what, where, and the thread.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
    tracing::error!(panic = %what, location = %location, thread = %thread, "panic");
}

/// The Cloud Logging JSON event format.
pub struct CloudLogging {
    /// Project for the trace field.
    pub project: Option<String>,
}

fn severity(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::TRACE => "DEBUG",
    }
}

/// The trace id of a W3C `traceparent` (`00-{trace}-{span}-{flags}`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse_traceparent(traceparent).map(|(trace, _, _)| trace)
}

/// A W3C `traceparent`'s trace id, parent span id and whether it is sampled.
pub fn parse_traceparent(traceparent: &str) -> Option<(&str, &str, bool)> {
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    let mut parts = traceparent.split('-');
    let (_version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !(hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace, span, sampled))
}

/// The caller's trace context of an HTTP request, as a W3C `traceparent`: the
/// `traceparent` header when it is valid, else Cloud's `X-Cloud-Trace-Context`
/// (`TRACE_ID/SPAN_ID;o=1`, the span id in decimal).
pub fn caller_traceparent(traceparent: Option<&str>, cloud_trace_context: Option<&str>) -> Option<String> {
    if let Some(tp) = traceparent.filter(|tp| parse_traceparent(tp).is_some()) {
        return Some(tp.to_string());
    }
    let (trace, rest) = cloud_trace_context?.split_once('/')?;
    let (span, options) = rest.split_once(';').unwrap_or((rest, ""));
    let span: u64 = span.trim().parse().ok()?;
    let sampled = options.trim() == "o=1";
    let tp = format!("00-{}-{span:016x}-{}", trace.to_ascii_lowercase(), if sampled { "01" } else { "00" });
    parse_traceparent(&tp).is_some().then_some(tp)
}

/// The field a log line carries Cloud Logging's `httpRequest` in, as JSON text (the
/// formatter makes it the object Cloud Logging reads).
pub const HTTP_REQUEST: &str = "httpRequest";

struct Visitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Map::new();
        // Span fields first (outermost to innermost), then the event's own.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(formatted) = extensions.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted.as_str()) {
                        fields.extend(map);
                    }
                }
            }
        }
        let mut own = Map::new();
        event.record(&mut Visitor(&mut own));
        let message = own.remove("message").unwrap_or(Value::String(String::new()));
        fields.extend(own);

        let mut line = Map::new();
        line.insert("severity".into(), severity(event.metadata().level()).into());
        line.insert("message".into(), message);
        line.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("target".into(), event.metadata().target().into());
        let mut labels = Map::new();
        for key in ["job_id", "stage"] {
            if let Some(Value::String(v)) = fields.get(key) {
                if !v.is_empty() {
                    labels.insert(key.into(), v.clone().into());
                }
            }
        }
        if !labels.is_empty() {
            line.insert("logging.googleapis.com/labels".into(), Value::Object(labels));
        }
        if let Some(Value::String(tp)) = fields.get("trace") {
            if let Some((id, span, sampled)) = parse_traceparent(tp) {
                let project = self.project.as_deref().unwrap_or("local");
                line.insert("logging.googleapis.com/trace".into(), format!("projects/{project}/traces/{id}").into());
                line.insert("logging.googleapis.com/spanId".into(), span.into());
                line.insert("logging.googleapis.com/trace_sampled".into(), sampled.into());
            }
        }
        if let Some(Value::String(text)) = fields.get(HTTP_REQUEST) {
            if let Ok(request @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                fields.insert(HTTP_REQUEST.into(), request);
            }
        }
        line.extend(fields);
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_ids_come_from_traceparent() {
        assert_eq!(
            super::trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(super::trace_id("garbage"), None);
        assert_eq!(
            super::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true))
        );
        assert_eq!(
            super::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|t| t.2),
            Some(false)
        );
        assert_eq!(super::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-short-01"), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(super::caller_traceparent(Some(tp), Some("x/1;o=1")).as_deref(), Some(tp));
        assert_eq!(
            super::caller_traceparent(None, Some("4BF92F3577B34DA6A3CE929D0E0E4736/255;o=1")).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000ff-01")
        );
        assert_eq!(super::caller_traceparent(Some("garbage"), Some("nope")), None);
    }
}
