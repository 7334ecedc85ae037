//! The webhook server over real HTTP: the in-process sandbox delivers signed Partner Center
//! events to it, and hand-crafted requests probe every verification step (§3.4).

mod common;
#[path = "common/signing.rs"]
mod signing;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine as _;
use cosell::connectors::partner_center::WebhookEvent;
use cosell::sandbox::webhooks::{CERTIFICATE_PATH, RetryPolicy};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::server::verify::{WebhookTrust, WebhookVerifier, parse_certificates};
use cosell::server::{EventSink, ServerHandle, ServerOptions, SinkError};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use signing::{CertServer, TestSigner};

const WEBHOOK_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
const PATH: &str = "/webhooks/partner-center";
const ALL_EVENTS: &[&str] = &[
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "test-created",
];

/// Records accepted events; fails the next `fail_next` calls.
#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<(WebhookEvent, Bytes)>>,
    fail_next: AtomicU32,
    failures: AtomicU32,
}

impl RecordingSink {
    fn events(&self) -> Vec<(WebhookEvent, Bytes)> {
        self.events.lock().expect("lock").clone()
    }

    fn referral_ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|(event, _)| event.referral_id())
            .collect()
    }
}

impl EventSink for RecordingSink {
    fn accept(&self, event: WebhookEvent, raw: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let failing = self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                self.failures.fetch_add(1, Ordering::SeqCst);
                return Err(SinkError::new("inbox unavailable"));
            }
            self.events.lock().expect("lock").push((event, raw));
            Ok(())
        })
    }
}

struct Fixture {
    sandbox: SandboxHandle,
    server: Option<ServerHandle>,
    sink: Arc<RecordingSink>,
    ready: Arc<Mutex<Option<String>>>,
    base: String,
    server_base: String,
    http: reqwest::Client,
}

impl Fixture {
    /// A sandbox and a server trusting the sandbox CA (plus `extra_anchors`) for certificates
    /// from the sandbox and `extra_hosts`.
    async fn start(extra_anchors: &[&str], extra_hosts: &[String]) -> Fixture {
        Fixture::start_with(extra_anchors, extra_hosts, |_| {}).await
    }

    /// [`Fixture::start`], with `configure` adjusting the trust before the verifier is built.
    async fn start_with(
        extra_anchors: &[&str],
        extra_hosts: &[String],
        configure: impl FnOnce(&mut WebhookTrust),
    ) -> Fixture {
        let sandbox = sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox starts");
        let base = sandbox.base_url().to_owned();
        let sandbox_host = base.trim_start_matches("http://").to_owned();
        let mut anchors = parse_certificates(sandbox.ca_pem().as_bytes()).expect("sandbox CA");
        for pem in extra_anchors {
            anchors.extend(parse_certificates(pem.as_bytes()).expect("test CA"));
        }
        let mut hosts = vec![sandbox_host];
        hosts.extend(extra_hosts.iter().cloned());
        let mut trust = WebhookTrust::new(anchors, hosts);
        trust.allow_insecure_certificate_url = true;
        configure(&mut trust);
        let verifier = Arc::new(WebhookVerifier::new(trust).expect("verifier"));

        let ready: Arc<Mutex<Option<String>>> = Arc::default();
        let readiness_state = Arc::clone(&ready);
        let mut options = ServerOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), verifier);
        options.webhook_path = PATH.to_owned();
        options.readiness = Arc::new(move || {
            let problem = readiness_state.lock().expect("lock").clone();
            Box::pin(async move { problem.map_or(Ok(()), Err) })
        });
        let sink = Arc::new(RecordingSink::default());
        let server = cosell::server::serve(options, Arc::clone(&sink) as Arc<dyn EventSink>)
            .await
            .expect("server starts");
        let server_base = format!("http://{}", server.local_addr());
        Fixture {
            sandbox,
            server: Some(server),
            sink,
            ready,
            base,
            server_base,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    fn webhook_url(&self) -> String {
        format!("{}{PATH}", self.server_base)
    }

    fn certificate_url(&self) -> String {
        format!("{}{CERTIFICATE_PATH}", self.base)
    }

    async fn token(&self) -> String {
        common::entra_token(&self.base, WEBHOOK_SCOPE).await
    }

    /// Registers our server for every referral event and `test-created`.
    async fn register(&self, signature_in_ms_header: bool) {
        let mut body = json!({ "WebhookUrl": self.webhook_url(), "WebhookEvents": ALL_EVENTS });
        if signature_in_ms_header {
            body["SignatureTokenToMsSignatureHeader"] = json!(true);
        }
        let response = self
            .http
            .post(format!("{}/webhooks/v1/registration", self.base))
            .bearer_auth(self.token().await)
            .json(&body)
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Microsoft shares a referral with us: the sandbox raises `referral-created`.
    async fn incoming_referral(&self, name: &str) -> String {
        let (status, referral) = common::control(
            &self.base,
            "/_sandbox/partner-center/referrals/incoming",
            &referral(name),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{referral}");
        referral["id"].as_str().expect("id").to_owned()
    }

    async fn sandbox_webhooks(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/webhooks", self.base))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    async fn post(&self, headers: &[(&str, String)], body: &[u8]) -> (StatusCode, String) {
        let mut request = self
            .http
            .post(self.webhook_url())
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("webhook call");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// Sends only the head of a POST declaring a 70 KiB body; the status line's code.
    async fn declare_oversized_body(&self) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.server_base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            70 * 1024
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut buffer = vec![0u8; 1024];
        let mut read = 0;
        while !buffer[..read].windows(2).any(|w| w == b"\r\n") && read < buffer.len() {
            let n = stream.read(&mut buffer[read..]).await.expect("read");
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = String::from_utf8_lossy(&buffer[..read]);
        line.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.server_base))
            .send()
            .await
            .expect("get");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// Headers as the sandbox would send them for `body`.
    fn sandbox_signed(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let signature = base64::engine::general_purpose::STANDARD
            .encode(self.sandbox.state().pki.sign_rsa_sha256(body));
        vec![
            ("Authorization", format!("Signature {signature}")),
            ("X-MS-Certificate-Url", self.certificate_url()),
            ("X-MS-Signature-Algorithm", "rsa-sha256".to_owned()),
        ]
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.sandbox.shutdown().await;
    }
}

/// An incoming referral body for the sandbox's control API.
fn referral(name: &str) -> Value {
    let mut body = common::cosell_referral(name);
    if let Some(map) = body.as_object_mut() {
        map.remove("status");
        map.remove("substatus");
    }
    body
}

/// A documented-shape referral event body.
fn event_body(referral_id: &str) -> Vec<u8> {
    format!(
        r#"{{"EventName":"referral-updated","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral_id}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2018-02-17T00:05:39.5485487+00:00"}}"#
    )
    .into_bytes()
}

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn without(headers: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
    headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

fn replaced(
    headers: &[(&'static str, String)],
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut out = without(headers, name);
    out.push((name, value.to_owned()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_referral_event_reaches_the_sink_with_its_referral_id() {
    let fx = Fixture::start(&[], &[]).await;
    fx.register(false).await;
    let id = fx.incoming_referral("Shared by Microsoft").await;

    let events = wait_for("the event in the sink", || async {
        let events = fx.sink.events();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1);
    let (event, raw) = &events[0];
    assert_eq!(event.event_name.as_deref(), Some("referral-created"));
    assert_eq!(event.referral_id().as_deref(), Some(id.as_str()));
    // The raw bytes are exactly what the sandbox signed.
    let body: Value = serde_json::from_slice(raw).expect("raw JSON");
    assert_eq!(body["ResourceName"], "referral");

    let status = wait_for("the sandbox to record the delivery", || async {
        let status = fx.sandbox_webhooks().await;
        (status["counters"]["delivered"] == 1).then_some(status)
    })
    .await;
    assert_eq!(status["deliveries"][0]["status"], 200);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ms_signature_registration_variant_is_verified() {
    let fx = Fixture::start(&[], &[]).await;
    fx.register(true).await;
    let id = fx.incoming_referral("Signed in x-ms-signature").await;
    let ids = wait_for("the event in the sink", || async {
        let ids = fx.sink.referral_ids();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ids, [id]);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_event_is_acknowledged_without_reaching_the_sink() {
    let fx = Fixture::start(&[], &[]).await;
    fx.register(false).await;
    let token = fx.token().await;
    let response = fx
        .http
        .post(format!(
            "{}/webhooks/v1/registration/validationEvents",
            fx.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("validation call");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let correlation_id = body["correlationId"]
        .as_str()
        .expect("correlationId")
        .to_owned();

    let report = wait_for("the validation to complete", || async {
        let report: Value = fx
            .http
            .get(format!(
                "{}/webhooks/v1/registration/validationEvents/{correlation_id}",
                fx.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("status call")
            .json()
            .await
            .expect("json");
        (report["status"] == "completed").then_some(report)
    })
    .await;
    assert_eq!(report["results"][0]["responseCode"], "OK");
    assert!(
        fx.sink.events().is_empty(),
        "validation events are not stored"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_crafted_requests_are_checked_step_by_step() {
    let fx = Fixture::start(&[], &[]).await;
    let body = event_body("hand-1");
    let signed = fx.sandbox_signed(&body);

    // The genuine request is accepted (so every refusal below is down to its one change).
    let (status, _) = fx.post(&signed, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fx.sink.referral_ids(), ["hand-1"]);

    // One byte changed in the body.
    let mut tampered = body.clone();
    let position = tampered.iter().position(|b| *b == b'h').expect("an 'h'");
    tampered[position] = b'H';
    let (status, text) = fx.post(&signed, &tampered).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNAUTHORIZED, "Signature verification failed")
    );

    // The signature of another body.
    let other = fx.sandbox_signed(&event_body("hand-2"));
    let (status, _) = fx.post(&other, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Absent and wrong Authorization schemes.
    let (status, text) = fx.post(&without(&signed, "Authorization"), &body).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNAUTHORIZED, "Authorization header missing.")
    );
    let bearer = replaced(&signed, "Authorization", "Bearer abc");
    let (status, text) = fx.post(&bearer, &body).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "Authorization scheme needs to be 'Signature'."
        )
    );
    // x-ms-signature, when present, is the one that counts.
    let token = signed[0].1.clone();
    let ms = replaced(&without(&signed, "Authorization"), "x-ms-signature", &token);
    let (status, _) = fx.post(&ms, &event_body("hand-1")).await;
    assert_eq!(status, StatusCode::OK);
    let ms_bad = replaced(&signed, "x-ms-signature", "Basic abc");
    let (status, _) = fx.post(&ms_bad, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Missing certificate URL or algorithm headers.
    let (status, text) = fx
        .post(&without(&signed, "X-MS-Certificate-Url"), &body)
        .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Request header x-ms-certificate-url missing."
        )
    );
    let (status, text) = fx
        .post(&without(&signed, "X-MS-Signature-Algorithm"), &body)
        .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Request header x-ms-signature-algorithm missing."
        )
    );
    let (status, _) = fx
        .post(
            &replaced(&signed, "X-MS-Signature-Algorithm", "rsa-sha1"),
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = fx
        .post(
            &replaced(&signed, "X-MS-Signature-Algorithm", "RSA-SHA256"),
            &body,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the algorithm name is case-insensitive"
    );

    // Certificate URLs on a host that is not allowed (the same certificate, another name
    // for the host), with a query, or with credentials.
    let port = fx.base.rsplit(':').next().expect("port").to_owned();
    for url in [
        format!("http://localhost:{port}{CERTIFICATE_PATH}"),
        format!("https://3psostorageacct.blob.core.windows.net.evil.example{CERTIFICATE_PATH}"),
        format!("{}?x=1", fx.certificate_url()),
        fx.certificate_url().replace("http://", "http://user@"),
    ] {
        let (status, text) = fx
            .post(&replaced(&signed, "X-MS-Certificate-Url", &url), &body)
            .await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::UNAUTHORIZED, "Certificate URL not allowed."),
            "{url}"
        );
    }
    // An allowed host that does not serve a certificate there: retry later.
    let (status, _) = fx
        .post(
            &replaced(
                &signed,
                "X-MS-Certificate-Url",
                &format!("{}/nothing.cer", fx.base),
            ),
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Too large a body: refused on its declared length, before a byte of it is read (a
    // client still sending would see the connection close, so none is sent here).
    assert_eq!(fx.declare_oversized_body().await, 413);

    // A signed body that is not the documented event.
    let not_event = br#"{"EventName":"referral-updated"}"#;
    let (status, _) = fx.post(&fx.sandbox_signed(not_event), not_event).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(
        fx.sink.referral_ids(),
        ["hand-1", "hand-1", "hand-1"],
        "nothing refused was stored"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_must_chain_to_a_trusted_microsoft_issuer() {
    let certs = CertServer::start().await;
    let trusted = TestSigner::new(Some("Microsoft Corporation"));
    let untrusted = TestSigner::new(Some("Microsoft Corporation"));
    let not_microsoft = TestSigner::new(Some("Contoso Ltd"));
    let fx = Fixture::start(&[&trusted.ca_pem, &not_microsoft.ca_pem], &[certs.host()]).await;

    let headers = |signer: &TestSigner, url: &str, body: &[u8]| signer.headers(url, body);
    let body = event_body("own-ca-1");

    // A trusted test CA with the Microsoft organization: accepted, from DER or PEM.
    let der_url = certs.put("trusted.cer", trusted.leaf_der.clone());
    let (status, text) = fx.post(&headers(&trusted, &der_url, &body), &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let pem_url = certs.put("trusted.pem", trusted.leaf_pem.clone().into_bytes());
    let (status, _) = fx.post(&headers(&trusted, &pem_url, &body), &body).await;
    assert_eq!(status, StatusCode::OK);

    // Malformed JSON with a valid signature: 400, nothing stored.
    for bad in [
        &b"{not json"[..],
        b"[]",
        br#"{"EventName":"referral-created","ResourceUri":5}"#,
    ] {
        let (status, _) = fx.post(&headers(&trusted, &der_url, bad), bad).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }

    // A certificate from a CA nobody trusts (its issuer is "Microsoft Corporation" too).
    let url = certs.put("untrusted.cer", untrusted.leaf_der.clone());
    let (status, text) = fx.post(&headers(&untrusted, &url, &body), &body).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNAUTHORIZED, "Certificate verification failed.")
    );

    // A trusted CA whose name lacks O=Microsoft Corporation.
    let url = certs.put("contoso.cer", not_microsoft.leaf_der.clone());
    let (status, text) = fx.post(&headers(&not_microsoft, &url, &body), &body).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "Certificate not issued by O=Microsoft Corporation."
        )
    );

    // The sandbox's certificate URL with a test key's signature.
    let url = fx.certificate_url();
    let (status, _) = fx.post(&headers(&trusted, &url, &body), &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Not a certificate at all.
    let url = certs.put("junk.cer", b"junk".to_vec());
    let (status, _) = fx.post(&headers(&trusted, &url, &body), &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert_eq!(fx.sink.referral_ids(), ["own-ca-1", "own-ca-1"]);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_answers_503_and_partner_center_retries() {
    let fx = Fixture::start(&[], &[]).await;
    fx.sandbox.state().webhooks.set_retry_policy(RetryPolicy {
        max_attempts: 10,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
    });
    fx.sink.fail_next.store(2, Ordering::SeqCst);
    fx.register(false).await;
    let id = fx.incoming_referral("Stored on the third try").await;

    let ids = wait_for("the event after the sink recovered", || async {
        let ids = fx.sink.referral_ids();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ids, [id]);
    assert_eq!(fx.sink.failures.load(Ordering::SeqCst), 2);
    let status = wait_for("the sandbox to record the delivery", || async {
        let status = fx.sandbox_webhooks().await;
        (status["counters"]["delivered"] == 1).then_some(status)
    })
    .await;
    let attempts: Vec<(u64, u64)> = status["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap_or(0),
                d["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, 503), (2, 503), (3, 200)]);
    assert_eq!(status["counters"]["failed_attempts"], 2);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let fx = Fixture::start(&[], &[]).await;
    assert_eq!(fx.get("/healthz").await, (StatusCode::OK, "ok".to_owned()));
    assert_eq!(
        fx.get("/readyz").await,
        (StatusCode::OK, "ready".to_owned())
    );
    *fx.ready.lock().expect("lock") = Some("inbox database unreachable".to_owned());
    let (status, text) = fx.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("inbox database unreachable"), "{text}");
    *fx.ready.lock().expect("lock") = None;
    assert_eq!(fx.get("/readyz").await.0, StatusCode::OK);

    // One accepted and one refused webhook show in the counters.
    let body = event_body("metrics-1");
    let signed = fx.sandbox_signed(&body);
    assert_eq!(fx.post(&signed, &body).await.0, StatusCode::OK);
    assert_eq!(fx.post(&signed, b"{}").await.0, StatusCode::UNAUTHORIZED);

    let (status, text) = fx.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let sample = |line_start: &str| {
        text.lines()
            .find(|line| line.starts_with(line_start))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        sample(r#"cosell_webhooks_received_total{outcome="accepted"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        sample(r#"cosell_webhooks_received_total{outcome="rejected_signature"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"cosell_webhooks_received_total{outcome="sink_failed"}"#),
        "every outcome is exported: {text}"
    );
    assert!(
        sample(r#"cosell_webhook_verification_failures_total{reason="signature"}"#) >= 1.0,
        "{text}"
    );
    // Unknown routes and methods.
    assert_eq!(fx.get("/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.get(PATH).await.0, StatusCode::METHOD_NOT_ALLOWED);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_cached_failures_are_not_and_rotation_is_picked_up() {
    let certs = CertServer::start().await;
    let first = TestSigner::new(Some("Microsoft Corporation"));
    let renewed = TestSigner::new(Some("Microsoft Corporation"));
    let anchors = [first.ca_pem.as_str(), renewed.ca_pem.as_str()];
    let body = event_body("cached-1");

    // Default limits: a failed check does not refetch a young cache entry.
    let fx = Fixture::start(&anchors, &[certs.host()]).await;
    let url = format!("http://{}/cert/signing.cer", certs.host());
    // Not there yet: 503, and the failure is not cached.
    let (status, _) = fx.post(&first.headers(&url, &body), &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    certs.put("signing.cer", first.leaf_der.clone());
    for _ in 0..3 {
        let (status, _) = fx.post(&first.headers(&url, &body), &body).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        certs.downloads.load(Ordering::SeqCst),
        2,
        "one 404, then one download"
    );
    certs.put("signing.cer", renewed.leaf_der.clone());
    let (status, _) = fx.post(&renewed.headers(&url, &body), &body).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the cached certificate is too young"
    );
    assert_eq!(certs.downloads.load(Ordering::SeqCst), 2);
    fx.stop().await;

    // With refetch_after zero, a signature that fails with the cached certificate fetches
    // the (renewed) one again, once.
    let fx = Fixture::start_with(&anchors, &[certs.host()], |trust| {
        trust.limits.refetch_after = Duration::ZERO;
    })
    .await;
    certs.put("signing.cer", first.leaf_der.clone());
    let before = certs.downloads.load(Ordering::SeqCst);
    let (status, _) = fx.post(&first.headers(&url, &body), &body).await;
    assert_eq!(status, StatusCode::OK);
    certs.put("signing.cer", renewed.leaf_der.clone());
    let (status, _) = fx.post(&renewed.headers(&url, &body), &body).await;
    assert_eq!(status, StatusCode::OK, "rotation picked up");
    assert_eq!(certs.downloads.load(Ordering::SeqCst), before + 2);
    // A forged signature refetches at most once and still fails.
    let (status, _) = fx.post(&first.headers(&url, &body), &b"{}"[..]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(certs.downloads.load(Ordering::SeqCst), before + 3);
    assert_eq!(fx.sink.referral_ids().len(), 2);
    fx.stop().await;
}
