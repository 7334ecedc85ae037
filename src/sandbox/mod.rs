//! The sandbox: faithful local emulators of Partner Center (referrals and webhooks), the
//! Dataverse Web API and the Salesforce REST API, served together on one port at their real
//! paths, plus a control API under `/_sandbox/`.
//!
//! It is a product feature ("test before you go live" without a CRM) and the ground every
//! other test stands on, so it follows the wire contracts in `shared/reference/` rather than
//! what would be convenient: tokens expire, pages are opaque, eTags change on every write,
//! throttled calls get the status and error body the real service sends.
//!
//! Start it in-process with [`start`] (tests do this, on an ephemeral port) or from the
//! command line with `cosell sandbox`.
//!
//! Layout:
//! - [`auth`] — the Entra ID and Salesforce token endpoints, bearer-token checks.
//! - [`partner_center`] — `/v1.0/engagements/referrals`.
//! - [`webhooks`] — `/webhooks/v1/registration` and signed event delivery; [`pki`] is the
//!   sandbox's own certificate authority.
//! - [`dataverse`] — `/api/data/v9.2/`; [`salesforce`]: `/services/data/vNN.N/`. Their tables
//!   and objects are data: `sandbox/schemas/*.json`.
//! - [`faults`], [`stats`], [`control`] — fault injection, call counters, `/_sandbox/`;
//!   [`interleave`]: human edits between a client's read and its write.

// Handlers return axum `Response`s as their error type: that is what they answer with.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod control;
pub mod dataverse;
pub mod faults;
pub mod interleave;
pub mod odata;
pub mod partner_center;
pub mod pki;
pub mod salesforce;
pub mod seed_data;
pub mod stats;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::mapping::transforms::datetime::DateTime;

/// How to run a sandbox. [`Default`] is what tests want: an ephemeral loopback port, plain
/// HTTP, no latency, seed 1, nothing persisted.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate from the sandbox CA for `127.0.0.1` and `localhost`.
    pub tls: bool,
    /// Latency added to every API call (not to `/_sandbox/`).
    pub latency: Duration,
    /// Seed of the random generator behind ids, seeded data and fault decisions; the same
    /// seed and the same calls give the same ids.
    pub seed: u64,
    /// Directory the sandbox keeps its records and CA in across restarts; `None` keeps
    /// everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Lifetime of issued access tokens; clients must refresh after it.
    pub token_ttl: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            latency: Duration::ZERO,
            seed: 1,
            data_dir: None,
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// One of the services the sandbox emulates (or its control API). Used for routing the
/// cross-cutting concerns — authentication, faults, quotas, counters, error shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// Entra ID token endpoint `/{tenant}/oauth2/v2.0/token`.
    EntraId,
    /// Partner Center referrals, `api.partner.microsoft.com/v1.0/engagements/...`.
    PartnerCenter,
    /// Partner Center webhook registration, `api.partnercenter.microsoft.com/webhooks/...`.
    PartnerCenterWebhooks,
    /// Dataverse Web API `/api/data/v9.x/`.
    Dataverse,
    /// Salesforce token endpoint `/services/oauth2/token`.
    SalesforceAuth,
    /// Salesforce REST API `/services/data/`.
    Salesforce,
    /// The sandbox's own control API `/_sandbox/`.
    Control,
}

impl Api {
    /// Every emulated API, in the order reports list them.
    pub const ALL: [Api; 6] = [
        Api::EntraId,
        Api::PartnerCenter,
        Api::PartnerCenterWebhooks,
        Api::Dataverse,
        Api::SalesforceAuth,
        Api::Salesforce,
    ];

    /// The API a request path belongs to.
    pub fn classify(path: &str) -> Option<Api> {
        if path.starts_with("/_sandbox/") || path == "/_sandbox" {
            Some(Api::Control)
        } else if path.starts_with("/v1.0/engagements") || path.starts_with("/engagements/") {
            Some(Api::PartnerCenter)
        } else if path.starts_with("/webhooks/") {
            Some(Api::PartnerCenterWebhooks)
        } else if path.starts_with("/api/data/") {
            Some(Api::Dataverse)
        } else if path.starts_with("/services/oauth2/") {
            Some(Api::SalesforceAuth)
        } else if path.starts_with("/services/data") {
            Some(Api::Salesforce)
        } else if path.ends_with("/oauth2/v2.0/token") {
            Some(Api::EntraId)
        } else {
            None
        }
    }

    /// The name used in stats, faults and the control API.
    pub fn name(self) -> &'static str {
        match self {
            Api::EntraId => "entra_id",
            Api::PartnerCenter => "partner_center",
            Api::PartnerCenterWebhooks => "partner_center_webhooks",
            Api::Dataverse => "dataverse",
            Api::SalesforceAuth => "salesforce_auth",
            Api::Salesforce => "salesforce",
            Api::Control => "control",
        }
    }

    /// Parses [`Api::name`].
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL
            .into_iter()
            .chain([Api::Control])
            .find(|api| api.name() == name)
    }

    /// Whether calls need a bearer token (everything but token endpoints and control).
    pub fn needs_token(self) -> bool {
        matches!(
            self,
            Api::PartnerCenter | Api::PartnerCenterWebhooks | Api::Dataverse | Api::Salesforce
        )
    }

    /// An error response in this API's documented shape.
    ///
    /// - Partner Center (both hosts) and Dataverse: `{"error":{"code","message"}}`.
    /// - Salesforce: `[{"message","errorCode","fields"}]` — simple-salesforce reads
    ///   `[0]['errorCode']`, so it must be an array.
    /// - Token endpoints: OAuth 2.0 `{"error","error_description"}`.
    pub fn error(self, status: StatusCode, code: &str, message: &str) -> Response {
        let body = match self {
            Api::Salesforce => json!([{ "message": message, "errorCode": code, "fields": [] }]),
            Api::EntraId | Api::SalesforceAuth => {
                json!({ "error": code, "error_description": message })
            }
            Api::PartnerCenter | Api::PartnerCenterWebhooks | Api::Dataverse | Api::Control => {
                json!({ "error": { "code": code, "message": message } })
            }
        };
        json_response(status, &body)
    }
}

/// A JSON response with `Content-Type: application/json; charset=utf-8`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Response extension naming the endpoint a call hit, for `/_sandbox/stats`, when the
/// router's matched path is too coarse (Dataverse and Salesforce parse their own paths:
/// `/api/data/v9.2/opportunities({key})` rather than `/api/data/{version}/{*path}`).
#[derive(Debug, Clone)]
pub struct Endpoint(pub String);

/// Response extension telling the server to drop the connection instead of answering
/// (the "connection reset" fault).
#[derive(Debug, Clone, Copy)]
pub struct ResetConnection;

/// SplitMix64: small, fast, and deterministic for a given seed — ids and seeded data are
/// reproducible with `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p` (clamped to 0–1).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits as a float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let index = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        &items[index]
    }

    /// A lower-case GUID in the 8-4-4-4-12 form (version 4 bits set, as Dataverse and
    /// Partner Center ids look).
    pub fn guid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let bytes: [u8; 16] = {
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&a.to_be_bytes());
            out[8..].copy_from_slice(&b.to_be_bytes());
            out[6] = (out[6] & 0x0f) | 0x40;
            out[8] = (out[8] & 0x3f) | 0x80;
            out
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// `len` characters from `alphabet`.
    pub fn string_from(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| char::from(*self.pick(alphabet))).collect()
    }
}

/// The shared state of one running sandbox: every emulator plus the cross-cutting services.
/// Handlers receive it as `State<Arc<Sandbox>>`.
pub struct Sandbox {
    /// The options it was started with.
    pub options: SandboxOptions,
    /// `http://127.0.0.1:PORT` or `https://…` — what clients and links use.
    pub base_url: String,
    clock_offset_seconds: AtomicI64,
    rng: Mutex<Rng>,
    dirty: AtomicBool,
    /// Issued tokens and credential checks.
    pub auth: auth::Tokens,
    /// Per-API, per-endpoint call counters.
    pub stats: stats::Stats,
    /// Fault injection and quotas.
    pub faults: faults::Faults,
    /// Human edits armed to land between a client's read and its write.
    pub interleave: interleave::Interleave,
    /// The sandbox CA, webhook signing certificate and TLS certificate.
    pub pki: Arc<pki::Pki>,
    /// Partner Center referrals.
    pub partner_center: partner_center::State,
    /// Webhook registration and delivery.
    pub webhooks: webhooks::Webhooks,
    /// Dataverse tables.
    pub dataverse: dataverse::State,
    /// Salesforce objects.
    pub salesforce: salesforce::State,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// The sandbox clock: the system clock plus whatever `/_sandbox/clock` advanced it by.
    /// Token expiry and record timestamps use it, so tests can jump an hour ahead.
    pub fn now(&self) -> SystemTime {
        let offset = self.clock_offset_seconds.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        }
    }

    /// Moves the sandbox clock forward by `seconds`.
    pub fn advance_clock(&self, seconds: i64) {
        self.clock_offset_seconds
            .fetch_add(seconds, Ordering::Relaxed);
    }

    /// [`Sandbox::now`] as a UTC date-time.
    pub fn now_datetime(&self) -> DateTime {
        let since = self.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        DateTime::from_unix(
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            since.subsec_nanos(),
        )
    }

    /// `2019-02-23T02:05:23.2931817Z`: Partner Center's timestamp format (7 fraction digits).
    pub fn now_partner_center(&self) -> String {
        let t = self.now_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
            t.nanos / 100
        )
    }

    /// `2024-01-01T10:00:00Z`: Dataverse's DateTimeOffset format (whole seconds, UTC).
    pub fn now_dataverse(&self) -> String {
        let t = self.now_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )
    }

    /// `2013-05-20T20:49:32.000+0000`: Salesforce's dateTime format.
    pub fn now_salesforce(&self) -> String {
        let t = self.now_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
            t.nanos / 1_000_000
        )
    }

    /// The shared random generator (ids, fault decisions). Hold the guard briefly.
    pub fn rng(&self) -> MutexGuard<'_, Rng> {
        lock(&self.rng)
    }

    /// A fresh GUID from the shared generator.
    pub fn new_guid(&self) -> String {
        self.rng().guid()
    }

    /// Records that emulator data changed, so a sandbox with `--data` saves it soon.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Empties every emulator (referrals, webhook registration and queues, CRM records),
    /// counters and faults; tokens and the CA survive.
    pub fn reset(&self) {
        self.partner_center.reset();
        self.webhooks.reset();
        self.dataverse.reset();
        self.salesforce.reset();
        self.stats.reset();
        self.faults.reset();
        self.interleave.reset();
        self.changed();
    }

    /// Everything `--data` keeps, as one JSON document.
    fn snapshot(&self) -> Value {
        json!({
            "version": 1,
            "partner_center": self.partner_center.snapshot(),
            "webhooks": self.webhooks.snapshot(),
            "dataverse": self.dataverse.snapshot(),
            "salesforce": self.salesforce.snapshot(),
        })
    }

    fn restore(&self, value: &Value) -> anyhow::Result<()> {
        if value.get("version") != Some(&json!(1)) {
            anyhow::bail!("unsupported sandbox state version (expected 1)");
        }
        let part = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
        self.partner_center
            .restore(part("partner_center"))
            .context("partner_center")?;
        self.webhooks
            .restore(part("webhooks"))
            .context("webhooks")?;
        self.dataverse
            .restore(part("dataverse"))
            .context("dataverse")?;
        self.salesforce
            .restore(part("salesforce"))
            .context("salesforce")?;
        Ok(())
    }
}

/// Locks a mutex, recovering the data if a previous holder panicked: the sandbox keeps
/// serving rather than turning one bug into every later call failing.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running sandbox. Dropping it stops the server.
#[derive(Debug)]
pub struct SandboxHandle {
    state: Arc<Sandbox>,
    shutdown: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT` (or `https://` with TLS), without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The sandbox CA certificate in PEM, to trust for `--tls` and webhook signatures.
    pub fn ca_pem(&self) -> String {
        self.state.pki.ca_pem()
    }

    /// Direct access to the emulators, for assertions in tests.
    pub fn state(&self) -> &Arc<Sandbox> {
        &self.state
    }

    /// Stops accepting connections, saves state when `--data` is set, and waits for the
    /// accept loop to end.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Err(error) = save_state(&self.state) {
            tracing::warn!("could not save sandbox state: {error:#}");
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts a sandbox and returns once it accepts connections.
pub async fn start(options: SandboxOptions) -> anyhow::Result<SandboxHandle> {
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    let scheme = if options.tls { "https" } else { "http" };
    let base_url = format!("{scheme}://{address}");

    if let Some(dir) = &options.data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let pki = Arc::new(pki::Pki::load_or_generate(options.data_dir.as_deref())?);
    let tls = if options.tls {
        Some(tokio_rustls::TlsAcceptor::from(pki.tls_server_config()?))
    } else {
        None
    };
    let schemas_dataverse = dataverse::State::new()?;
    let schemas_salesforce = salesforce::State::new()?;

    let state = Arc::new(Sandbox {
        auth: auth::Tokens::new(options.token_ttl),
        rng: Mutex::new(Rng::new(options.seed)),
        clock_offset_seconds: AtomicI64::new(0),
        dirty: AtomicBool::new(false),
        stats: stats::Stats::default(),
        faults: faults::Faults::default(),
        interleave: interleave::Interleave::default(),
        pki,
        partner_center: partner_center::State::default(),
        webhooks: webhooks::Webhooks::new(),
        dataverse: schemas_dataverse,
        salesforce: schemas_salesforce,
        base_url,
        options,
    });
    if let Some(dir) = &state.options.data_dir {
        let file = dir.join(STATE_FILE);
        if file.exists() {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            state
                .restore(&value)
                .with_context(|| format!("cannot restore {}", file.display()))?;
        }
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    webhooks::Webhooks::spawn_delivery(&state, shutdown_rx.clone());
    if state.options.data_dir.is_some() {
        spawn_saver(Arc::clone(&state), shutdown_rx.clone());
    }
    let app = router(Arc::clone(&state));
    let server = tokio::spawn(serve(listener, app, tls, shutdown_rx));
    Ok(SandboxHandle {
        state,
        shutdown,
        server: Some(server),
    })
}

const STATE_FILE: &str = "state.json";

fn save_state(state: &Sandbox) -> anyhow::Result<()> {
    let Some(dir) = &state.options.data_dir else {
        return Ok(());
    };
    if !state.dirty.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    write_atomically(
        &dir.join(STATE_FILE),
        state.snapshot().to_string().as_bytes(),
    )
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn spawn_saver(state: Arc<Sandbox>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => break,
            }
            if let Err(error) = save_state(&state) {
                tracing::warn!("could not save sandbox state: {error:#}");
            }
        }
        if let Err(error) = save_state(&state) {
            tracing::warn!("could not save sandbox state: {error:#}");
        }
    });
}

/// All routes, with the cross-cutting gate in front.
fn router(state: Arc<Sandbox>) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(partner_center::routes())
        .merge(webhooks::routes())
        .merge(dataverse::routes())
        .merge(salesforce::routes())
        .merge(control::routes())
        .route_layer(middleware::from_fn(remember_matched_path))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            interleave::layer,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), gate))
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let api = Api::classify(path).unwrap_or(Api::Control);
    let message = format!("No route for {} {path}", request.method());
    let mut response = match api {
        Api::Salesforce => api.error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        ),
        Api::PartnerCenter | Api::PartnerCenterWebhooks => {
            api.error(StatusCode::NOT_FOUND, "itemNotFound", &message)
        }
        _ => api.error(StatusCode::NOT_FOUND, "NotFound", &message),
    };
    response
        .extensions_mut()
        .insert(Endpoint("(no such route)".to_owned()));
    response
}

/// Copies the route template into the response, where [`gate`] can read it for stats.
async fn remember_matched_path(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched
        && response.extensions().get::<Endpoint>().is_none()
    {
        response
            .extensions_mut()
            .insert(Endpoint(matched.as_str().to_owned()));
    }
    response
}

/// The cross-cutting part of every call: latency, injected faults, bearer tokens, quotas,
/// per-API headers and the call counters.
async fn gate(State(sandbox): State<Arc<Sandbox>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // Partner Center echoes the caller's correlation headers.
    let echoed: Vec<(&'static str, HeaderValue)> = ["client-request-id", "ms-correlationid"]
        .into_iter()
        .filter_map(|name| Some((name, request.headers().get(name)?.clone())))
        .collect();
    let Some(api) = Api::classify(&path).filter(|api| *api != Api::Control) else {
        // Control API and unknown paths: neither counted nor faulted.
        return next.run(request).await;
    };

    let in_flight = sandbox.stats.enter(api);
    let latency = sandbox
        .faults
        .latency(api)
        .unwrap_or(sandbox.options.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let mut response = match admit(&sandbox, api, request.headers()) {
        Admission::Reset => {
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert(ResetConnection);
            response
        }
        Admission::Refused(response) => response,
        Admission::Admitted(permit, hang) => {
            let response = next.run(request).await;
            drop(permit);
            if let Some(hang) = hang {
                // The work is done (and kept); only the answer is late. A client that
                // gave up meanwhile has closed the connection, which ends this task.
                tokio::time::sleep(hang).await;
            }
            response
        }
    };
    if api == Api::Salesforce && path != "/services/data" && path != "/services/data/" {
        let (used, max) = sandbox.faults.salesforce_usage();
        if let Ok(value) = HeaderValue::from_str(&format!("api-usage={used}/{max}")) {
            response.headers_mut().insert("sforce-limit-info", value);
        }
    }
    if matches!(api, Api::PartnerCenter | Api::PartnerCenterWebhooks) {
        let request_id = sandbox.new_guid();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("request-id", value.clone());
            response.headers_mut().insert("ms-requestid", value);
        }
        for (name, value) in echoed {
            response.headers_mut().insert(name, value);
        }
    }
    let endpoint = response
        .extensions()
        .get::<Endpoint>()
        // Calls refused before routing (token, quota, injected fault) have no template.
        .map_or_else(|| "(refused before routing)".to_owned(), |e| e.0.clone());
    let status = if response.extensions().get::<ResetConnection>().is_some() {
        None
    } else {
        Some(response.status().as_u16())
    };
    sandbox
        .stats
        .record(api, method.as_str(), &endpoint, status);
    drop(in_flight);
    response
}

enum Admission {
    /// To the handler; with a delay for the answer when a timeout was injected.
    Admitted(Option<faults::ConcurrencyPermit>, Option<Duration>),
    Refused(Response),
    Reset,
}

/// Decides whether a call reaches its handler: connection-reset and error faults first
/// (they model the network and the service front door), then the bearer token, then the
/// service-protection quotas, which only count authenticated calls.
fn admit(sandbox: &Sandbox, api: Api, headers: &HeaderMap) -> Admission {
    let decision = {
        let mut rng = sandbox.rng();
        sandbox.faults.decide(api, &mut rng)
    };
    let hang = match decision {
        Some(faults::Injected::Reset) => return Admission::Reset,
        Some(faults::Injected::Error {
            status,
            retry_after_seconds,
        }) => return Admission::Refused(injected_error(api, status, retry_after_seconds)),
        Some(faults::Injected::Timeout(hang)) => Some(hang),
        None => None,
    };
    if api.needs_token()
        && let Err(refusal) = sandbox.auth.check(sandbox, api, headers)
    {
        return Admission::Refused(refusal);
    }
    match sandbox.faults.take_quota(api, sandbox.now()) {
        Ok(permit) => Admission::Admitted(permit, hang),
        Err(response) => Admission::Refused(response),
    }
}

/// The body each service sends for an injected 429 / 5xx.
fn injected_error(api: Api, status: StatusCode, retry_after_seconds: u64) -> Response {
    let mut response = match (api, status.as_u16()) {
        (Api::Dataverse, 429) => api.error(
            status,
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        ),
        // Salesforce sends no 429: its transient throttle is the concurrent-request limit,
        // a 403 REQUEST_LIMIT_EXCEEDED naming `ConcurrentPerOrgLongTxn` (the daily
        // allocation, `TotalRequests`, is the quota's business: `quota.salesforce_*`).
        (Api::Salesforce, 429 | 403) => api.error(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "ConcurrentPerOrgLongTxn Limit exceeded.",
        ),
        (Api::Salesforce, 503) => api.error(
            status,
            "SERVER_UNAVAILABLE",
            "Server is temporarily unavailable. Please try again later.",
        ),
        (Api::Salesforce, _) => api.error(
            status,
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support.",
        ),
        (Api::PartnerCenter | Api::PartnerCenterWebhooks, 429) => api.error(
            status,
            "tooManyRequests",
            "Client application has been throttled and should not attempt to repeat the request until an amount of time has elapsed.",
        ),
        (Api::PartnerCenter | Api::PartnerCenterWebhooks, 503) => api.error(
            status,
            "serviceNotAvailable",
            "The service is temporarily unavailable.",
        ),
        (Api::PartnerCenter | Api::PartnerCenterWebhooks, _) => {
            api.error(status, "generalException", "An internal error occurred.")
        }
        (Api::EntraId, _) => api.error(
            status,
            "temporarily_unavailable",
            "AADSTS90033: A transient error has occurred. Please try again.",
        ),
        (Api::Dataverse, _) => api.error(
            status,
            "0x80040216",
            "An unexpected error occurred.",
        ),
        _ => api.error(status, "server_error", "Injected failure."),
    };
    // Salesforce sends no Retry-After (its limits are daily); the others do on 429/503.
    if api != Api::Salesforce
        && matches!(status.as_u16(), 429 | 503)
        && let Ok(value) = HeaderValue::from_str(&retry_after_seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[derive(Debug)]
struct ConnectionReset;

impl std::fmt::Display for ConnectionReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for ConnectionReset {}

/// Accept loop. Our own (rather than `axum::serve`) for two reasons: TLS, and dropping a
/// connection without a response for the connection-reset fault, which hyper does when
/// the service returns an error.
async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let mut connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let serve = async {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_connection(hyper_util::rt::TokioIo::new(stream), app).await;
                        }
                    }
                    None => serve_connection(hyper_util::rt::TokioIo::new(stream), app).await,
                }
            };
            tokio::select! {
                () = serve => {}
                _ = connection_shutdown.changed() => {}
            }
        });
    }
}

async fn serve_connection<I>(io: I, app: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(request.map(Body::new))
                    .await
                    .unwrap_or_else(|never| match never {});
                if response.extensions().get::<ResetConnection>().is_some() {
                    Err(ConnectionReset)
                } else {
                    Ok(response)
                }
            }
        });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = builder.serve_connection(io, service).await;
}
