//! Partner Center webhooks in the sandbox, over real HTTP on loopback: the registration
//! API, signed delivery to a receiver, retries, the offline queue, drop faults and
//! persistence with `--data`.

mod common;

use common::entra_token as token;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use cosell::sandbox::webhooks::RetryPolicy;
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use serde_json::{Value, json};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};

const WEBHOOK_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
const PARTNER_API_SCOPE: &str = "https://api.partner.microsoft.com/.default";

/// id-kp-codeSigning: the signing certificate has no extended key usage, so "required if
/// present" of any purpose accepts it.
const CODE_SIGNING_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

async fn start() -> SandboxHandle {
    sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts")
}

/// Retries fast, so dead-receiver tests take well under a second.
fn fast_retries(handle: &SandboxHandle) {
    handle.state().webhooks.set_retry_policy(RetryPolicy {
        max_attempts: 10,
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
    });
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A registration API caller with a webhook-scope token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn new(handle: &SandboxHandle) -> Api {
        let base = handle.base_url().to_owned();
        let token = token(&base, WEBHOOK_SCOPE).await;
        Api {
            base,
            token,
            http: client(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("call");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn register(&self, url: &str, events: &[&str], ms_header: bool) -> Value {
        let body = json!({
            "WebhookUrl": url,
            "WebhookEvents": events,
            "SignatureTokenToMsSignatureHeader": ms_header,
        });
        let (status, _, value) = self
            .call(
                reqwest::Method::PUT,
                "/webhooks/v1/registration",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{value}");
        value
    }

    /// `GET /_sandbox/webhooks` once `delivered` events are recorded and nothing is
    /// pending.
    async fn settled(&self, delivered: u64) -> Value {
        wait_for("the sandbox to record the deliveries", || async {
            let status = self.sandbox_webhooks().await;
            (status["counters"]["delivered"] == delivered && status["pending"] == 0)
                .then_some(status)
        })
        .await
    }

    async fn sandbox_webhooks(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/webhooks", self.base))
            .send()
            .await
            .expect("status call")
            .json()
            .await
            .expect("status json")
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

#[derive(Debug, Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Answer 500 to this many requests before succeeding.
    fail_next: u32,
}

/// A webhook receiver on an ephemeral port that records raw bodies and headers.
#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, state }
    }

    fn fail_next(&self, count: u32) {
        self.state.lock().expect("lock").fail_next = count;
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().expect("lock").received.clone()
    }

    fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut state = state.lock().expect("lock");
    let status = if state.fail_next > 0 {
        state.fail_next -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.received.push(Received {
        headers,
        body,
        answered: status.as_u16(),
    });
    status
}

/// Polls `check` until it returns `Some`, for at most 10 s.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of the first attribute with OID `2.5.4.{last}` in a DER Name (a tiny walk:
/// OID, then a string tag and a short-form length).
fn name_attribute(name: &[u8], last: u8) -> Option<String> {
    let oid = [0x06, 0x03, 0x55, 0x04, last];
    let at = name.windows(oid.len()).position(|w| w == oid)? + oid.len();
    let len = usize::from(*name.get(at + 1)?);
    let value = name.get(at + 2..at + 2 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Verifies a delivery the way the documented receiver does (§3.4): scheme `Signature`,
/// certificate downloaded from `X-MS-Certificate-Url`, chain to the trusted CA, issuer
/// organization, RSA-SHA256 over the body. Returns whether the signature matched.
async fn verify_delivery(base: &str, headers: &HeaderMap, body: &[u8], in_ms_header: bool) -> bool {
    let token_header = if in_ms_header {
        "x-ms-signature"
    } else {
        "authorization"
    };
    let token = header(headers, token_header).expect("signature header");
    let signature = token.strip_prefix("Signature ").expect("Signature scheme");
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .expect("base64 signature");
    assert_eq!(signature.len(), 256, "RSA-2048 signature");
    assert_eq!(
        header(headers, "x-ms-signature-algorithm"),
        Some("rsa-sha256")
    );
    assert_eq!(header(headers, "content-type"), Some("application/json"));

    let certificate_url = header(headers, "x-ms-certificate-url").expect("certificate url");
    assert_eq!(
        certificate_url,
        format!("{base}/_sandbox/certificates/pcnotifications-dispatch.cer")
    );
    let response = client()
        .get(certificate_url)
        .send()
        .await
        .expect("cert call");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "content-type"),
        Some("application/pkix-cert")
    );
    let der = CertificateDer::from(response.bytes().await.expect("cert bytes").to_vec());

    let ca_pem = client()
        .get(format!("{base}/_sandbox/ca.pem"))
        .send()
        .await
        .expect("ca call")
        .text()
        .await
        .expect("ca text");
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca pem");
    let anchor = webpki::anchor_from_trusted_cert(&ca).expect("anchor");

    let cert = webpki::EndEntityCert::try_from(&der).expect("certificate parses");
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::required_if_present(CODE_SIGNING_OID),
        None,
        None,
    )
    .expect("certificate chains to the sandbox CA");
    assert_eq!(
        name_attribute(cert.issuer(), 0x0a).as_deref(),
        Some("Microsoft Corporation"),
        "issuer O="
    );
    assert_eq!(
        name_attribute(cert.subject(), 0x03).as_deref(),
        Some("pcnotifications-dispatch.microsoft.com"),
        "subject CN="
    );
    cert.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        body,
        &signature,
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_contains_referral_and_test_events() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let (status, _, events) = api
        .call(
            reqwest::Method::GET,
            "/webhooks/v1/registration/events",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let events: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "referral-created",
        "referral-updated",
        "related-referral-created",
        "related-referral-updated",
        "test-created",
        "subscription-updated",
        "usagerecords-thresholdExceeded",
    ] {
        assert!(events.contains(&name), "{name} missing from {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_lifecycle_post_conflict_get_put() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let registration = "/webhooks/v1/registration";

    let (status, _, body) = api.call(reqwest::Method::GET, registration, None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "itemNotFound");

    // camelCase property names are accepted; the answer is PascalCase.
    let (status, _, created) = api
        .call(
            reqwest::Method::POST,
            registration,
            Some(r#"{"webhookUrl":"http://127.0.0.1:9/hook","webhookEvents":["referral-created","referral-updated"]}"#),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["WebhookUrl"], "http://127.0.0.1:9/hook");
    assert_eq!(
        created["WebhookEvents"],
        json!(["referral-created", "referral-updated"])
    );
    assert_eq!(created["SignatureTokenToMsSignatureHeader"], false);
    let subscriber = created["SubscriberId"]
        .as_str()
        .expect("SubscriberId")
        .to_owned();
    assert_eq!(subscriber.len(), 36);

    let (status, _, conflict) = api
        .call(
            reqwest::Method::POST,
            registration,
            Some(r#"{"WebhookUrl":"http://127.0.0.1:9/other","WebhookEvents":["test-created"]}"#),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        conflict["error"]["message"],
        "Registration already exists, use the PUT method to update a registration."
    );

    let (status, _, viewed) = api.call(reqwest::Method::GET, registration, None).await;
    assert_eq!(status, 200);
    assert_eq!(viewed, created);

    let (status, _, replaced) = api
        .call(
            reqwest::Method::PUT,
            registration,
            Some(r#"{"WebhookUrl":"https://example.com/new","WebhookEvents":["test-created"],"SignatureTokenToMsSignatureHeader":true}"#),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["SubscriberId"], subscriber.as_str());
    assert_eq!(replaced["WebhookUrl"], "https://example.com/new");
    assert_eq!(replaced["WebhookEvents"], json!(["test-created"]));
    assert_eq!(replaced["SignatureTokenToMsSignatureHeader"], true);
    let (_, _, viewed) = api.call(reqwest::Method::GET, registration, None).await;
    assert_eq!(viewed, replaced);

    let (status, headers, _) = api.call(reqwest::Method::DELETE, registration, None).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, POST, PUT"));

    let sandbox_view = api.sandbox_webhooks().await;
    assert_eq!(sandbox_view["registration"], replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registrations_are_400() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    for body in [
        "{",
        "[]",
        r#"{"WebhookEvents":["test-created"]}"#,
        r#"{"WebhookUrl":"/relative/hook","WebhookEvents":["test-created"]}"#,
        r#"{"WebhookUrl":"ftp://example.com/hook","WebhookEvents":["test-created"]}"#,
        r#"{"WebhookUrl":"not a url","WebhookEvents":["test-created"]}"#,
        r#"{"WebhookUrl":"https://example.com/hook","WebhookEvents":[]}"#,
        r#"{"WebhookUrl":"https://example.com/hook","WebhookEvents":["referral-deleted"]}"#,
        r#"{"WebhookUrl":"https://example.com/hook","WebhookEvents":"referral-created"}"#,
        r#"{"WebhookUrl":"https://example.com/hook","WebhookEvents":["test-created"],"SignatureTokenToMsSignatureHeader":"yes"}"#,
    ] {
        for method in [reqwest::Method::POST, reqwest::Method::PUT] {
            let (status, _, value) = api
                .call(method.clone(), "/webhooks/v1/registration", Some(body))
                .await;
            assert_eq!(status, 400, "{method} {body}: {value}");
            assert_eq!(value["error"]["code"], "invalidRequest", "{body}");
            assert!(value["error"]["message"].is_string());
        }
    }
    let (status, _, _) = api
        .call(reqwest::Method::GET, "/webhooks/v1/registration", None)
        .await;
    assert_eq!(status, 404, "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_api_needs_a_partner_center_token() {
    let handle = start().await;
    let base = handle.base_url().to_owned();
    let url = format!("{base}/webhooks/v1/registration");

    let response = client().get(&url).send().await.expect("call");
    assert_eq!(response.status(), 401);

    let partner_api_token = token(&base, PARTNER_API_SCOPE).await;
    let response = client()
        .get(&url)
        .bearer_auth(&partner_api_token)
        .send()
        .await
        .expect("call");
    assert_eq!(
        response.status(),
        401,
        "a Partner API token is for another audience"
    );
    let body: Value = response.json().await.expect("json");
    assert!(body["error"]["code"].is_string());

    let right = token(&base, WEBHOOK_SCOPE).await;
    let response = client()
        .get(&url)
        .bearer_auth(&right)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 404, "authenticated, nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_event_is_delivered_and_completed() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let receiver = Receiver::start().await;

    // Not registered for test-created yet.
    api.register(&receiver.url, &["referral-created"], false)
        .await;
    let (status, _, body) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration/validationEvents",
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");

    api.register(&receiver.url, &["referral-created", "test-created"], false)
        .await;
    let (status, _, body) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration/validationEvents",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let correlation_id = body["correlationId"]
        .as_str()
        .expect("correlationId")
        .to_owned();

    let delivered = wait_for("the test event", || async {
        receiver.delivered().into_iter().next()
    })
    .await;
    let event: Value = serde_json::from_slice(&delivered.body).expect("json body");
    assert_eq!(event["EventName"], "test-created");
    assert_eq!(event["ResourceName"], "test");
    assert_eq!(event["AuditUri"], Value::Null);
    assert_eq!(
        event["ResourceUri"],
        format!(
            "{}/webhooks/v1/registration/validationEvents/{correlation_id}",
            handle.base_url()
        )
    );
    assert!(
        verify_delivery(
            handle.base_url(),
            &delivered.headers,
            &delivered.body,
            false
        )
        .await
    );

    let path = format!("/webhooks/v1/registration/validationEvents/{correlation_id}");
    let report = wait_for("status completed", || async {
        let (status, _, report) = api.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200);
        (report["status"] == "completed").then_some(report)
    })
    .await;
    assert_eq!(report["correlationId"], correlation_id.as_str());
    assert_eq!(report["callbackUrl"], receiver.url.as_str());
    assert!(report["partnerId"].is_string());
    let result = &report["results"][0];
    assert_eq!(result["responseCode"], "OK");
    assert_eq!(result["systemError"], false);
    let when = result["dateTimeUtc"].as_str().expect("dateTimeUtc");
    assert!(when.len() == 27 && !when.ends_with('Z'), "{when}");

    let (status, _, _) = api
        .call(
            reqwest::Method::GET,
            "/webhooks/v1/registration/validationEvents/00000000-0000-4000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(status, 404);

    // "There is a throttle limit of 2 requests per minute when posting a validation event."
    let (status, _, _) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration/validationEvents",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, headers, body) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration/validationEvents",
            None,
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = header(&headers, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_event_is_delivered_with_documented_body_and_verifiable_signature() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let receiver = Receiver::start().await;
    api.register(&receiver.url, &["referral-created"], false)
        .await;

    let state = handle.state();
    // Not subscribed: never sent.
    state.webhooks.notify(state, "referral-updated", "ignored");
    state.webhooks.notify(state, "referral-created", "abc");

    let delivered = wait_for("the referral event", || async {
        receiver.delivered().into_iter().next()
    })
    .await;
    let text = std::str::from_utf8(&delivered.body).expect("utf-8");
    let event: Value = serde_json::from_str(text).expect("json");
    let expected_start = format!(
        r#"{{"EventName":"referral-created","ResourceUri":"{}/engagements/v1/referrals/abc","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":""#,
        handle.base_url()
    );
    assert!(text.starts_with(&expected_start), "{text}");
    let date = event["ResourceChangeUtcDate"].as_str().expect("date");
    // 2018-02-17T00:05:39.5485487+00:00
    assert_eq!(date.len(), 33, "{date}");
    assert!(
        date.ends_with("+00:00") && date.as_bytes()[19] == b'.',
        "{date}"
    );

    assert!(header(&delivered.headers, "x-ms-signature").is_none());
    assert!(
        verify_delivery(
            handle.base_url(),
            &delivered.headers,
            &delivered.body,
            false
        )
        .await
    );
    // One byte changed: the signature no longer matches.
    let mut tampered = delivered.body.to_vec();
    let position = tampered.iter().position(|b| *b == b'a').expect("an 'a'");
    tampered[position] = b'b';
    assert!(!verify_delivery(handle.base_url(), &delivered.headers, &tampered, false).await);

    // The PEM twin is the same certificate.
    let pem = client()
        .get(format!(
            "{}/_sandbox/certificates/pcnotifications-dispatch.pem",
            handle.base_url()
        ))
        .send()
        .await
        .expect("pem call")
        .text()
        .await
        .expect("pem");
    let from_pem = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem parses");
    assert_eq!(from_pem.as_ref(), state.pki.signing_certificate_der());

    let status = api.settled(1).await;
    assert_eq!(receiver.received().len(), 1, "only the subscribed event");
    assert_eq!(status["pending"], 0);
    assert_eq!(status["deliveries"][0]["status"], 200);
    assert_eq!(status["deliveries"][0]["attempt"], 1);
    assert_eq!(status["deliveries"][0]["event"], "referral-created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_goes_to_x_ms_signature_when_asked() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let receiver = Receiver::start().await;
    // The referral connector sends the flag in camelCase.
    let body = json!({
        "WebhookUrl": receiver.url,
        "WebhookEvents": ["related-referral-updated"],
        "signatureTokenToMsSignatureHeader": true,
    });
    let (status, _, registered) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(registered["SignatureTokenToMsSignatureHeader"], true);

    let state = handle.state();
    state
        .webhooks
        .notify(state, "related-referral-updated", "r-1");
    let delivered = wait_for("the event", || async {
        receiver.delivered().into_iter().next()
    })
    .await;
    assert!(header(&delivered.headers, "authorization").is_none());
    assert!(verify_delivery(handle.base_url(), &delivered.headers, &delivered.body, true).await);
    let event: Value = serde_json::from_slice(&delivered.body).expect("json");
    assert_eq!(event["EventName"], "related-referral-updated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_retries_in_order_per_referral() {
    let handle = start().await;
    fast_retries(&handle);
    let api = Api::new(&handle).await;
    let receiver = Receiver::start().await;
    api.register(
        &receiver.url,
        &["referral-created", "referral-updated"],
        false,
    )
    .await;
    receiver.fail_next(3);

    let state = handle.state();
    state.webhooks.notify(state, "referral-created", "r-1");
    state.webhooks.notify(state, "referral-updated", "r-1");

    let delivered = wait_for("both events", || async {
        let delivered = receiver.delivered();
        (delivered.len() == 2).then_some(delivered)
    })
    .await;
    let names: Vec<String> = delivered
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).expect("json")["EventName"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["referral-created", "referral-updated"], "in order");
    let received = receiver.received();
    assert_eq!(received.len(), 5);
    assert!(received[..3].iter().all(|r| r.answered == 500));
    // The retried event is the same bytes every time.
    assert!(received[..4].iter().all(|r| r.body == received[0].body));

    // The receiver may see the last request before the sandbox has recorded its answer.
    let status = api.settled(2).await;
    assert_eq!(status["counters"]["failed_attempts"], 3);
    let attempts: Vec<(u64, Option<u64>)> = status["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| (d["attempt"].as_u64().unwrap_or(0), d["status"].as_u64()))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(500)),
            (2, Some(500)),
            (3, Some(500)),
            (4, Some(200)),
            (1, Some(200))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_receiver_moves_the_event_offline_after_ten_attempts() {
    let handle = start().await;
    fast_retries(&handle);
    let api = Api::new(&handle).await;
    // A port nobody listens on.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", listener.local_addr().expect("addr"))
    };
    api.register(&dead, &["referral-created", "test-created"], false)
        .await;
    let state = handle.state();
    state.webhooks.notify(state, "referral-created", "lost");
    let (status, _, body) = api
        .call(
            reqwest::Method::POST,
            "/webhooks/v1/registration/validationEvents",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let correlation_id = body["correlationId"]
        .as_str()
        .expect("correlationId")
        .to_owned();

    let status = wait_for("two offline events", || async {
        let status = api.sandbox_webhooks().await;
        (status["offline"].as_array().map(Vec::len) == Some(2)).then_some(status)
    })
    .await;
    assert_eq!(status["pending"], 0);
    assert_eq!(status["counters"]["offline"], 2);
    assert_eq!(status["counters"]["failed_attempts"], 20);
    assert_eq!(status["counters"]["delivered"], 0);
    let offline = status["offline"]
        .as_array()
        .expect("offline")
        .iter()
        .find(|e| e["event"] == "referral-created")
        .expect("the referral event")
        .clone();
    assert_eq!(offline["attempts"], 10);
    assert!(offline["last_error"].is_string());
    assert_eq!(offline["body"]["ResourceName"], "referral");
    let last_attempt = status["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["event"] == "referral-created")
        .map(|d| d["attempt"].as_u64().unwrap_or(0))
        .max();
    assert_eq!(last_attempt, Some(10));

    let (_, _, report) = api
        .call(
            reqwest::Method::GET,
            &format!("/webhooks/v1/registration/validationEvents/{correlation_id}"),
            None,
        )
        .await;
    assert_eq!(report["status"], "failed");
    assert_eq!(report["results"].as_array().map(Vec::len), Some(10));
    assert_eq!(report["results"][0]["systemError"], true);

    // No further attempts once offline.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = api.sandbox_webhooks().await;
    assert_eq!(later["counters"]["failed_attempts"], 20);

    // The sandbox still answers while deliveries fail, and offline events can be replayed
    // to a receiver that came back.
    let receiver = Receiver::start().await;
    api.register(&receiver.url, &["referral-created", "test-created"], false)
        .await;
    let response = client()
        .post(format!(
            "{}/_sandbox/webhooks/offline/redeliver",
            handle.base_url()
        ))
        .send()
        .await
        .expect("redeliver");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["redelivered"], 2);
    wait_for("redelivered events", || async {
        (receiver.delivered().len() == 2).then_some(())
    })
    .await;
    let status = api.settled(2).await;
    assert_eq!(status["offline"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_fault_loses_the_next_event() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    let receiver = Receiver::start().await;
    api.register(
        &receiver.url,
        &["referral-created", "referral-updated"],
        false,
    )
    .await;
    let response = client()
        .post(format!("{}/_sandbox/faults", handle.base_url()))
        .json(&json!({"webhooks": {"drop_next": 1}}))
        .send()
        .await
        .expect("faults");
    assert_eq!(response.status(), 200);

    let state = handle.state();
    state
        .webhooks
        .notify(state, "referral-created", "dropped-one");
    state.webhooks.notify(state, "referral-updated", "kept-one");
    let delivered = wait_for("the second event", || async {
        receiver.delivered().into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(receiver.received().len(), 1);
    let event: Value = serde_json::from_slice(&delivered.body).expect("json");
    assert_eq!(event["EventName"], "referral-updated");
    assert!(
        event["ResourceUri"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/kept-one")
    );

    let status = api.settled(1).await;
    assert_eq!(status["counters"]["dropped"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receiver_is_trusted_through_the_sandbox_ca() {
    let handle = start().await;
    let api = Api::new(&handle).await;
    // A TLS receiver presenting the sandbox's own 127.0.0.1 certificate.
    let config = handle.state().pki.tls_server_config().expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}/hook", listener.local_addr().expect("addr"));
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let recorded = Arc::clone(&bodies);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let body = axum::body::to_bytes(
                                axum::body::Body::new(request.into_body()),
                                1 << 20,
                            )
                            .await
                            .unwrap_or_default();
                            recorded.lock().expect("lock").push(body);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                axum::body::Body::empty(),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    api.register(&url, &["referral-created"], false).await;
    let state = handle.state();
    state.webhooks.notify(state, "referral-created", "tls-1");
    wait_for("delivery over https", || async {
        (bodies.lock().expect("lock").len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_ca_survive_a_restart_with_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = || SandboxOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..SandboxOptions::default()
    };
    let first = sandbox::start(options()).await.expect("first start");
    let ca = first.ca_pem();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let signing = first.state().pki.signing_certificate_der().to_vec();
    let api = Api::new(&first).await;
    let registered = api
        .register("https://example.com/hook", &["referral-created"], true)
        .await;
    first.shutdown().await;

    let second = sandbox::start(options()).await.expect("second start");
    assert_eq!(second.ca_pem(), ca, "CA unchanged");
    assert_eq!(
        second.state().pki.signing_certificate_der(),
        signing.as_slice()
    );
    let api = Api::new(&second).await;
    let (status, _, viewed) = api
        .call(reqwest::Method::GET, "/webhooks/v1/registration", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(viewed, registered);
    second.shutdown().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let pki = dir.path().join("pki");
        for key in ["ca-key.pem", "signing-key.pem", "tls-key.pem"] {
            let mode = std::fs::metadata(pki.join(key))
                .expect(key)
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        assert!(pki.join("ca.pem").exists());
    }
}
