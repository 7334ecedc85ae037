//! Authenticating Partner Center webhook deliveries, following the documented procedure
//! (partner-center-api.md §3.4) step by step:
//!
//! 1. The required headers are present: the signature (`Authorization: Signature <base64>`,
//!    or `x-ms-signature: Signature <base64>` when the registration asked for it),
//!    `x-ms-certificate-url` and `x-ms-signature-algorithm` (`rsa-sha256`).
//! 2. The certificate is downloaded from `x-ms-certificate-url` — only over https (unless
//!    the sandbox is allowed), only from an allow-listed host, never with credentials, a
//!    query or a fragment in the URL (Microsoft documents no allow-list; this is hardening).
//! 3. Its chain verifies to a configured trust anchor at the current time.
//! 4. Its issuer carries `O=Microsoft Corporation`.
//! 5. RSASSA-PKCS1-v1_5 with SHA-256 verifies over the exact raw body bytes.
//!
//! Any failure is a [`Rejection`] with the documented status and message. Differences from
//! the reference C# (`AuthorizeSignatureAttribute`), on purpose:
//! - the issuer check compares the `O` attribute of the issuer name exactly, where the C#
//!   searches the formatted issuer string (which `CN=O=Microsoft Corporation…` would pass);
//! - revocation is not checked (the C# `X509Certificate2.Verify()` does online revocation);
//! - a certificate that cannot be *downloaded* (network, HTTP status) answers 503, not 401:
//!   the sender is not at fault and Partner Center should retry, as it does after the C#
//!   throws;
//! - extended key usage is not constrained (neither does `Verify()`'s default policy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use reqwest::Url;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::config::model::WebhookSettings;
use crate::connectors::SecretEnv;
use crate::connectors::http::{UpstreamOptions, http_client};

/// The organization the signing certificate's issuer must name.
pub const MICROSOFT_ORGANIZATION: &str = "Microsoft Corporation";
/// Header carrying the signature when the registration set `SignatureTokenToMsSignatureHeader`.
pub const MS_SIGNATURE_HEADER: &str = "x-ms-signature";
/// Header carrying the signing certificate's URL.
pub const CERTIFICATE_URL_HEADER: &str = "x-ms-certificate-url";
/// Header naming the signature algorithm.
pub const SIGNATURE_ALGORITHM_HEADER: &str = "x-ms-signature-algorithm";
/// The authorization scheme of the signature token.
pub const SIGNATURE_SCHEME: &str = "Signature";

/// id-at-organizationName (2.5.4.10), DER contents.
const ORGANIZATION_OID: &[u8] = &[0x55, 0x04, 0x0a];

/// What the verifier trusts and how it downloads certificates.
#[derive(Debug, Clone)]
pub struct WebhookTrust {
    /// CA certificates (DER) the signing certificate must chain to. At least one: Microsoft's
    /// roots are not bundled.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// Hosts the certificate may come from: `host` (the scheme's default port) or
    /// `host:port`; matched exactly, ignoring ASCII case (IDNs compare in punycode).
    pub allowed_certificate_hosts: Vec<String>,
    /// When set, the certificate URL's (normalized) path must start with it.
    pub allowed_certificate_path_prefix: Option<String>,
    /// Accept `http://` certificate URLs (the local sandbox only).
    pub allow_insecure_certificate_url: bool,
    /// Extra CA certificates (PEM) trusted for the TLS connection that downloads the
    /// certificate, e.g. the sandbox CA when it serves https.
    pub download_root_certificates: Vec<String>,
    /// Download and cache bounds.
    pub limits: DownloadLimits,
}

/// Bounds on certificate downloads and the certificate cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Whole-download timeout (connect, headers and body).
    pub timeout: Duration,
    /// Largest certificate file accepted.
    pub max_bytes: usize,
    /// How long a downloaded certificate is reused.
    pub cache_ttl: Duration,
    /// Certificate URLs kept at most; the oldest goes first.
    pub cache_entries: usize,
    /// A signature that fails with a cached certificate at least this old triggers one
    /// fresh download (Microsoft may have rotated the certificate behind the same URL);
    /// younger entries are not refetched, so failures cannot force a download per request.
    pub refetch_after: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            timeout: Duration::from_secs(10),
            max_bytes: 64 * 1024,
            cache_ttl: Duration::from_secs(3600),
            cache_entries: 16,
            refetch_after: Duration::from_secs(60),
        }
    }
}

impl WebhookTrust {
    /// Trusts `trust_anchors` for certificates from `allowed_certificate_hosts`, https only,
    /// default limits.
    pub fn new(
        trust_anchors: Vec<CertificateDer<'static>>,
        allowed_certificate_hosts: Vec<String>,
    ) -> WebhookTrust {
        WebhookTrust {
            trust_anchors,
            allowed_certificate_hosts,
            allowed_certificate_path_prefix: None,
            allow_insecure_certificate_url: false,
            download_root_certificates: Vec::new(),
            limits: DownloadLimits::default(),
        }
    }

    /// The trust a `connections.webhooks` section describes. Each trust anchor entry is
    /// resolved (`${…}` references through `env`); PEM text is used as is, anything else is
    /// a path to a PEM or DER file. Fails when no anchor is configured.
    pub fn from_settings(
        settings: &WebhookSettings,
        env: SecretEnv<'_>,
    ) -> anyhow::Result<WebhookTrust> {
        let mut anchors = Vec::new();
        for (index, entry) in settings.trust_anchors.iter().enumerate() {
            let field = format!("connections.webhooks.trust_anchors[{index}]");
            let text =
                crate::connectors::resolve_text(&field, entry, env).map_err(|e| anyhow!("{e}"))?;
            let bytes = if text.contains("-----BEGIN") {
                text.into_bytes()
            } else {
                std::fs::read(&text).with_context(|| format!("{field}: cannot read {text}"))?
            };
            let certificates = parse_certificates(&bytes).map_err(|e| anyhow!("{field}: {e}"))?;
            anchors.extend(certificates);
        }
        if anchors.is_empty() {
            bail!("{}", NO_ANCHORS);
        }
        Ok(WebhookTrust {
            trust_anchors: anchors,
            allowed_certificate_hosts: settings.allowed_certificate_hosts.clone(),
            allowed_certificate_path_prefix: settings.allowed_certificate_path_prefix.clone(),
            allow_insecure_certificate_url: settings.allow_insecure_certificate_url,
            download_root_certificates: Vec::new(),
            limits: DownloadLimits::default(),
        })
    }
}

const NO_ANCHORS: &str = "connections.webhooks.trust_anchors is empty: cosell bundles no \
     Microsoft root certificates, so list the CA certificates (PEM) that issue Partner \
     Center's webhook signing certificate";

/// Certificates from a PEM file (every `CERTIFICATE` block, in order) or one DER
/// certificate.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let certificates = CertificateDer::pem_slice_iter(trimmed)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a valid PEM certificate: {e}"))?;
        if certificates.is_empty() {
            return Err("the PEM text holds no CERTIFICATE block".to_owned());
        }
        return Ok(certificates);
    }
    // DER: one SEQUENCE spanning the whole input.
    let mut input = bytes;
    match read_tlv(&mut input) {
        Some((SEQUENCE, _)) if input.is_empty() => Ok(vec![CertificateDer::from(bytes.to_vec())]),
        _ => Err("neither a PEM nor a DER certificate".to_owned()),
    }
}

/// Why a delivery was refused; the `reason` label of
/// `cosell_webhook_verification_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No `Authorization` (nor `x-ms-signature`) header.
    MissingAuthorization,
    /// The signature header's scheme is not `Signature`.
    WrongScheme,
    /// `x-ms-certificate-url` or `x-ms-signature-algorithm` is missing.
    MissingHeader,
    /// The algorithm is not `rsa-sha256`.
    UnsupportedAlgorithm,
    /// The signature token is not base64.
    MalformedSignature,
    /// The certificate URL is not https, not on an allowed host, or carries userinfo, a
    /// query or a fragment.
    CertificateUrl,
    /// The certificate could not be downloaded (network, HTTP status, size, time).
    CertificateDownload,
    /// The downloaded bytes are not a certificate.
    CertificateParse,
    /// The certificate does not chain to a trust anchor (or is expired, not yet valid, …).
    CertificateChain,
    /// The issuer is not `O=Microsoft Corporation`.
    CertificateIssuer,
    /// The signature does not match the body.
    Signature,
}

impl RejectReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingAuthorization => "missing_authorization",
            RejectReason::WrongScheme => "wrong_scheme",
            RejectReason::MissingHeader => "missing_header",
            RejectReason::UnsupportedAlgorithm => "unsupported_algorithm",
            RejectReason::MalformedSignature => "malformed_signature",
            RejectReason::CertificateUrl => "certificate_url",
            RejectReason::CertificateDownload => "certificate_download",
            RejectReason::CertificateParse => "certificate_parse",
            RejectReason::CertificateChain => "certificate_chain",
            RejectReason::CertificateIssuer => "certificate_issuer",
            RejectReason::Signature => "signature",
        }
    }
}

/// A refused delivery: the HTTP answer and, for the log, what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 401 or 503.
    pub status: StatusCode,
    /// The response body: the reference implementation's messages where it has one.
    pub message: String,
    /// The metric label.
    pub reason: RejectReason,
    /// Details for the log (never the signature or the body).
    pub detail: String,
}

impl Rejection {
    fn new(
        status: StatusCode,
        reason: RejectReason,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Rejection {
        Rejection {
            status,
            message: message.into(),
            reason,
            detail: detail.into(),
        }
    }

    fn unauthorized(reason: RejectReason, message: &str, detail: impl Into<String>) -> Rejection {
        Rejection::new(StatusCode::UNAUTHORIZED, reason, message, detail)
    }

    fn certificate(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection::unauthorized(reason, "Certificate verification failed.", detail)
    }

    fn signature(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection::unauthorized(reason, "Signature verification failed", detail)
    }
}

/// How a delivery proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBy {
    /// The certificate URL the signature verified with.
    pub certificate_url: String,
    /// `authorization` or `x-ms-signature`.
    pub signature_header: &'static str,
}

/// One allow-list entry, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// As `Url::host_str` gives it: lowercase, punycode, IPv6 in brackets.
    host: String,
    /// `None`: the default port of the URL's scheme.
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(entry: &str) -> anyhow::Result<AllowedHost> {
        let entry = entry.trim();
        if entry.is_empty() || entry.contains(['/', '@', '?', '#', '\\']) || entry.contains("://") {
            bail!("`{entry}` is not a host or host:port");
        }
        // A trailing `:digits` is a port unless it is part of a bare IPv6 address.
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.contains(':') || host.ends_with(']')) =>
            {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| anyhow!("`{entry}`: port out of range"))?;
                (host, Some(port))
            }
            _ => (entry, None),
        };
        // Normalize exactly as incoming URLs are normalized; a bare IPv6 address needs its
        // brackets for that.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = Url::parse(&format!("https://{host}/"))
            .map_err(|e| anyhow!("`{entry}` is not a host: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("`{entry}` is not a host"))?;
        Ok(AllowedHost {
            host: host.to_owned(),
            port,
        })
    }

    fn matches(&self, url: &Url) -> bool {
        let default = match url.scheme() {
            "https" => 443,
            _ => 80,
        };
        url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port.unwrap_or(default))
    }
}

/// A downloaded certificate file: the end-entity certificate first, then any intermediates
/// the file carried.
struct Cached {
    certificates: Arc<Vec<CertificateDer<'static>>>,
    fetched: Instant,
}

/// Checks webhook deliveries. Cheap to share (`Arc`); the certificate cache is inside.
pub struct WebhookVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    hosts: Vec<AllowedHost>,
    path_prefix: Option<String>,
    allow_insecure: bool,
    limits: DownloadLimits,
    client: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("trust_anchors", &self.anchors.len())
            .field("hosts", &self.hosts)
            .field("path_prefix", &self.path_prefix)
            .field("allow_insecure", &self.allow_insecure)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A verifier for `trust`. Fails without trust anchors, on an anchor that is not a CA
    /// certificate webpki can use, or on an allow-list entry that is not `host[:port]`.
    pub fn new(trust: WebhookTrust) -> anyhow::Result<WebhookVerifier> {
        if trust.trust_anchors.is_empty() {
            bail!("{}", NO_ANCHORS);
        }
        let anchors = trust
            .trust_anchors
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| {
                        anyhow!("trust anchor #{}: not a usable certificate: {e}", index + 1)
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hosts = trust
            .allowed_certificate_hosts
            .iter()
            .map(|entry| AllowedHost::parse(entry))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("allowed certificate hosts")?;
        let mut options = UpstreamOptions::new("partner_center_webhook_certificate", "");
        options.connect_timeout = trust.limits.timeout;
        options.request_timeout = trust.limits.timeout;
        options.extra_root_certificates = trust.download_root_certificates.clone();
        let client = http_client(&options).map_err(|e| anyhow!("{e}"))?;
        Ok(WebhookVerifier {
            anchors,
            hosts,
            path_prefix: trust.allowed_certificate_path_prefix,
            allow_insecure: trust.allow_insecure_certificate_url,
            limits: trust.limits,
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies one delivery: `headers` as received, `body` the exact raw bytes.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<VerifiedBy, Rejection> {
        let (signature, signature_header) = signature_token(headers)?;
        let certificate_url = required_header(headers, CERTIFICATE_URL_HEADER)?;
        let algorithm = required_header(headers, SIGNATURE_ALGORITHM_HEADER)?;
        check_algorithm(&algorithm)?;
        let url = self.check_certificate_url(&certificate_url)?;

        let (certificates, age) = self.certificates(&url).await?;
        let outcome = self.check(&certificates, body, &signature);
        let outcome = match outcome {
            // The certificate behind the URL may have been renewed since it was cached.
            Err(_) if age.is_some() && self.claim_refetch(&url) => {
                tracing::debug!("webhook signature failed with a cached certificate; refetching");
                let fresh = self.download(&url).await?;
                self.store(&url, Arc::clone(&fresh));
                self.check(&fresh, body, &signature)
            }
            other => other,
        };
        outcome.map(|()| VerifiedBy {
            certificate_url: url.to_string(),
            signature_header,
        })
    }

    /// Steps 3–5: chain, issuer, signature.
    fn check(
        &self,
        certificates: &[CertificateDer<'static>],
        body: &[u8],
        signature: &[u8],
    ) -> Result<(), Rejection> {
        let Some((leaf_der, intermediates)) = certificates.split_first() else {
            return Err(Rejection::certificate(
                RejectReason::CertificateParse,
                "no certificate",
            ));
        };
        let leaf = webpki::EndEntityCert::try_from(leaf_der).map_err(|e| {
            Rejection::certificate(
                RejectReason::CertificateParse,
                format!("unusable certificate: {e}"),
            )
        })?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            UnixTime::now(),
            AnyExtendedKeyUsage,
            None,
            None,
        )
        .map_err(|e| {
            Rejection::certificate(RejectReason::CertificateChain, format!("chain: {e}"))
        })?;

        let organizations = issuer_organizations(leaf_der.as_ref()).ok_or_else(|| {
            Rejection::certificate(RejectReason::CertificateParse, "unreadable issuer name")
        })?;
        if !organizations.iter().any(|o| o == MICROSOFT_ORGANIZATION) {
            return Err(Rejection::unauthorized(
                RejectReason::CertificateIssuer,
                "Certificate not issued by O=Microsoft Corporation.",
                format!("issuer organizations: {organizations:?}"),
            ));
        }

        leaf.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            body,
            signature,
        )
        .map_err(|e| Rejection::signature(RejectReason::Signature, format!("signature: {e}")))
    }

    /// Step 2's URL rules.
    fn check_certificate_url(&self, text: &str) -> Result<Url, Rejection> {
        check_certificate_url(
            text,
            &self.hosts,
            self.path_prefix.as_deref(),
            self.allow_insecure,
        )
        .map_err(|detail| {
            Rejection::unauthorized(
                RejectReason::CertificateUrl,
                "Certificate URL not allowed.",
                detail,
            )
        })
    }

    /// The certificates behind `url`, from the cache when fresh (with their age), else
    /// downloaded.
    async fn certificates(
        &self,
        url: &Url,
    ) -> Result<(Arc<Vec<CertificateDer<'static>>>, Option<Duration>), Rejection> {
        let key = url.as_str();
        {
            let cache = lock(&self.cache);
            if let Some(entry) = cache.get(key) {
                let age = entry.fetched.elapsed();
                if age < self.limits.cache_ttl {
                    return Ok((Arc::clone(&entry.certificates), Some(age)));
                }
            }
        }
        let certificates = self.download(url).await?;
        self.store(url, Arc::clone(&certificates));
        Ok((certificates, None))
    }

    /// Whether this request may download `url` again because a check failed with its
    /// cached certificate: yes when the entry is at least `refetch_after` old, and then the
    /// entry counts as fresh, so concurrent failures do not all download it too.
    fn claim_refetch(&self, url: &Url) -> bool {
        let mut cache = lock(&self.cache);
        match cache.get_mut(url.as_str()) {
            Some(entry) if entry.fetched.elapsed() >= self.limits.refetch_after => {
                entry.fetched = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Caches a successful download, making room by dropping expired then oldest entries.
    fn store(&self, url: &Url, certificates: Arc<Vec<CertificateDer<'static>>>) {
        let mut cache = lock(&self.cache);
        let ttl = self.limits.cache_ttl;
        cache.retain(|_, entry| entry.fetched.elapsed() < ttl);
        while cache.len() >= self.limits.cache_entries.max(1) && !cache.contains_key(url.as_str()) {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, entry)| entry.fetched)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.insert(
            url.as_str().to_owned(),
            Cached {
                certificates,
                fetched: Instant::now(),
            },
        );
    }

    /// Downloads and parses the certificate file, bounded in size and time. Failures are
    /// not cached.
    async fn download(&self, url: &Url) -> Result<Arc<Vec<CertificateDer<'static>>>, Rejection> {
        let unavailable = |detail: String| {
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                RejectReason::CertificateDownload,
                "Certificate download failed.",
                detail,
            )
        };
        let fetch = async {
            let mut response = self.client.get(url.clone()).send().await.map_err(|e| {
                unavailable(format!(
                    "GET {url}: {}",
                    crate::connectors::describe_transport(&e)
                ))
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(unavailable(format!("GET {url}: HTTP {status}")));
            }
            let too_large = || {
                unavailable(format!(
                    "GET {url}: larger than {} bytes",
                    self.limits.max_bytes
                ))
            };
            if response
                .content_length()
                .is_some_and(|length| length > self.limits.max_bytes as u64)
            {
                return Err(too_large());
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| {
                unavailable(format!(
                    "GET {url}: {}",
                    crate::connectors::describe_transport(&e)
                ))
            })? {
                if bytes.len() + chunk.len() > self.limits.max_bytes {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(self.limits.timeout, fetch)
            .await
            .map_err(|_| unavailable(format!("GET {url}: timed out")))??;
        let certificates = parse_certificates(&bytes).map_err(|e| {
            Rejection::certificate(RejectReason::CertificateParse, format!("{url}: {e}"))
        })?;
        Ok(Arc::new(certificates))
    }
}

/// Accepts any extended key usage (and none): the documented check (`X509Certificate2.Verify()`
/// with its default policy) requires none, and the purpose Microsoft's signing certificate
/// carries is not documented. A malformed extension still fails.
struct AnyExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// The signature bytes and the header they came from. `x-ms-signature` wins when present
/// (the registration asked for it); otherwise `Authorization`.
fn signature_token(headers: &HeaderMap) -> Result<(Vec<u8>, &'static str), Rejection> {
    let (value, name) = match headers.get(MS_SIGNATURE_HEADER) {
        Some(value) => (value, MS_SIGNATURE_HEADER),
        None => match headers.get(header::AUTHORIZATION) {
            Some(value) => (value, "authorization"),
            None => {
                return Err(Rejection::unauthorized(
                    RejectReason::MissingAuthorization,
                    "Authorization header missing.",
                    "no Authorization or x-ms-signature header",
                ));
            }
        },
    };
    let wrong_scheme = || {
        Rejection::unauthorized(
            RejectReason::WrongScheme,
            "Authorization scheme needs to be 'Signature'.",
            format!("{name}: the scheme is not {SIGNATURE_SCHEME}"),
        )
    };
    let text = value.to_str().map_err(|_| wrong_scheme())?.trim();
    let (scheme, token) = text.split_once(' ').ok_or_else(wrong_scheme)?;
    // Authentication schemes are case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case(SIGNATURE_SCHEME) {
        return Err(wrong_scheme());
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| {
            Rejection::signature(
                RejectReason::MalformedSignature,
                format!("{name}: the token is not base64"),
            )
        })?;
    Ok((signature, name))
}

fn required_header(headers: &HeaderMap, name: &'static str) -> Result<String, Rejection> {
    let missing = || {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            RejectReason::MissingHeader,
            format!("Request header {name} missing."),
            format!("{name} missing"),
        )
    };
    let value = headers.get(name).ok_or_else(missing)?;
    let text = value.to_str().map_err(|_| missing())?.trim();
    if text.is_empty() {
        return Err(missing());
    }
    Ok(text.to_owned())
}

/// `rsa-sha256`, any case, the only algorithm the documentation shows. The reference code
/// splits on `-` into `RSA` and a hash name; only SHA-256 is accepted here.
fn check_algorithm(algorithm: &str) -> Result<(), Rejection> {
    let parts: Vec<&str> = algorithm.split('-').collect();
    match parts.as_slice() {
        [rsa, hash] if rsa.eq_ignore_ascii_case("rsa") && hash.eq_ignore_ascii_case("sha256") => {
            Ok(())
        }
        _ => Err(Rejection::unauthorized(
            RejectReason::UnsupportedAlgorithm,
            "Signature algorithm not supported.",
            format!("algorithm `{algorithm}`"),
        )),
    }
}

/// The certificate URL rules: absolute `https` (or `http` when allowed), no userinfo,
/// query or fragment, an allow-listed host and port, and the path prefix when one is set.
/// The error says which rule failed; it names the URL without userinfo, query or fragment
/// (they could carry credentials), so it is safe to log.
fn check_certificate_url(
    text: &str,
    hosts: &[AllowedHost],
    path_prefix: Option<&str>,
    allow_insecure: bool,
) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| {
        let start: String = text.chars().take(80).collect();
        format!("`{start}` is not a URL: {e}")
    })?;
    let shown = loggable(&url);
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        other => return Err(format!("`{shown}`: scheme {other} is not allowed")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{shown}`: credentials in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{shown}`: a query or fragment is not allowed"));
    }
    if !hosts.iter().any(|allowed| allowed.matches(&url)) {
        return Err(format!("`{shown}`: host not in allowed_certificate_hosts"));
    }
    // An escaped `/`, `\\` or `.` (`%2f`, `%5c`, `%2e`) survives URL normalization, so
    // `{prefix}..%2f..%2fother` passes a prefix check while a certificate host that decodes
    // escapes before routing serves a file outside the prefix. Certificate file names need
    // no escapes (Microsoft's is `/cert/pcnotifications-dispatch.microsoft.com.cer`).
    if url.path().contains('%') {
        return Err(format!("`{shown}`: percent-escapes in the path"));
    }
    if let Some(prefix) = path_prefix
        && !url.path().starts_with(prefix)
    {
        return Err(format!("`{shown}`: path outside {prefix}"));
    }
    Ok(url)
}

/// `url` without userinfo, query and fragment, for logs.
fn loggable(url: &Url) -> String {
    let mut copy = url.clone();
    let _ = copy.set_username("");
    let _ = copy.set_password(None);
    copy.set_query(None);
    copy.set_fragment(None);
    copy.to_string()
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0]` EXPLICIT, constructed: the TBSCertificate version.
const VERSION_TAG: u8 = 0xa0;

/// Reads one DER TLV off the front of `input`: its tag and contents. Single-byte tags and
/// definite lengths up to 4 bytes only, which covers every certificate; `None` on anything
/// else or on truncation.
fn read_tlv<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, after) = rest.split_at(count);
        rest = after;
        digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    *input = after;
    Some((tag, contents))
}

/// Reads a TLV that must have tag `expected`.
fn expect<'a>(input: &mut &'a [u8], expected: u8) -> Option<&'a [u8]> {
    match read_tlv(input)? {
        (tag, contents) if tag == expected => Some(contents),
        _ => None,
    }
}

/// The issuer Name of a DER certificate, as its (attribute OID, value) pairs in order.
/// `None` when the certificate does not have the X.509 shape.
fn issuer_attributes(certificate: &[u8]) -> Option<Vec<(Vec<u8>, String)>> {
    let mut input = certificate;
    let mut certificate = expect(&mut input, SEQUENCE)?;
    let mut tbs = expect(&mut certificate, SEQUENCE)?;
    // version [0] EXPLICIT (absent in v1 certificates), serialNumber, signature.
    if tbs.first() == Some(&VERSION_TAG) {
        read_tlv(&mut tbs)?;
    }
    expect(&mut tbs, 0x02)?;
    expect(&mut tbs, SEQUENCE)?;
    let mut name = expect(&mut tbs, SEQUENCE)?;
    let mut attributes = Vec::new();
    while !name.is_empty() {
        let mut rdn = expect(&mut name, SET)?;
        while !rdn.is_empty() {
            let mut pair = expect(&mut rdn, SEQUENCE)?;
            let oid = expect(&mut pair, OID)?;
            let (tag, value) = read_tlv(&mut pair)?;
            attributes.push((oid.to_vec(), directory_string(tag, value)?));
        }
    }
    Some(attributes)
}

/// A DirectoryString (or IA5String) value as text.
fn directory_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
        // TeletexString: treated as Latin-1, as most decoders do.
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            if !value.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UTF-32BE.
        0x1c => {
            if !value.len().is_multiple_of(4) {
                return None;
            }
            value
                .chunks_exact(4)
                .map(|quad| {
                    char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))
                })
                .collect()
        }
        _ => None,
    }
}

/// The `O` values of a certificate's issuer name.
pub fn issuer_organizations(certificate: &[u8]) -> Option<Vec<String>> {
    Some(
        issuer_attributes(certificate)?
            .into_iter()
            .filter(|(oid, _)| oid == ORGANIZATION_OID)
            .map(|(_, value)| value)
            .collect(),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds no invariant a panicking holder could break.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> Vec<AllowedHost> {
        entries
            .iter()
            .map(|e| AllowedHost::parse(e).expect("entry"))
            .collect()
    }

    fn allowed(url: &str, entries: &[&str], insecure: bool) -> Result<Url, String> {
        check_certificate_url(url, &hosts(entries), None, insecure)
    }

    const MS: &str = "3psostorageacct.blob.core.windows.net";

    #[test]
    fn documented_certificate_url_is_allowed_by_default() {
        let url = format!("https://{MS}/cert/pcnotifications-dispatch.microsoft.com.cer");
        assert!(allowed(&url, &[MS], false).is_ok());
        // Explicit default port is the same origin.
        assert!(allowed(&format!("https://{MS}:443/cert/x.cer"), &[MS], false).is_ok());
        assert!(
            allowed(
                &format!("https://{MS}/cert/x.cer"),
                &[&format!("{MS}:443")],
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn host_matching_ignores_case_but_nothing_else() {
        assert!(
            allowed(
                "https://3PSOSTORAGEACCT.Blob.Core.Windows.NET/cert/x.cer",
                &[MS],
                false
            )
            .is_ok()
        );
        assert!(allowed("https://x/cert", &["X"], false).is_ok());
        // Look-alike and suffix hosts.
        assert!(
            allowed(
                &format!("https://{MS}.evil.example/cert/x.cer"),
                &[MS],
                false
            )
            .is_err()
        );
        assert!(allowed(&format!("https://evil{MS}/cert/x.cer"), &[MS], false).is_err());
        assert!(allowed("https://blob.core.windows.net/cert/x.cer", &[MS], false).is_err());
        // IDNs compare in punycode, whatever case they were written in.
        assert!(allowed("https://BÜCHER.example/c", &["bücher.example"], false).is_ok());
        assert!(
            allowed(
                "https://xn--bcher-kva.example/c",
                &["BÜCHER.example"],
                false
            )
            .is_ok()
        );
        // A trailing dot is a different name.
        assert!(allowed(&format!("https://{MS}./cert/x.cer"), &[MS], false).is_err());
    }

    #[test]
    fn ports_must_match_exactly() {
        assert!(allowed("http://127.0.0.1:8080/c", &["127.0.0.1:8080"], true).is_ok());
        assert!(allowed("http://127.0.0.1:8081/c", &["127.0.0.1:8080"], true).is_err());
        assert!(allowed("http://127.0.0.1/c", &["127.0.0.1:8080"], true).is_err());
        // A bare host means the scheme's default port only.
        assert!(allowed(&format!("https://{MS}:8443/c"), &[MS], false).is_err());
        assert!(allowed("http://[::1]:9000/c", &["[::1]:9000"], true).is_ok());
        assert!(allowed("http://[::1]/c", &["::1"], true).is_ok());
        assert!(AllowedHost::parse("host:99999").is_err());
    }

    #[test]
    fn scheme_userinfo_query_and_fragment_are_refused() {
        let entries = [MS, "127.0.0.1:8080"];
        assert!(allowed(&format!("http://{MS}/cert/x.cer"), &entries, false).is_err());
        assert!(allowed("http://127.0.0.1:8080/c", &entries, false).is_err());
        assert!(allowed("http://127.0.0.1:8080/c", &entries, true).is_ok());
        assert!(allowed(&format!("ftp://{MS}/cert/x.cer"), &entries, true).is_err());
        assert!(allowed("file:///etc/passwd", &entries, true).is_err());
        let with_user = allowed(&format!("https://user:pw@{MS}/cert/x.cer"), &entries, false);
        assert!(
            with_user.as_ref().is_err_and(|e| !e.contains("pw")),
            "{with_user:?}"
        );
        assert!(allowed(&format!("https://user@{MS}/cert/x.cer"), &entries, false).is_err());
        // `@` tricks: the real host is after the userinfo.
        assert!(allowed(&format!("https://{MS}@evil.example/x.cer"), &entries, false).is_err());
        assert!(allowed(&format!("https://{MS}/cert/x.cer?sv=1"), &entries, false).is_err());
        assert!(allowed(&format!("https://{MS}/cert/x.cer?"), &entries, false).is_err());
        assert!(allowed(&format!("https://{MS}/cert/x.cer#f"), &entries, false).is_err());
        assert!(allowed("not a url", &entries, false).is_err());
        assert!(allowed("/cert/x.cer", &entries, false).is_err());
    }

    #[test]
    fn path_prefix_applies_to_the_normalized_path() {
        let entries = hosts(&[MS]);
        let check = |url: &str| check_certificate_url(url, &entries, Some("/cert/"), false);
        assert!(check(&format!("https://{MS}/cert/x.cer")).is_ok());
        assert!(check(&format!("https://{MS}/other/x.cer")).is_err());
        assert!(check(&format!("https://{MS}/cert/../other/x.cer")).is_err());
        assert!(check(&format!("https://{MS}/cert/%2e%2e/other/x.cer")).is_err());
        // Escapes normalization keeps, which a decoding certificate host would resolve
        // outside the prefix.
        for escaped in [
            "..%2fother%2fx.cer",
            "..%5cother.cer",
            "%2e%2e%2fx.cer",
            "x%2ecer",
        ] {
            assert!(
                check(&format!("https://{MS}/cert/{escaped}")).is_err(),
                "{escaped}"
            );
        }
    }

    #[test]
    fn allow_list_entries_must_be_hosts() {
        for bad in [
            "",
            "https://example.com",
            "example.com/cert",
            "user@example.com",
            "a?b",
            "a#b",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            AllowedHost::parse("Example.COM:8443").expect("entry"),
            AllowedHost {
                host: "example.com".into(),
                port: Some(8443)
            }
        );
    }

    fn certificate_with_issuer(issuer: rcgen::DistinguishedName) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = issuer;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        params
            .signed_by(&key, &issuer)
            .expect("sign")
            .der()
            .to_vec()
    }

    #[test]
    fn issuer_organizations_are_read_from_the_der() {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CountryName, "US");
        name.push(rcgen::DnType::OrganizationName, "Microsoft Corporation");
        name.push(
            rcgen::DnType::CommonName,
            "Microsoft Azure RSA TLS Issuing CA 03",
        );
        let der = certificate_with_issuer(name);
        assert_eq!(
            issuer_organizations(&der),
            Some(vec!["Microsoft Corporation".to_owned()])
        );
        let attributes = issuer_attributes(&der).expect("issuer");
        assert_eq!(attributes.len(), 3);
        assert_eq!(attributes[2].1, "Microsoft Azure RSA TLS Issuing CA 03");

        // The organization as a substring of another attribute does not count.
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, "O=Microsoft Corporation");
        name.push(
            rcgen::DnType::OrganizationName,
            "Microsoft Corporation Evil",
        );
        let der = certificate_with_issuer(name);
        assert_eq!(
            issuer_organizations(&der),
            Some(vec!["Microsoft Corporation Evil".to_owned()])
        );

        // A BMPString value.
        let mut name = rcgen::DistinguishedName::new();
        name.push(
            rcgen::DnType::OrganizationName,
            rcgen::DnValue::BmpString(
                rcgen::string::BmpString::try_from("Microsoft Corporation").expect("bmp"),
            ),
        );
        let der = certificate_with_issuer(name);
        assert_eq!(
            issuer_organizations(&der),
            Some(vec!["Microsoft Corporation".to_owned()])
        );
    }

    #[test]
    fn malformed_der_never_panics() {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "Microsoft Corporation");
        let der = certificate_with_issuer(name);
        // Every truncation, and every single-byte corruption of the header area.
        for end in 0..der.len() {
            let _ = issuer_organizations(&der[..end]);
        }
        for position in 0..der.len().min(200) {
            let mut bad = der.clone();
            bad[position] ^= 0xff;
            let _ = issuer_organizations(&bad);
        }
        assert_eq!(issuer_organizations(&[]), None);
        assert_eq!(
            issuer_organizations(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(issuer_organizations(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(issuer_organizations(&[0x3f, 0x01, 0x00]), None);
    }

    #[test]
    fn certificates_parse_from_pem_or_der() {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "Microsoft Corporation");
        let der = certificate_with_issuer(name);
        let parsed = parse_certificates(&der).expect("der");
        assert_eq!(parsed[0].as_ref(), der.as_slice());
        let pem = format!(
            "\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let parsed = parse_certificates(pem.as_bytes()).expect("pem");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].as_ref(), der.as_slice());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(parse_certificates(&trailing).is_err());
        assert!(parse_certificates(b"hello").is_err());
        assert!(
            parse_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn signature_headers_follow_the_reference_messages() {
        let mut headers = HeaderMap::new();
        let error = signature_token(&headers).expect_err("missing");
        assert_eq!(error.status, StatusCode::UNAUTHORIZED);
        assert_eq!(error.message, "Authorization header missing.");
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("value"));
        let error = signature_token(&headers).expect_err("scheme");
        assert_eq!(
            error.message,
            "Authorization scheme needs to be 'Signature'."
        );
        headers.insert(header::AUTHORIZATION, "Signature".parse().expect("value"));
        assert_eq!(
            signature_token(&headers).expect_err("no token").reason,
            RejectReason::WrongScheme
        );
        headers.insert(
            header::AUTHORIZATION,
            "signature AQID".parse().expect("value"),
        );
        assert_eq!(
            signature_token(&headers).expect("ok"),
            (vec![1, 2, 3], "authorization")
        );
        headers.insert(
            header::AUTHORIZATION,
            "Signature !!".parse().expect("value"),
        );
        assert_eq!(
            signature_token(&headers).expect_err("base64").reason,
            RejectReason::MalformedSignature
        );
        // x-ms-signature wins when present.
        headers.insert(
            MS_SIGNATURE_HEADER,
            "Signature BAU=".parse().expect("value"),
        );
        assert_eq!(
            signature_token(&headers).expect("ok"),
            (vec![4, 5], MS_SIGNATURE_HEADER)
        );

        assert!(check_algorithm("rsa-sha256").is_ok());
        assert!(check_algorithm("RSA-SHA256").is_ok());
        for bad in ["rsa-sha1", "ecdsa-sha256", "rsa", "rsa-sha256-x", ""] {
            assert_eq!(
                check_algorithm(bad).expect_err(bad).reason,
                RejectReason::UnsupportedAlgorithm
            );
        }
        let error =
            required_header(&HeaderMap::new(), CERTIFICATE_URL_HEADER).expect_err("missing");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            error.message,
            "Request header x-ms-certificate-url missing."
        );
    }

    #[test]
    fn a_verifier_needs_trust_anchors() {
        let error = WebhookVerifier::new(WebhookTrust::new(Vec::new(), vec![MS.to_owned()]))
            .expect_err("no anchors");
        assert!(error.to_string().contains("trust_anchors"));
        let settings = WebhookSettings::default();
        assert!(WebhookTrust::from_settings(&settings, &|_| None).is_err());
    }
}
