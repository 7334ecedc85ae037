//! `webhook_handler`: fuzzed deliveries through the server's webhook route
//! (`cosell::server::router`, the handler `cosell run` serves), in process: body read,
//! signature verification (`server::verify`), event parsing, the sink.
//!
//! The verifier trusts the sandbox CA (`cosell::sandbox::pki`) for certificates from a
//! loopback server started here, which serves the sandbox's signing certificate. It is
//! downloaded once and then cached, so nearly every input runs without any IO. Because the
//! fuzzer cannot forge an RSA signature, the first byte of the input can ask this target to
//! sign the body with the sandbox key, so the parser behind the signature check is fuzzed
//! too.
//!
//! Input: `MODE HEADERS \n\n BODY`. `HEADERS` are `name: value` lines (malformed lines, and
//! names or values HTTP cannot carry, are skipped); without a blank line there are no
//! headers and everything after the mode is the body. In header values `{cert}` stands for
//! the certificate URL and `{host}` for the certificate server's `host:port` (its port
//! changes per run). Modes:
//! - [`MODE_SIGNED`]: a valid `Authorization: Signature …` for the exact body is added,
//!   with the certificate URL and `rsa-sha256` headers, each unless the input has it;
//! - [`MODE_MS_SIGNATURE`]: the same with the signature in `x-ms-signature`;
//! - [`MODE_WRONG_SIGNATURE`]: the same headers, signing different bytes;
//! - anything else: only the input's headers.
//!
//! Checked: the answer is one of the documented statuses, and an event reaches the sink only
//! when the body carried our valid signature, as exactly the bytes that were signed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use base64::Engine as _;
use cosell::connectors::partner_center::WebhookEvent;
use cosell::sandbox::pki::Pki;
use cosell::server::verify::{DownloadLimits, WebhookTrust, WebhookVerifier};
use cosell::server::{EventSink, ServerOptions, SinkError};
use futures_util::future::BoxFuture;
use tokio::runtime::Runtime;
use tower::ServiceExt as _;

pub const MODE_SIGNED: u8 = b's';
pub const MODE_MS_SIGNATURE: u8 = b'm';
pub const MODE_WRONG_SIGNATURE: u8 = b'w';

const WEBHOOK_PATH: &str = "/webhooks/partner-center";
const CERTIFICATE_PATH: &str = "/cert/signing.pem";
/// Statuses the webhook route documents (`src/server/mod.rs`).
const DOCUMENTED: &[u16] = &[200, 400, 401, 408, 413, 503];

/// Counts and checks what reaches the sink.
#[derive(Default)]
struct CheckingSink {
    accepted: AtomicUsize,
    /// The body the current input signed validly, if any.
    signed: Mutex<Option<Vec<u8>>>,
}

impl EventSink for CheckingSink {
    fn accept(&self, event: WebhookEvent, raw: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        let signed = self
            .signed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert_eq!(
            signed.as_deref(),
            Some(raw.as_ref()),
            "an event reached the sink without our valid signature over its exact bytes"
        );
        assert!(
            event.referral_id().is_some(),
            "an event without a referral id reached the sink: {event:?}"
        );
        self.accepted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

struct Setup {
    runtime: Runtime,
    pki: Pki,
    router: axum::Router,
    sink: Arc<CheckingSink>,
    host: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pki = Pki::load_or_generate(None).expect("sandbox PKI");
        let sink = Arc::new(CheckingSink::default());
        let (router, host) = runtime.block_on(async {
            let pem = pki.signing_certificate_pem();
            let certificates = axum::Router::new().route(
                CERTIFICATE_PATH,
                axum::routing::get(move || {
                    let pem = pem.clone();
                    async move { pem }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the certificate server");
            let host = listener.local_addr().expect("address").to_string();
            tokio::spawn(async move {
                let _ = axum::serve(listener, certificates).await;
            });
            let mut trust =
                WebhookTrust::new(vec![pki.ca_der().to_vec().into()], vec![host.clone()]);
            trust.allow_insecure_certificate_url = true;
            trust.allowed_certificate_path_prefix = Some("/cert/".to_owned());
            trust.limits = DownloadLimits {
                timeout: Duration::from_secs(5),
                cache_ttl: Duration::from_secs(24 * 3600),
                refetch_after: Duration::from_secs(24 * 3600),
                ..DownloadLimits::default()
            };
            let verifier = WebhookVerifier::new(trust).expect("verifier");
            let mut options =
                ServerOptions::new("127.0.0.1:0".parse().expect("addr"), Arc::new(verifier));
            options.webhook_path = WEBHOOK_PATH.to_owned();
            let sink_dyn: Arc<dyn EventSink> = Arc::clone(&sink) as Arc<dyn EventSink>;
            let router = cosell::server::router(options, sink_dyn).expect("router");
            (router, host)
        });
        Setup {
            runtime,
            pki,
            router,
            sink,
            host,
        }
    })
}

/// What one delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// Events the sink accepted for this delivery.
    pub accepted: usize,
}

pub fn run(data: &[u8]) {
    let _ = deliver(data);
}

/// Splits the input into mode, headers and body.
fn split(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return (0, &[], &[]);
    };
    match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (mode, &rest[..at], &rest[at + 2..]),
        None => (mode, &[], rest),
    }
}

fn parse_headers(block: &[u8], setup: &Setup) -> HeaderMap {
    let certificate_url = format!("http://{}{CERTIFICATE_PATH}", setup.host);
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        let value = substitute(value, &certificate_url, &setup.host);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// Replaces `{cert}` and `{host}` in a header value.
fn substitute(value: &[u8], certificate_url: &str, host: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"{cert}") {
            out.extend_from_slice(certificate_url.as_bytes());
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"{host}") {
            out.extend_from_slice(host.as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Adds what a genuine delivery carries, unless the input set it already. Returns the
/// body it signed validly, if it did.
fn sign(mode: u8, headers: &mut HeaderMap, body: &[u8], setup: &Setup) -> Option<Vec<u8>> {
    let signature_header = match mode {
        MODE_SIGNED | MODE_WRONG_SIGNATURE => header::AUTHORIZATION,
        MODE_MS_SIGNATURE => HeaderName::from_static("x-ms-signature"),
        _ => return None,
    };
    let mut signed = body.to_vec();
    if mode == MODE_WRONG_SIGNATURE {
        signed.push(b'\n');
    }
    let token =
        base64::engine::general_purpose::STANDARD.encode(setup.pki.sign_rsa_sha256(&signed));
    let certificate_url = format!("http://{}{CERTIFICATE_PATH}", setup.host);
    for (name, value) in [
        (signature_header, format!("Signature {token}")),
        (
            HeaderName::from_static("x-ms-certificate-url"),
            certificate_url,
        ),
        (
            HeaderName::from_static("x-ms-signature-algorithm"),
            "rsa-sha256".to_owned(),
        ),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_str(&value).expect("header value"));
        }
    }
    (mode != MODE_WRONG_SIGNATURE).then_some(signed)
}

/// Delivers one fuzzed request and checks the answer.
pub fn deliver(data: &[u8]) -> Outcome {
    // One delivery at a time (the fuzzer is single-threaded; unit tests are not): the sink's
    // expectation and count are per delivery.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let (mode, block, body) = split(data);
    let mut headers = parse_headers(block, setup);
    let signed = sign(mode, &mut headers, body, setup);
    *setup.sink.signed.lock().unwrap_or_else(|e| e.into_inner()) = signed;
    let before = setup.sink.accepted.load(Ordering::SeqCst);

    let mut request = Request::post(WEBHOOK_PATH)
        .body(Body::from(body.to_vec()))
        .expect("request");
    *request.headers_mut() = headers;
    let response = setup
        .runtime
        .block_on(setup.router.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    let accepted = setup.sink.accepted.load(Ordering::SeqCst) - before;
    assert!(
        DOCUMENTED.contains(&status),
        "undocumented status {status} for the webhook route"
    );
    assert!(
        accepted == 0 || status == 200,
        "the sink accepted an event but the answer was {status}"
    );
    Outcome { status, accepted }
}
