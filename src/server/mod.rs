//! The HTTP server `cosell run` listens with: Partner Center webhooks in, health and
//! Prometheus metrics out.
//!
//! | Route | Answer |
//! |---|---|
//! | `POST {webhook_path}` | 200 once the event is stored; 400/401/413/415 refused; 503 retry later |
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 `ready`, or 503 with the readiness check's reason |
//! | `GET /metrics` | Prometheus text |
//!
//! A webhook is handled in this order, and nothing reaches the [`EventSink`] unless every
//! step passed (design.md §6):
//! 0. a `Content-Type` other than JSON is refused (415) before the body is read; Partner
//!    Center sends `application/json` (§3.3). No `Content-Type` at all is tolerated: the
//!    reference implementation does not look at it and the signature decides;
//! 1. the body is read whole, at most [`MAX_BODY_BYTES`] (413 beyond, 408 when too slow);
//! 2. its signature is verified over those exact bytes ([`verify::WebhookVerifier`]; 400,
//!    401 or 503 per §3.4 of the API reference);
//! 3. it parses as the documented event (`EventName`, `ResourceUri`, `ResourceName`,
//!    `ResourceChangeUtcDate` strings, the date an ISO 8601 UTC date-time; `AuditUri`
//!    optional) → else 400; a referral event must name a referral id in `ResourceUri`;
//!    `ResourceName: referral` with an event name that is not one of the four documented
//!    [`REFERRAL_EVENTS`], or one of those with another resource, is 400 too (the sink only
//!    ever sees the documented referral events);
//! 4. `test-created` validation events are acknowledged (200) right here and never reach the
//!    sink: they carry no referral, and the validation only asks whether we answer. Events
//!    of other resources (we do not subscribe to any) are acknowledged and dropped too, so
//!    Partner Center does not retry them ten times;
//! 5. referral events go to [`EventSink::accept`]; 200 only after it returned `Ok`, 503 when
//!    it failed or took longer than [`ServerOptions::sink_timeout`], so Partner Center
//!    retries. A retried event may then be stored twice: the engine's inbox is idempotent.

pub mod verify;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::model::WebhookSettings;
use crate::connectors::SecretEnv;
use crate::connectors::http;
use crate::connectors::partner_center::WebhookEvent;
use verify::{Rejection, WebhookVerifier};

/// Largest webhook body accepted. The documented events are about 250 bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client gets to send the whole webhook body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the readiness check gets before `/readyz` answers 503.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(5);
/// The validation event's name (§3.1).
pub const TEST_EVENT: &str = "test-created";
/// The referral events Partner Center documents (§3.1); the only ones that reach the sink.
pub const REFERRAL_EVENTS: &[&str] = &[
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

/// Counter of webhook requests by `outcome`: `accepted`, `rejected_signature`,
/// `rejected_body`, `sink_failed`.
pub const METRIC_RECEIVED: &str = "cosell_webhooks_received_total";
/// Counter of signature verification failures by `reason` ([`verify::RejectReason`]).
pub const METRIC_VERIFICATION_FAILURES: &str = "cosell_webhook_verification_failures_total";

/// Where verified referral events go: the engine's durable inbox.
pub trait EventSink: Send + Sync + 'static {
    /// Stores `event` (with `raw`, the exact body Partner Center signed) durably. The webhook
    /// is answered 200 only after this returned `Ok`; on `Err` it is answered 503 and Partner
    /// Center delivers it again later.
    fn accept(&self, event: WebhookEvent, raw: Bytes) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// The sink could not store an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What went wrong, for the log (not sent to Partner Center).
    pub message: String,
}

impl SinkError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
        }
    }
}

/// `/readyz`'s check: `Ok` when the engine can take work, else why not.
pub type ReadinessCheck =
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static>;

/// A readiness check that is always ready.
pub fn always_ready() -> ReadinessCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// How to run the server. The verifier is mandatory: there is no way to accept unsigned
/// webhooks, not even for the sandbox (which signs with its own CA; trust that instead).
#[derive(Clone)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free one ([`ServerHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Path Partner Center posts to, e.g. `/webhooks/partner-center`.
    pub webhook_path: String,
    /// Authenticates every webhook.
    pub verifier: Arc<WebhookVerifier>,
    /// `/readyz`'s check.
    pub readiness: ReadinessCheck,
    /// Longest wait for [`EventSink::accept`] before answering 503.
    pub sink_timeout: Duration,
}

impl ServerOptions {
    /// `listen` with the default webhook path, always ready, a 20 s sink timeout.
    pub fn new(listen: SocketAddr, verifier: Arc<WebhookVerifier>) -> ServerOptions {
        ServerOptions {
            listen,
            webhook_path: WebhookSettings::DEFAULT_PATH.to_owned(),
            verifier,
            readiness: always_ready(),
            sink_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerOptions {
    /// Options from a `connections.webhooks` section: its path and a verifier for its trust
    /// settings (`${…}` references resolved through `env`). Fails when no trust anchor is
    /// configured or one cannot be read.
    pub fn from_settings(
        listen: SocketAddr,
        settings: &WebhookSettings,
        env: SecretEnv<'_>,
    ) -> anyhow::Result<ServerOptions> {
        let trust = verify::WebhookTrust::from_settings(settings, env)?;
        let verifier = WebhookVerifier::new(trust).context("connections.webhooks")?;
        let path = settings.path().trim().to_owned();
        check_webhook_path(&path).context("connections.webhooks.path")?;
        Ok(ServerOptions {
            webhook_path: path,
            ..ServerOptions::new(listen, Arc::new(verifier))
        })
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("listen", &self.listen)
            .field("webhook_path", &self.webhook_path)
            .field("verifier", &self.verifier)
            .field("sink_timeout", &self.sink_timeout)
            .finish_non_exhaustive()
    }
}

/// Installs the Prometheus recorder as the process's global `metrics` recorder, once; later
/// calls return the same handle. When another recorder was installed first, the handle
/// still renders, but only what reached it (nothing): that is logged once.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(
                    "metrics: another recorder is installed; /metrics stays empty: {error}"
                );
            }
            metrics::describe_counter!(
                METRIC_RECEIVED,
                "Partner Center webhook requests by outcome"
            );
            metrics::describe_counter!(
                METRIC_VERIFICATION_FAILURES,
                "Webhook signature verification failures by reason"
            );
            metrics::describe_counter!(
                http::METRIC_CALLS,
                "HTTP requests to an upstream API by api, operation and status (retries included)"
            );
            metrics::describe_histogram!(
                http::METRIC_CALL_DURATION,
                metrics::Unit::Seconds,
                "Upstream request durations by api and operation"
            );
            metrics::describe_gauge!(
                http::METRIC_BUDGET_LIMIT,
                "Configured daily call allocation (budget.per_day) by api"
            );
            metrics::describe_gauge!(
                http::METRIC_BUDGET_REMAINING,
                "Calls left in the daily allocation (sliding 24 h window) by api"
            );
            handle
        })
        .clone()
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// The bound address (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets requests in flight finish, and waits.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .context("the server task failed")?
                .context("the server failed"),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    // Dropping the sender ends the graceful-shutdown future: a dropped handle stops the
    // server rather than leaking it.
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Shared by the handlers.
struct App {
    verifier: Arc<WebhookVerifier>,
    sink: Arc<dyn EventSink>,
    readiness: ReadinessCheck,
    metrics: PrometheusHandle,
    sink_timeout: Duration,
}

/// Binds `options.listen` and serves until [`ServerHandle::shutdown`] (or drop). Fails when
/// the address cannot be bound or the webhook path is not an absolute path.
pub async fn serve(
    options: ServerOptions,
    sink: Arc<dyn EventSink>,
) -> anyhow::Result<ServerHandle> {
    let path = options.webhook_path.trim().to_owned();
    let listen = options.listen;
    let router = router(options, sink)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("the bound address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!("listening on {local_addr}; webhooks at POST {path}");
    Ok(ServerHandle {
        local_addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// The routes [`serve`] answers, without a listener (`options.listen` is not used): callers
/// that drive requests in-process, like the webhook fuzz target (`fuzz/`), go through the
/// exact handler the server runs. Fails when the webhook path is not an absolute path.
pub fn router(options: ServerOptions, sink: Arc<dyn EventSink>) -> anyhow::Result<Router> {
    let path = options.webhook_path.trim();
    check_webhook_path(path)?;
    let metrics = install_metrics();
    // Every outcome shows in /metrics from the start, at 0, so alerts can use rate().
    for outcome in [
        "accepted",
        "rejected_signature",
        "rejected_body",
        "sink_failed",
    ] {
        metrics::counter!(METRIC_RECEIVED, "outcome" => outcome).increment(0);
    }
    let app = Arc::new(App {
        verifier: options.verifier,
        sink,
        readiness: options.readiness,
        metrics,
        sink_timeout: options.sink_timeout,
    });
    Ok(Router::new()
        .route(path, post(webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(app))
}

/// A literal absolute path of unreserved characters: anything else would be a route pattern
/// (`{id}`, `*rest`), a query, or a path axum refuses to route.
fn check_webhook_path(path: &str) -> anyhow::Result<()> {
    let literal = path.len() > 1
        && path.starts_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
    if !literal {
        anyhow::bail!(
            "webhook path `{path}` must be an absolute path of letters, digits and -_.~ like {}",
            WebhookSettings::DEFAULT_PATH
        );
    }
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        anyhow::bail!("webhook path `{path}` is taken by a built-in route");
    }
    Ok(())
}

fn count(outcome: &'static str) {
    metrics::counter!(METRIC_RECEIVED, "outcome" => outcome).increment(1);
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn refuse_body(status: StatusCode, message: &str, detail: &str) -> Response {
    count("rejected_body");
    tracing::warn!("webhook refused ({}): {detail}", status.as_u16());
    text(status, message)
}

fn refuse_signature(rejection: Rejection) -> Response {
    count("rejected_signature");
    metrics::counter!(METRIC_VERIFICATION_FAILURES, "reason" => rejection.reason.as_str())
        .increment(1);
    tracing::warn!(
        reason = rejection.reason.as_str(),
        "webhook refused ({}): {}",
        rejection.status.as_u16(),
        rejection.detail
    );
    text(rejection.status, rejection.message)
}

/// Why a body could not be read: status, response text, log detail.
type BodyProblem = (StatusCode, &'static str, String);

/// Reads the body whole, at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyProblem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large.",
            format!("body over {MAX_BODY_BYTES} bytes"),
        )
    };
    // Refused before reading a byte when the client says up front.
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "Request body could not be read.",
                    format!("body read failed: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err((
                StatusCode::REQUEST_TIMEOUT,
                "Request body too slow.",
                "body not received in time".to_owned(),
            ))
        })
}

/// The event, when the body is the documented shape; else why not. Property names are
/// matched ignoring case (the swagger model spells them in camelCase).
fn parse_event(body: &[u8]) -> Result<WebhookEvent, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".to_owned());
    };
    let map = crate::connectors::partner_center::canonicalize_keys(map, WebhookEvent::PROPERTIES);
    let event: WebhookEvent = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| format!("not an event: {e}"))?;
    let required = [
        ("EventName", &event.event_name),
        ("ResourceUri", &event.resource_uri),
        ("ResourceName", &event.resource_name),
        ("ResourceChangeUtcDate", &event.resource_change_utc_date),
    ];
    for (name, value) in required {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Err(format!("{name} missing or not a string"));
        }
    }
    if event.extra.get("AuditUri").is_some_and(|v| !v.is_null()) {
        return Err("AuditUri is not a string".to_owned());
    }
    let date = event
        .resource_change_utc_date
        .as_deref()
        .unwrap_or_default();
    if !is_utc_date_time(date.trim()) {
        return Err("ResourceChangeUtcDate is not a UTC date-time".to_owned());
    }
    let name = event.event_name.as_deref().unwrap_or_default();
    let referral_resource = event
        .resource_name
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("referral"));
    if REFERRAL_EVENTS.contains(&name) != referral_resource {
        return Err(format!(
            "event `{name}` does not go with ResourceName `{}`",
            event.resource_name.as_deref().unwrap_or_default()
        ));
    }
    Ok(event)
}

/// `2018-02-17T00:05:39.5485487+00:00` or `…Z`: an ISO 8601 date-time with seconds, optional
/// fraction, and a `Z` or `±hh:mm` offset (the documented `ResourceChangeUtcDate`). The
/// date is not used for anything but deduplication; this only keeps junk out of the inbox.
fn is_utc_date_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let fixed = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(bytes.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19);
    if !fixed {
        return false;
    }
    let mut rest = &bytes[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// Whether a `Content-Type` may carry a webhook: absent, or JSON (`application/json`, any
/// `+json` type, with parameters).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `POST {webhook_path}`.
async fn webhook(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if !json_content_type(&headers) {
        return refuse_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json.",
            "the Content-Type is not JSON",
        );
    }
    let raw = match read_body(&headers, body).await {
        Ok(raw) => raw,
        Err((status, message, detail)) => return refuse_body(status, message, &detail),
    };
    let verified = match app.verifier.verify(&headers, &raw).await {
        Ok(verified) => verified,
        Err(rejection) => return refuse_signature(rejection),
    };
    let event = match parse_event(&raw) {
        Ok(event) => event,
        Err(detail) => {
            return refuse_body(
                StatusCode::BAD_REQUEST,
                "Request body is not a Partner Center webhook event.",
                &detail,
            );
        }
    };
    let name = event.event_name.clone().unwrap_or_default();
    let is_referral = event
        .resource_name
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("referral"));
    if name == TEST_EVENT || !is_referral {
        count("accepted");
        tracing::info!(
            event = name.as_str(),
            "webhook acknowledged without processing (validation or non-referral event)"
        );
        return text(StatusCode::OK, "");
    }
    let Some(referral_id) = event.referral_id() else {
        return refuse_body(
            StatusCode::BAD_REQUEST,
            "ResourceUri names no referral.",
            &format!("{name}: ResourceUri names no referral id"),
        );
    };
    match tokio::time::timeout(app.sink_timeout, app.sink.accept(event, raw)).await {
        Ok(Ok(())) => {
            count("accepted");
            tracing::info!(
                event = name.as_str(),
                referral = referral_id.as_str(),
                signature_header = verified.signature_header,
                "webhook accepted"
            );
            text(StatusCode::OK, "")
        }
        Ok(Err(error)) => {
            count("sink_failed");
            tracing::warn!(
                event = name.as_str(),
                referral = referral_id.as_str(),
                "webhook not stored, answering 503: {error}"
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Event could not be stored; retry later.",
            )
        }
        Err(_) => {
            count("sink_failed");
            tracing::warn!(
                event = name.as_str(),
                referral = referral_id.as_str(),
                "webhook not stored within {:?}, answering 503",
                app.sink_timeout
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Event could not be stored; retry later.",
            )
        }
    }
}

/// `GET /healthz`: the process is up.
async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// `GET /readyz`: the readiness check, bounded by [`READINESS_TIMEOUT`].
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(READINESS_TIMEOUT, (app.readiness)()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready"),
        Ok(Err(reason)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the readiness check timed out",
        ),
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn render_metrics(State(app): State<Arc<App>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_bounded_whether_declared_or_streamed() {
        let small = read_body(&HeaderMap::new(), Body::from("{}")).await;
        assert_eq!(small.expect("small body"), Bytes::from_static(b"{}"));
        // No Content-Length: the limit applies while reading.
        let chunks = futures_util::stream::iter(
            (0..20).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 4096]))),
        );
        let streamed = read_body(&HeaderMap::new(), Body::from_stream(chunks)).await;
        assert_eq!(
            streamed.expect_err("too large").0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "70000".parse().expect("value"));
        let declared = read_body(&headers, Body::empty()).await;
        assert_eq!(
            declared.expect_err("declared").0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let exact = read_body(&HeaderMap::new(), Body::from(vec![b' '; MAX_BODY_BYTES])).await;
        assert_eq!(exact.expect("at the limit").len(), MAX_BODY_BYTES);
    }

    #[test]
    fn webhook_paths_must_be_literal() {
        for good in ["/webhooks/partner-center", "/hooks/pc_1.v2", "/a~b/"] {
            assert!(check_webhook_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "webhooks",
            "/hooks/{id}",
            "/hooks/*rest",
            "/hooks/:id",
            "/a?b",
            "/a//b",
            "/metrics",
            "/hook s",
        ] {
            assert!(check_webhook_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_from_settings_read_anchor_files_and_references() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).expect("ca").pem();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, &ca_pem).expect("write");
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let pem_env = ca_pem.clone();
        let env = move |name: &str| (name == "WEBHOOK_CA").then(|| pem_env.clone());

        let mut settings = WebhookSettings {
            trust_anchors: vec![
                file.display().to_string(),
                format!("${{file:{}}}", file.display()),
                "${WEBHOOK_CA}".to_owned(),
            ],
            ..WebhookSettings::default()
        };
        let options = ServerOptions::from_settings(listen, &settings, &env).expect("options");
        assert_eq!(options.webhook_path, WebhookSettings::DEFAULT_PATH);

        settings.path = Some("/hooks/{id}".to_owned());
        assert!(ServerOptions::from_settings(listen, &settings, &env).is_err());
        settings.path = None;
        settings.trust_anchors = vec![dir.path().join("missing.pem").display().to_string()];
        let error = ServerOptions::from_settings(listen, &settings, &env).expect_err("missing");
        assert!(format!("{error:#}").contains("missing.pem"), "{error:#}");
        settings.trust_anchors = Vec::new();
        let error = ServerOptions::from_settings(listen, &settings, &env).expect_err("no anchors");
        assert!(format!("{error:#}").contains("trust_anchors"), "{error:#}");
        settings.trust_anchors = vec!["${file:/nonexistent/cosell-ca.pem}".to_owned()];
        assert!(ServerOptions::from_settings(listen, &settings, &env).is_err());
    }

    #[test]
    fn documented_events_parse_and_others_do_not() {
        let documented = br#"{ "EventName": "referral-updated", "ResourceUri": "https://api.partnercenter.microsoft.com/engagements/v1/referrals/abc-1", "ResourceName": "referral", "AuditUri": null, "ResourceChangeUtcDate": "2018-02-17T00:05:39.5485487+00:00" }"#;
        let event = parse_event(documented).expect("documented shape");
        assert_eq!(event.referral_id().as_deref(), Some("abc-1"));
        let camel = br#"{"eventName":"referral-created","resourceUri":"https://x/engagements/v1/referrals/r2","resourceName":"referral","resourceChangeUtcDate":"2018-02-17T00:05:39Z"}"#;
        assert_eq!(
            parse_event(camel)
                .expect("camelCase")
                .referral_id()
                .as_deref(),
            Some("r2")
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"EventName":"referral-created","ResourceUri":"u","ResourceName":"referral"}"#,
            br#"{"EventName":7,"ResourceUri":"u","ResourceName":"referral","ResourceChangeUtcDate":"d"}"#,
            br#"{"EventName":"","ResourceUri":"u","ResourceName":"referral","ResourceChangeUtcDate":"d"}"#,
            br#"{"EventName":"e","ResourceUri":"u","ResourceName":"referral","ResourceChangeUtcDate":"d","AuditUri":5}"#,
            // Not a date; an undocumented referral event; a referral event of another resource.
            br#"{"EventName":"referral-created","ResourceUri":"u/r","ResourceName":"referral","ResourceChangeUtcDate":"yesterday"}"#,
            br#"{"EventName":"referral-deleted","ResourceUri":"u/r","ResourceName":"referral","ResourceChangeUtcDate":"2018-02-17T00:05:39Z"}"#,
            br#"{"EventName":"referral-created","ResourceUri":"u/r","ResourceName":"subscription","ResourceChangeUtcDate":"2018-02-17T00:05:39Z"}"#,
        ] {
            assert!(parse_event(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let test = br#"{"EventName":"test-created","ResourceUri":"http://x/v1/webhooks/registration/test","ResourceName":"test","AuditUri":null,"ResourceChangeUtcDate":"2017-11-16T16:19:06.3520276+00:00"}"#;
        assert!(parse_event(test).is_ok());
    }

    #[test]
    fn change_dates_are_iso_date_times() {
        for good in [
            "2018-02-17T00:05:39.5485487+00:00",
            "2019-02-23T02:05:23.2931817Z",
            "2020-12-01T00:00:00Z",
            "2020-12-01T00:00:00-05:00",
        ] {
            assert!(is_utc_date_time(good), "{good}");
        }
        for bad in [
            "",
            "d",
            "2020-12-01",
            "2020-12-01T00:00:00",
            "2020-12-01T00:00:00.Z",
            "2020-12-01T00:00:00+0000",
            "2020-12-01T00:00:00Zjunk",
            "２020-12-01T00:00:00Z",
        ] {
            assert!(!is_utc_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn only_json_content_types_are_taken() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("value"));
            json_content_type(&headers)
        };
        assert!(json_content_type(&HeaderMap::new()));
        for good in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(with(good), "{good}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/json+xml",
            "application/jsonp",
        ] {
            assert!(!with(bad), "{bad}");
        }
    }
}
