//! Section `webhooks`: forged, malformed and replayed Partner Center webhooks against the
//! real webhook server (`cosell::server`), storing into the engine's real inbox (an
//! [`InboxSink`] on a SQLite state file, as `cosell run` wires it).
//!
//! Every hostile request must get the status below and store nothing: after each one the
//! number of jobs ever inserted into the state file (`sqlite_sequence` of `jobs`, read
//! through a connection of our own) and the store's pending count are unchanged, and a
//! valid request sent right after through the same server IS stored (one more job), so a
//! server that refused everything would fail too.
//!
//! Two servers share the one inbox: a *loopback* one that, like `cosell run --sandbox`,
//! takes certificates over plain http from the sandbox and from a test certificate server
//! (self-made CAs), and a *strict* one configured like production — https only, an
//! allow-listed host (`localhost:<port>` of a TLS sandbox, and `allowed.example.com`), the
//! path prefix `/_sandbox/certificates/`.
//!
//! | Request | Status | Why (partner-center-api.md §3.3–3.4; `src/server`) |
//! |---|---|---|
//! | no `Authorization` (nor `x-ms-signature`) | 401 | "Authorization header missing." as the reference code |
//! | empty / `Signature` without token / `Bearer …` / bare token | 401 | scheme must be `Signature` |
//! | token not base64 | 401 | signature verification failed (malformed) |
//! | base64 but wrong bytes; signature of another body; body by an untrusted key | 401 | RSASSA-PKCS1-v1_5 SHA-256 does not verify |
//! | garbage `x-ms-signature` next to a valid `Authorization` | 401 | `x-ms-signature` wins when present |
//! | no / empty `x-ms-signature-algorithm` | 400 | "Request header … missing." |
//! | algorithm `rsa-sha1`, `rsa-sha512`, `hmac-sha256`, `none`, `RSA_SHA256`, `rsa-pss-sha256` | 401 | only `rsa-sha256` (the header names RSA + hash; no HMAC in the scheme) |
//! | no certificate URL; non-ASCII URL | 400 | header missing / unreadable |
//! | URL on `allowed.example.com.evil.test`, with userinfo (either side of `@`), http, IP literal (`127.0.0.1`, `[::1]`, `2130706433`) for the allowed name, trailing dot, other port, outside the path prefix, `..%2f`/`%2e%2e` escapes, query, fragment, `file:`/`ftp:`/`javascript:`, not a URL | 401 | "Certificate URL not allowed." — checked before any download |
//! | certificate self-signed; from a CA not trusted; expired; not yet valid; a CA certificate as the signer; not a certificate; empty file | 401 | "Certificate verification failed." (chain to a trust anchor at the current time) |
//! | certificate from a trusted CA without `O=Microsoft Corporation` | 401 | "Certificate not issued by O=Microsoft Corporation." |
//! | `Content-Type` not JSON (text/plain, form, multipart) | 415 | Partner Center sends `application/json`; refused before reading the body |
//! | body over 64 KiB: declared `Content-Length` of limit + 1, chunked limit + 1, chunked megabytes | 413 | [`cosell::server::MAX_BODY_BYTES`]; a body of exactly the limit is accepted (a control) |
//! | signed body that is not JSON, not an object, too deeply nested, invalid UTF-8, empty | 400 | not a webhook event |
//! | signed JSON of the wrong shape: missing `EventName`/`ResourceUri`/`ResourceName`/`ResourceChangeUtcDate`, wrong types, a date that is not a date, `AuditUri` not a string, no referral id, undocumented event (`referral-deleted`), referral event of another resource | 400 | the documented event shape (§3.1); only the four referral events reach the inbox |
//! | `PUT` / `GET` on the webhook path | 405 | only `POST` |
//! | the same signed request again (at once, after its job ran, ten at a time, via `x-ms-signature`, with a 2018 `ResourceChangeUtcDate`) | **200**, stored once | see below |
//!
//! **Replays.** The signature covers the body only — no timestamp, nonce or URL (§3.4) — so a
//! replay cannot be told from Partner Center re-delivering an event it did not see our 200
//! for, which it does up to 10 times (§3.3). A 4xx there would make Partner Center retry and
//! then park a genuine event offline; so a re-delivery is acknowledged 200 and the invariant
//! is *nothing stored twice*: the store deduplicates a waiting job, the [`InboxSink`]
//! remembers events it stored for 24 h (`cosell::engine::inbox`). An old
//! `ResourceChangeUtcDate` is accepted once: the job re-reads the referral, so an old event
//! carries no stale data, and Partner Center's retry schedule is undocumented.
//!
//! Figures: `inputs_tried` = hostile requests (the long variant adds more seeded random
//! corruptions of signature and body); `operations` = every request sent, controls included.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cosell::config::model::CrmKind;
use cosell::engine::inbox::InboxSink;
use cosell::sandbox::webhooks::CERTIFICATE_PATH;
use cosell::sandbox::{self, SandboxOptions};
use cosell::server::verify::{WebhookTrust, WebhookVerifier, parse_certificates};
use cosell::server::{self, EventSink, MAX_BODY_BYTES, ServerHandle, ServerOptions};
use reqwest::StatusCode;
use sqlx::Row as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::report::{Ctx, Figures};

#[path = "../common/signing.rs"]
mod signing;
use crate::world;

use signing::{CertServer, Leaf, TestSigner};

const PATH: &str = "/webhooks/partner-center";
const MICROSOFT: Option<&str> = Some("Microsoft Corporation");

type Headers = Vec<(&'static str, String)>;
/// Signs a body the way a valid delivery is signed: its headers.
type Signer = Box<dyn Fn(&[u8]) -> Headers + Send + Sync>;

pub fn run(ctx: &Ctx) -> Figures {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(section(ctx))
}

/// One webhook server on the shared inbox.
struct Server {
    name: &'static str,
    url: String,
    handle: ServerHandle,
    /// Signs a body the way a valid delivery to this server is signed.
    sign: Signer,
}

struct Probe {
    http: reqwest::Client,
    /// Our own connection to the engine's state file.
    db: sqlx::SqlitePool,
    store: cosell::store::Store,
    figures: Figures,
    controls: u64,
    /// Each hostile request's status, for the notes.
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Probe {
    /// Jobs ever inserted into the inbox, and jobs waiting now.
    async fn stored(&self) -> (i64, u64) {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0) AS seq",
        )
        .fetch_one(&self.db)
        .await
        .expect("read sqlite_sequence");
        let seq: i64 = row.get("seq");
        let pending = self.store.inbox_stats().await.expect("inbox stats").pending;
        (seq, pending)
    }

    async fn send(
        &mut self,
        server: &Server,
        method: reqwest::Method,
        headers: &Headers,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        self.figures.operations += 1;
        let mut request = self.http.request(method, &server.url).body(body);
        let mut content_type = false;
        for (name, value) in headers {
            content_type |= name.eq_ignore_ascii_case("content-type");
            let value =
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()).expect("header value");
            request = request.header(*name, value);
        }
        if !content_type {
            request = request.header("Content-Type", "application/json");
        }
        let response = request.send().await.expect("webhook request");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// A valid, never-seen event through `server`: 200 and exactly one more job.
    async fn control(&mut self, server: &Server) {
        self.controls += 1;
        let body = event(&format!("control-{}-{}", server.name, self.controls));
        let headers = (server.sign)(&body);
        let before = self.stored().await;
        let (status, text) = self
            .send(server, reqwest::Method::POST, &headers, body)
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: valid control refused: {text}",
            server.name
        );
        let after = self.stored().await;
        assert_eq!(
            (after.0, after.1),
            (before.0 + 1, before.1 + 1),
            "{}: the valid control was not stored exactly once",
            server.name
        );
    }

    /// Checks that a hostile request was answered `expected` and stored nothing, then
    /// that a valid request right after is stored.
    async fn refused_with(
        &mut self,
        server: &Server,
        what: &str,
        expected: u16,
        before: (i64, u64),
        status: u16,
        text: &str,
    ) {
        self.figures.inputs_tried += 1;
        *self.statuses.entry(status).or_default() += 1;
        assert_eq!(
            status, expected,
            "{}: {what}: answered {status} ({text}), expected {expected}",
            server.name
        );
        assert_eq!(
            self.stored().await,
            before,
            "{}: {what}: a refused request stored something",
            server.name
        );
        self.control(server).await;
    }

    async fn refused(
        &mut self,
        server: &Server,
        what: &str,
        expected: u16,
        headers: &Headers,
        body: &[u8],
    ) {
        let before = self.stored().await;
        let (status, text) = self
            .send(server, reqwest::Method::POST, headers, body.to_vec())
            .await;
        self.refused_with(server, what, expected, before, status.as_u16(), &text)
            .await;
    }

    /// A delivery of an event already stored: 200, nothing stored.
    async fn replayed(&mut self, server: &Server, headers: &Headers, body: &[u8], what: &str) {
        self.figures.inputs_tried += 1;
        let before = self.stored().await;
        let (status, text) = self
            .send(server, reqwest::Method::POST, headers, body.to_vec())
            .await;
        assert_eq!(status, StatusCode::OK, "replay {what}: {text}");
        assert_eq!(self.stored().await, before, "replay {what}: stored again");
    }

    /// A signed body that verifies but is not an acceptable event: 400.
    async fn bad_body(&mut self, server: &Server, what: &str, body: &[u8]) {
        let headers = (server.sign)(body);
        self.refused(server, what, 400, &headers, body).await;
    }
}

/// A documented referral event for `referral_id`.
fn event(referral_id: &str) -> Vec<u8> {
    event_at(referral_id, "2026-03-01T10:00:00.1234567+00:00")
}

fn event_at(referral_id: &str, changed: &str) -> Vec<u8> {
    format!(
        r#"{{"EventName":"referral-updated","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral_id}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"{changed}"}}"#
    )
    .into_bytes()
}

fn with(headers: &Headers, name: &'static str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name, value.to_owned()));
    out
}

fn without(headers: &Headers, name: &str) -> Headers {
    headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

async fn start_server(
    name: &'static str,
    trust: WebhookTrust,
    sink: Arc<dyn EventSink>,
    sign: Signer,
) -> Server {
    let verifier = Arc::new(WebhookVerifier::new(trust).expect("verifier"));
    let mut options = ServerOptions::new("127.0.0.1:0".parse().expect("addr"), verifier);
    options.webhook_path = PATH.to_owned();
    let handle = server::serve(options, sink).await.expect("server starts");
    Server {
        name,
        url: format!("http://{}{PATH}", handle.local_addr()),
        handle,
        sign,
    }
}

/// Sends `head` and `body` over a raw connection (what reqwest will not do: lie about or
/// stream past the length) and returns the response's status code, or `None` when the
/// server closed the connection without one.
async fn raw_status(server: &Server, head: String, body: Vec<u8>) -> Option<u16> {
    let addr = server.handle.local_addr();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Write in the background: the server may answer (and stop reading) before the end.
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body.chunks(16 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
    });
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !buffer.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writing.abort();
    read.ok()?;
    let line = String::from_utf8_lossy(&buffer);
    line.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// `data` as HTTP/1.1 chunked transfer encoding.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 16);
    for chunk in data.chunks(8192) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A valid event padded with spaces to exactly `len` bytes.
fn padded_event(referral_id: &str, len: usize) -> Vec<u8> {
    let mut body = event(referral_id);
    body.pop(); // the closing brace
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

/// Over-long and over-streamed bodies, signed so only the size is wrong.
async fn oversized(probe: &mut Probe, server: &Server) {
    let addr = server.handle.local_addr();
    let head = |extra: &str| {
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Connection: close\r\n"
        )
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "declared length limit + 1",
            padded_event("big-1", MAX_BODY_BYTES + 1),
            false,
        ),
        (
            "chunked, limit + 1",
            padded_event("big-2", MAX_BODY_BYTES + 1),
            true,
        ),
        ("chunked, 4 MiB", padded_event("big-3", 4 << 20), true),
    ];
    for (what, body, is_chunked) in cases {
        let mut headers = String::new();
        for (name, value) in (server.sign)(&body) {
            headers.push_str(&format!("{name}: {value}\r\n"));
        }
        let (request_head, payload) = if is_chunked {
            (
                format!("{}{headers}Transfer-Encoding: chunked\r\n\r\n", head("")),
                chunked(&body),
            )
        } else {
            (
                format!(
                    "{}{headers}Content-Length: {}\r\n\r\n",
                    head(""),
                    body.len()
                ),
                body,
            )
        };
        let before = probe.stored().await;
        probe.figures.operations += 1;
        let status = raw_status(server, request_head, payload).await.unwrap_or(0);
        probe
            .refused_with(server, what, 413, before, status, "")
            .await;
    }

    // Exactly at the limit: accepted and stored (a control that the limit is not lower).
    let body = padded_event("at-the-limit", MAX_BODY_BYTES);
    let headers = (server.sign)(&body);
    let before = probe.stored().await;
    let (status, text) = probe
        .send(server, reqwest::Method::POST, &headers, body)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a body of exactly the limit: {text}"
    );
    assert_eq!(probe.stored().await.0, before.0 + 1);
}

async fn signatures(probe: &mut Probe, server: &Server) {
    let body = event("sig-1");
    let signed = (server.sign)(&body);
    let cases: Vec<(&str, u16, Headers)> = vec![
        (
            "no Authorization header",
            401,
            without(&signed, "Authorization"),
        ),
        (
            "empty Authorization",
            401,
            with(&signed, "Authorization", ""),
        ),
        (
            "scheme without token",
            401,
            with(&signed, "Authorization", "Signature "),
        ),
        (
            "Bearer scheme",
            401,
            with(&signed, "Authorization", "Bearer abc.def.ghi"),
        ),
        (
            "bare token, no scheme",
            401,
            with(
                &signed,
                "Authorization",
                signed[0].1.trim_start_matches("Signature "),
            ),
        ),
        (
            "token not base64",
            401,
            with(&signed, "Authorization", "Signature !!not*base64!!"),
        ),
        (
            "base64 of 3 bytes",
            401,
            with(&signed, "Authorization", "Signature QUJD"),
        ),
        (
            "base64 of 256 zero bytes",
            401,
            with(
                &signed,
                "Authorization",
                &format!(
                    "Signature {}",
                    base64::engine::general_purpose::STANDARD.encode([0u8; 256])
                ),
            ),
        ),
        (
            "signature of another body",
            401,
            (server.sign)(&event("sig-other")),
        ),
        (
            "garbage x-ms-signature beside a valid Authorization",
            401,
            with(&signed, "x-ms-signature", "Signature AAAA"),
        ),
    ];
    for (what, expected, headers) in cases {
        probe.refused(server, what, expected, &headers, &body).await;
    }
    // The body signed by a key nobody trusts, naming the sandbox's certificate.
    let stranger = TestSigner::new(MICROSOFT);
    let url = signed[1].1.clone();
    probe
        .refused(
            server,
            "body signed by an untrusted key",
            401,
            &stranger.headers(&url, &body),
            &body,
        )
        .await;
    // The body changed by one byte after signing.
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    probe
        .refused(
            server,
            "body changed after signing",
            401,
            &signed,
            &tampered,
        )
        .await;
}

async fn algorithms(probe: &mut Probe, server: &Server) {
    let body = event("alg-1");
    let signed = (server.sign)(&body);
    let header = "X-MS-Signature-Algorithm";
    probe
        .refused(
            server,
            "no algorithm header",
            400,
            &without(&signed, header),
            &body,
        )
        .await;
    probe
        .refused(
            server,
            "empty algorithm",
            400,
            &with(&signed, header, " "),
            &body,
        )
        .await;
    for algorithm in [
        "rsa-sha1",
        "rsa-sha512",
        "hmac-sha256",
        "HS256",
        "none",
        "RSA_SHA256",
        "rsa-pss-sha256",
        "rsa-sha256-sha256",
        "ecdsa-sha256",
    ] {
        probe
            .refused(
                server,
                &format!("algorithm {algorithm}"),
                401,
                &with(&signed, header, algorithm),
                &body,
            )
            .await;
    }
}

async fn certificate_urls(probe: &mut Probe, server: &Server, tls_port: u16) {
    let body = event("url-1");
    let signed = (server.sign)(&body);
    let header = "X-MS-Certificate-Url";
    let file = CERTIFICATE_PATH.rsplit('/').next().expect("file name");
    let good = format!("https://localhost:{tls_port}{CERTIFICATE_PATH}");
    assert_eq!(signed[1].1, good);
    probe
        .refused(
            server,
            "no certificate URL",
            400,
            &without(&signed, header),
            &body,
        )
        .await;
    probe
        .refused(
            server,
            "non-ASCII certificate URL",
            400,
            &with(&signed, header, "https://аllowed.example.com/x.cer"),
            &body,
        )
        .await;
    let urls = [
        format!("https://allowed.example.com.evil.test{CERTIFICATE_PATH}"),
        format!("https://allowed.example.com@evil.test{CERTIFICATE_PATH}"),
        format!("https://evil.test@allowed.example.com{CERTIFICATE_PATH}"),
        format!("https://user:pw@localhost:{tls_port}{CERTIFICATE_PATH}"),
        format!("http://localhost:{tls_port}{CERTIFICATE_PATH}"),
        format!("https://127.0.0.1:{tls_port}{CERTIFICATE_PATH}"),
        format!("https://[::1]:{tls_port}{CERTIFICATE_PATH}"),
        format!("https://2130706433:{tls_port}{CERTIFICATE_PATH}"),
        format!("https://localhost.:{tls_port}{CERTIFICATE_PATH}"),
        format!("https://localhost:1{CERTIFICATE_PATH}"),
        format!("https://localhost{CERTIFICATE_PATH}"),
        format!("https://localhost:{tls_port}/cert/{file}"),
        format!("https://localhost:{tls_port}/_sandbox/certificates/..%2f..%2fstats"),
        format!("https://localhost:{tls_port}/_sandbox/certificates/%2e%2e/%2e%2e/{file}"),
        format!(
            "https://localhost:{tls_port}/_sandbox/certificates/%70cnotifications-dispatch.cer"
        ),
        format!("https://allowed%2eexample.com%2eevil.test{CERTIFICATE_PATH}"),
        format!("https://localhost:{tls_port}\\@evil.test{CERTIFICATE_PATH}"),
        format!("{good}?sv=2020"),
        format!("{good}#fragment"),
        "file:///etc/passwd".to_owned(),
        format!("ftp://localhost:{tls_port}{CERTIFICATE_PATH}"),
        "javascript:alert(1)".to_owned(),
        format!("//localhost:{tls_port}{CERTIFICATE_PATH}"),
        "not a url".to_owned(),
    ];
    for url in &urls {
        probe
            .refused(
                server,
                &format!("certificate URL {url}"),
                401,
                &with(&signed, header, url),
                &body,
            )
            .await;
    }
}

async fn certificates(
    probe: &mut Probe,
    server: &Server,
    certs: &CertServer,
    trusted: &TestSigner,
) {
    let body = event("cert-1");
    // A certificate our trusted CA issued: the positive case this group varies.
    let url = certs.put("trusted.cer", trusted.leaf_der.clone());
    let (status, text) = probe
        .send(
            server,
            reqwest::Method::POST,
            &trusted.headers(&url, &body),
            body.clone(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the trusted test certificate: {text}"
    );

    let body = event("cert-2");
    let cases: Vec<(&str, TestSigner)> = vec![
        (
            "self-signed certificate",
            TestSigner::with_leaf(MICROSOFT, Leaf::SelfSigned),
        ),
        ("certificate of another CA", TestSigner::new(MICROSOFT)),
        (
            "expired certificate",
            TestSigner::with_leaf(MICROSOFT, Leaf::Expired),
        ),
        (
            "certificate not yet valid",
            TestSigner::with_leaf(MICROSOFT, Leaf::NotYetValid),
        ),
        (
            "a CA certificate as the signer",
            TestSigner::with_leaf(MICROSOFT, Leaf::IssuedCa),
        ),
    ];
    for (index, (what, signer)) in cases.iter().enumerate() {
        let url = certs.put(&format!("case-{index}.cer"), signer.leaf_der.clone());
        probe
            .refused(server, what, 401, &signer.headers(&url, &body), &body)
            .await;
    }
    // The same failures when the signer's CA *is* trusted: expiry, validity and CA use are
    // checked against the chain, not just "unknown issuer".
    for (what, leaf) in [
        ("expired certificate of the trusted CA", Leaf::Expired),
        ("future certificate of the trusted CA", Leaf::NotYetValid),
        (
            "CA certificate of the trusted CA as the signer",
            Leaf::IssuedCa,
        ),
    ] {
        let signer = trusted.reissue(leaf);
        let url = certs.put(&format!("{leaf:?}.cer"), signer.leaf_der.clone());
        probe
            .refused(server, what, 401, &signer.headers(&url, &body), &body)
            .await;
    }
    for (what, bytes) in [
        ("certificate file is junk", b"junk".to_vec()),
        ("certificate file is empty", Vec::new()),
        (
            "the CA certificate instead of the signer's",
            trusted.ca_pem.clone().into_bytes(),
        ),
    ] {
        let url = certs.put("odd.cer", bytes);
        probe
            .refused(server, what, 401, &trusted.headers(&url, &body), &body)
            .await;
    }
}

async fn content_types(probe: &mut Probe, server: &Server) {
    let body = event("ct-1");
    let signed = (server.sign)(&body);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        probe
            .refused(
                server,
                &format!("Content-Type {content_type}"),
                415,
                &with(&signed, "Content-Type", content_type),
                &body,
            )
            .await;
    }
    for method in [reqwest::Method::PUT, reqwest::Method::GET] {
        let before = probe.stored().await;
        let (status, text) = probe
            .send(server, method.clone(), &signed, body.clone())
            .await;
        probe
            .refused_with(
                server,
                &format!("{method} on the webhook path"),
                405,
                before,
                status.as_u16(),
                &text,
            )
            .await;
    }
}

async fn bodies(probe: &mut Probe, server: &Server) {
    let uri = "https://api.partnercenter.microsoft.com/engagements/v1/referrals/shape-1";
    let date = "2026-03-01T10:00:00Z";
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&event("bom-1"));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("not JSON", b"{not json".to_vec()),
        ("truncated JSON", event("trunc-1")[..40].to_vec()),
        ("JSON array", b"[]".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("JSON string", br#""referral-created""#.to_vec()),
        (
            "trailing garbage",
            [event("trail-1"), b"x".to_vec()].concat(),
        ),
        ("two objects", [event("two-1"), event("two-2")].concat()),
        ("30 000 nested arrays", deep.into_bytes()),
        ("invalid UTF-8", b"{\"EventName\":\"\xff\xfe\"}".to_vec()),
        ("byte-order mark", bom),
    ];
    for (what, body) in &malformed {
        probe.bad_body(server, what, body).await;
    }
    let shapes: Vec<(&str, String)> = vec![
        ("empty object", "{}".to_owned()),
        (
            "no EventName",
            format!(
                r#"{{"ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "no ResourceUri",
            format!(
                r#"{{"EventName":"referral-created","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "no ResourceName",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "no ResourceChangeUtcDate",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceName":"referral"}}"#
            ),
        ),
        (
            "EventName a number",
            format!(
                r#"{{"EventName":7,"ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "EventName an array",
            format!(
                r#"{{"EventName":["referral-created"],"ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "ResourceUri an object",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":{{"id":"x"}},"ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "ResourceUri null",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":null,"ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "EventName blank",
            format!(
                r#"{{"EventName":"  ","ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "date not a date",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"yesterday"}}"#
            ),
        ),
        (
            "date a number",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":1700000000}}"#
            ),
        ),
        (
            "AuditUri a number",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceName":"referral","AuditUri":5,"ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "no referral id in ResourceUri",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "undocumented referral event",
            format!(
                r#"{{"EventName":"referral-deleted","ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "referral event of another resource",
            format!(
                r#"{{"EventName":"referral-created","ResourceUri":"{uri}","ResourceName":"subscription","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
        (
            "event name in other case",
            format!(
                r#"{{"EventName":"REFERRAL-CREATED","ResourceUri":"{uri}","ResourceName":"referral","ResourceChangeUtcDate":"{date}"}}"#
            ),
        ),
    ];
    for (what, body) in &shapes {
        probe.bad_body(server, what, body.as_bytes()).await;
    }
}

/// The same signed request delivered again must not be stored again.
async fn replays(probe: &mut Probe, server: &Server, world: &world::World) {
    let id = world.incoming("Replayed webhook").await;
    let body = event(&id);
    let signed = (server.sign)(&body);
    let before = probe.stored().await;
    let (status, text) = probe
        .send(server, reqwest::Method::POST, &signed, body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let first = probe.stored().await;
    assert_eq!(first.0, before.0 + 1, "the first delivery is stored");
    // At once, while its job waits.
    probe.replayed(server, &signed, &body, "at once").await;
    // Ten at a time.
    let deliveries = (0..10).map(|_| {
        let request = probe
            .http
            .post(&server.url)
            .header("Content-Type", "application/json")
            .body(body.clone());
        signed
            .iter()
            .fold(request, |r, (name, value)| r.header(*name, value))
            .send()
    });
    for response in futures_util::future::join_all(deliveries).await {
        assert_eq!(response.expect("replay").status(), StatusCode::OK);
    }
    probe.figures.operations += 10;
    probe.figures.inputs_tried += 10;
    assert_eq!(
        probe.stored().await,
        first,
        "concurrent replays were stored"
    );

    // The jobs run (for this one the engine reads the referral and writes the CRM record;
    // the controls name referrals that do not exist) and are deleted.
    let drained = world.runner.drain().await.expect("drain");
    assert_eq!(drained.dead, 0, "{drained:?}");
    assert_eq!(probe.stored().await.1, 0);
    probe
        .replayed(server, &signed, &body, "after its job ran")
        .await;
    // The signature moved to x-ms-signature: the same event.
    let moved = with(
        &without(&signed, "Authorization"),
        "x-ms-signature",
        &signed[0].1,
    );
    probe
        .replayed(server, &moved, &body, "via x-ms-signature")
        .await;

    // An old change date: accepted once, then the same as any replay.
    let old = event_at(&id, "2018-02-17T00:05:39.5485487+00:00");
    let old_signed = (server.sign)(&old);
    let before = probe.stored().await;
    let (status, _) = probe
        .send(server, reqwest::Method::POST, &old_signed, old.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        probe.stored().await.0,
        before.0 + 1,
        "the old event is stored once"
    );
    for _ in 0..3 {
        probe
            .replayed(server, &old_signed, &old, "with a 2018 change date")
            .await;
    }
    let drained = world.runner.drain().await.expect("drain");
    assert_eq!(drained.dead, 0, "{drained:?}");
    let names = world.names();
    assert!(
        world.crm_id_of(names.opportunity, &id).await.is_some(),
        "the replayed referral reached the CRM"
    );
    probe.control(server).await;
}

/// Seeded random corruptions of a valid request's signature or body: all 401.
async fn corruptions(probe: &mut Probe, server: &Server, seed: u64, count: usize) {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let body = event("fuzz-1");
    let signed = (server.sign)(&body);
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signed[0].1.trim_start_matches("Signature "))
        .expect("signature");
    for n in 0..count {
        let mut headers = signed.clone();
        let mut sent = body.clone();
        let flips = 1 + (next() % 3) as usize;
        if n % 2 == 0 {
            let mut corrupted = signature.clone();
            for _ in 0..flips {
                let at = (next() as usize) % corrupted.len();
                corrupted[at] ^= 1 << (next() % 8);
            }
            headers = with(
                &headers,
                "Authorization",
                &format!(
                    "Signature {}",
                    base64::engine::general_purpose::STANDARD.encode(corrupted)
                ),
            );
        } else {
            for _ in 0..flips {
                let at = (next() as usize) % sent.len();
                // Printable ASCII stays printable, so the body is still plausibly JSON.
                sent[at] = b' ' + ((sent[at] - b' ' + 1 + (next() % 90) as u8) % 95);
            }
        }
        probe
            .refused(
                server,
                &format!("random corruption #{n}"),
                401,
                &headers,
                &sent,
            )
            .await;
    }
}

async fn section(ctx: &Ctx) -> Figures {
    let world = world::world(CrmKind::Dynamics365).await;
    let store = world.engine.store().clone();
    let url = store.url().to_owned();
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("the state file's URL");
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.read_only(true))
        .await
        .expect("our own connection to the state file");
    let sink: Arc<dyn EventSink> = Arc::new(InboxSink::new(store.clone()));

    // Loopback: the engine's sandbox and a certificate server, over http.
    let certs = CertServer::start().await;
    let trusted = TestSigner::new(MICROSOFT);
    let contoso = TestSigner::new(Some("Contoso Ltd"));
    let mut anchors = parse_certificates(world.sandbox.ca_pem().as_bytes()).expect("CA");
    for pem in [&trusted.ca_pem, &contoso.ca_pem] {
        anchors.extend(parse_certificates(pem.as_bytes()).expect("test CA"));
    }
    let sandbox_host = world.base().trim_start_matches("http://").to_owned();
    let mut trust = WebhookTrust::new(anchors, vec![sandbox_host, certs.host()]);
    trust.allow_insecure_certificate_url = true;
    let certificate_url = format!("{}{CERTIFICATE_PATH}", world.base());
    let state = Arc::clone(world.sandbox.state());
    let loopback = start_server(
        "loopback",
        trust,
        Arc::clone(&sink),
        Box::new(move |body| {
            let signature =
                base64::engine::general_purpose::STANDARD.encode(state.pki.sign_rsa_sha256(body));
            vec![
                ("Authorization", format!("Signature {signature}")),
                ("X-MS-Certificate-Url", certificate_url.clone()),
                ("X-MS-Signature-Algorithm", "rsa-sha256".to_owned()),
            ]
        }),
    )
    .await;

    // Strict: https only, from a TLS sandbox, an allow-listed host and path prefix.
    let tls = sandbox::start(SandboxOptions {
        tls: true,
        ..SandboxOptions::default()
    })
    .await
    .expect("TLS sandbox");
    let tls_port: u16 = tls
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port");
    let mut trust = WebhookTrust::new(
        parse_certificates(tls.ca_pem().as_bytes()).expect("TLS sandbox CA"),
        vec![
            format!("localhost:{tls_port}"),
            "allowed.example.com".to_owned(),
        ],
    );
    trust.allowed_certificate_path_prefix = Some("/_sandbox/certificates/".to_owned());
    trust.download_root_certificates = vec![tls.ca_pem()];
    let strict_url = format!("https://localhost:{tls_port}{CERTIFICATE_PATH}");
    let tls_state = Arc::clone(tls.state());
    let strict = start_server(
        "strict",
        trust,
        Arc::clone(&sink),
        Box::new(move |body| {
            let signature = base64::engine::general_purpose::STANDARD
                .encode(tls_state.pki.sign_rsa_sha256(body));
            vec![
                ("Authorization", format!("Signature {signature}")),
                ("X-MS-Certificate-Url", strict_url.clone()),
                ("X-MS-Signature-Algorithm", "rsa-sha256".to_owned()),
            ]
        }),
    )
    .await;

    let mut probe = Probe {
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        db,
        store,
        figures: Figures::default(),
        controls: 0,
        statuses: Default::default(),
    };
    // Both servers take valid deliveries before anything hostile.
    probe.control(&loopback).await;
    probe.control(&strict).await;

    for server in [&loopback, &strict] {
        signatures(&mut probe, server).await;
        algorithms(&mut probe, server).await;
    }
    certificate_urls(&mut probe, &strict, tls_port).await;
    certificates(&mut probe, &loopback, &certs, &trusted).await;
    // The trusted CA's certificate without O=Microsoft Corporation.
    let body = event("issuer-1");
    let url = certs.put("contoso.cer", contoso.leaf_der.clone());
    probe
        .refused(
            &loopback,
            "issuer without O=Microsoft Corporation",
            401,
            &contoso.headers(&url, &body),
            &body,
        )
        .await;
    content_types(&mut probe, &strict).await;
    oversized(&mut probe, &strict).await;
    bodies(&mut probe, &loopback).await;
    replays(&mut probe, &loopback, &world).await;
    corruptions(&mut probe, &loopback, ctx.seed, ctx.pick(20, 400)).await;

    strict.handle.shutdown().await.expect("strict server stops");
    loopback
        .handle
        .shutdown()
        .await
        .expect("loopback server stops");
    tls.shutdown().await;

    let mut figures = std::mem::take(&mut probe.figures);
    let statuses: Vec<String> = probe
        .statuses
        .iter()
        .map(|(status, n)| format!("{n}× {status}"))
        .collect();
    figures.notes = vec![
        format!(
            "inputs tried = hostile webhook requests ({}); replays answered 200 and stored once",
            statuses.join(", ")
        ),
        format!(
            "operations = webhook requests sent, {} valid controls included, each stored exactly once",
            probe.controls
        ),
    ];
    figures
}
