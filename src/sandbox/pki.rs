//! The sandbox's own certificate authority and the certificates it issues.
//!
//! - A root CA (RSA-2048). Its subject carries `O=Microsoft Corporation` because the
//!   documented webhook verifier checks that the *issuer* of the signing certificate contains
//!   that string (partner-center-api.md §3.4); a client trusting this CA instead of the
//!   Microsoft root can then run the exact production check against the sandbox.
//! - The webhook signing certificate `CN=pcnotifications-dispatch.microsoft.com` (RSA-2048:
//!   real signatures are 256 bytes), served at `X-MS-Certificate-Url`.
//! - A TLS server certificate for `127.0.0.1`, `::1` and `localhost` (ECDSA P-256), for
//!   `--tls`.
//!
//! With a data directory everything is kept under `DIR/pki/` so a client that trusted the CA
//! once keeps trusting it across restarts; leaves are re-issued when they are about to expire
//! or no longer chain to the CA. Without one, a process-wide set is generated once and shared
//! by every in-process sandbox (RSA key generation takes a noticeable fraction of a second,
//! and test suites start many sandboxes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};

use crate::mapping::transforms::datetime::DateTime;

/// Subject common name of the sandbox root CA.
pub const CA_COMMON_NAME: &str = "cosell sandbox root CA";
/// Organization in the CA subject (and so in the signing certificate's issuer).
pub const ORGANIZATION: &str = "Microsoft Corporation";
/// Subject common name of the webhook signing certificate, as in the real certificate URL.
pub const SIGNING_COMMON_NAME: &str = "pcnotifications-dispatch.microsoft.com";

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;
/// Leaves expiring within this margin are re-issued on load.
const RENEW_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The sandbox CA and the certificates it issues. Cheap to clone internally; [`Debug`]
/// shows certificates only, never keys.
pub struct Pki {
    inner: Arc<Material>,
}

/// Certificates and keys. Keys stay in this private struct, whose Debug is hand-written.
struct Material {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    signing_der: CertificateDer<'static>,
    signing_pem: String,
    signing_key: RsaKeyPair,
    tls_der: CertificateDer<'static>,
    tls_key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca", &CA_COMMON_NAME)
            .field("ca_der_len", &self.inner.ca_der.len())
            .field("signing", &SIGNING_COMMON_NAME)
            .field("signing_der_len", &self.inner.signing_der.len())
            .field("tls_der_len", &self.inner.tls_der.len())
            .finish_non_exhaustive()
    }
}

/// The in-memory set shared by sandboxes without a data directory.
static GENERATED: OnceLock<Result<Arc<Material>, String>> = OnceLock::new();

impl Pki {
    /// With `Some(dir)`: loads the CA and leaves from `dir/pki/`, generating (and saving)
    /// whatever is missing, and re-issuing leaves that expire within a week or no longer
    /// chain to the CA. With `None`: the process-wide in-memory set.
    pub fn load_or_generate(dir: Option<&Path>) -> anyhow::Result<Pki> {
        let inner = match dir {
            Some(dir) => Arc::new(load_dir(&dir.join("pki"))?),
            None => GENERATED
                .get_or_init(|| generate_all().map(Arc::new).map_err(|e| format!("{e:#}")))
                .clone()
                .map_err(|e| anyhow!("cannot generate the sandbox PKI: {e}"))?,
        };
        Ok(Pki { inner })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        self.inner.ca_der.as_ref()
    }

    /// A rustls server configuration presenting the TLS certificate (with the CA in the
    /// chain, so clients that only trust the CA build the path without extra configuration),
    /// offering HTTP/2 and HTTP/1.1 via ALPN.
    pub fn tls_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = vec![self.inner.tls_der.clone(), self.inner.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(self.inner.tls_key.clone_key());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("TLS server certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The webhook signing certificate, DER.
    pub fn signing_certificate_der(&self) -> &[u8] {
        self.inner.signing_der.as_ref()
    }

    /// The webhook signing certificate, PEM.
    pub fn signing_certificate_pem(&self) -> String {
        self.inner.signing_pem.clone()
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `body`, with the webhook signing key: what goes,
    /// base64-encoded, after `Signature ` in the delivery's `Authorization` header.
    pub fn sign_rsa_sha256(&self, body: &[u8]) -> Vec<u8> {
        // Signing with a key that loaded cannot fail short of a library bug; an empty
        // signature then fails verification at the receiver, which is the honest outcome.
        sign(&self.inner.signing_key, body).unwrap_or_else(|error| {
            tracing::error!("webhook signing failed: {error:#}");
            Vec::new()
        })
    }
}

fn sign(key: &RsaKeyPair, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut signature = vec![0u8; key.public_modulus_len()];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    key.sign(&RSA_PKCS1_SHA256, &rng, body, &mut signature)
        .map_err(|_| anyhow!("RSA signing failed"))?;
    Ok(signature)
}

/// The CA's parameters. Rebuilt identically on load: an [`Issuer`] needs only the subject,
/// key usages and key-identifier method, so the CA certificate itself is never re-parsed.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "US");
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from a day ago (tolerates clock skew between the sandbox and its clients) until
/// `days` from now.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let date = |seconds: i64| {
        let t = DateTime::from_unix(seconds, 0);
        rcgen::date_time_ymd(t.year, t.month, t.day)
    };
    params.not_before = date(now - 86_400);
    params.not_after = date(now + days * 86_400);
}

/// A random positive 128-bit serial number, so re-issued certificates never share one.
fn random_serial() -> anyhow::Result<rcgen::SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow!("no randomness"))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn rsa_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
        .context("cannot generate an RSA-2048 key")
}

fn ca_key_from_pkcs8(der: &[u8]) -> anyhow::Result<KeyPair> {
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_RSA_SHA256)
        .context("the CA key is not an RSA PKCS#8 key")
}

/// A certificate and its private key (PKCS#8 DER), freshly issued.
struct Issued {
    der: CertificateDer<'static>,
    pem: String,
    key_pkcs8: Vec<u8>,
}

fn generate_ca() -> anyhow::Result<(Issued, KeyPair)> {
    let key = rsa_key()?;
    let mut params = ca_params();
    set_validity(&mut params, CA_DAYS);
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .context("cannot self-sign the CA")?;
    let issued = Issued {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_pkcs8: key.serialize_der(),
    };
    Ok((issued, key))
}

fn issue_signing(ca: &Issuer<'_, &KeyPair>) -> anyhow::Result<Issued> {
    let key = rsa_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(SIGNING_COMMON_NAME);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, LEAF_DAYS);
    let cert = params
        .signed_by(&key, ca)
        .context("cannot issue the signing certificate")?;
    Ok(Issued {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_pkcs8: key.serialize_der(),
    })
}

fn issue_tls(ca: &Issuer<'_, &KeyPair>) -> anyhow::Result<Issued> {
    let key = KeyPair::generate().context("cannot generate a P-256 key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("localhost");
    params.subject_alt_names = vec![
        SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into().context("SAN localhost")?),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, LEAF_DAYS);
    let cert = params
        .signed_by(&key, ca)
        .context("cannot issue the TLS certificate")?;
    Ok(Issued {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_pkcs8: key.serialize_der(),
    })
}

fn generate_all() -> anyhow::Result<Material> {
    let (ca, ca_key) = generate_ca()?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let signing = issue_signing(&issuer)?;
    let tls = issue_tls(&issuer)?;
    material(&ca, &signing, &tls)
}

fn material(ca: &Issued, signing: &Issued, tls: &Issued) -> anyhow::Result<Material> {
    let signing_key = RsaKeyPair::from_pkcs8(&signing.key_pkcs8)
        .map_err(|e| anyhow!("the signing key is not an RSA PKCS#8 key: {e}"))?;
    Ok(Material {
        ca_der: ca.der.clone(),
        ca_pem: ca.pem.clone(),
        signing_der: signing.der.clone(),
        signing_pem: signing.pem.clone(),
        signing_key,
        tls_der: tls.der.clone(),
        tls_key: PrivatePkcs8KeyDer::from(tls.key_pkcs8.clone()),
    })
}

/// Which leaf a check is about (they differ in extended key usage).
#[derive(Clone, Copy)]
enum Leaf {
    Signing,
    Tls,
}

/// Whether `leaf` chains to `ca` and is still valid a week from now.
fn leaf_is_current(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, kind: Leaf) -> bool {
    let Ok(anchor) = webpki::anchor_from_trusted_cert(ca) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let when = SystemTime::now() + RENEW_MARGIN;
    let Ok(since_epoch) = when.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let usage = match kind {
        Leaf::Tls => webpki::KeyUsage::server_auth(),
        // The signing certificate has no extended key usage; any would do.
        Leaf::Signing => webpki::KeyUsage::required_if_present(CODE_SIGNING_OID),
    };
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(since_epoch),
        usage,
        None,
        None,
    )
    .is_ok()
}

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents.
const CODE_SIGNING_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SIGNING_FILE: &str = "signing.pem";
const SIGNING_KEY_FILE: &str = "signing-key.pem";
const TLS_FILE: &str = "tls.pem";
const TLS_KEY_FILE: &str = "tls-key.pem";

fn load_dir(dir: &Path) -> anyhow::Result<Material> {
    create_private_dir(dir)?;
    let (ca, ca_key) = match load_pair(dir, CA_FILE, CA_KEY_FILE)? {
        Some(ca) => {
            let key = ca_key_from_pkcs8(&ca.key_pkcs8)
                .with_context(|| format!("{}", dir.join(CA_KEY_FILE).display()))?;
            (ca, key)
        }
        None => {
            tracing::info!("generating a new sandbox CA in {}", dir.display());
            let (ca, key) = generate_ca()?;
            save_pair(dir, CA_FILE, CA_KEY_FILE, &ca)?;
            (ca, key)
        }
    };
    let issuer = Issuer::new(ca_params(), &ca_key);

    let signing = match load_pair(dir, SIGNING_FILE, SIGNING_KEY_FILE)? {
        Some(signing)
            if leaf_is_current(&ca.der, &signing.der, Leaf::Signing)
                && signing_key_matches(&signing) =>
        {
            signing
        }
        _ => {
            tracing::info!(
                "issuing a new webhook signing certificate in {}",
                dir.display()
            );
            let signing = issue_signing(&issuer)?;
            save_pair(dir, SIGNING_FILE, SIGNING_KEY_FILE, &signing)?;
            signing
        }
    };
    let tls = match load_pair(dir, TLS_FILE, TLS_KEY_FILE)? {
        Some(tls) if leaf_is_current(&ca.der, &tls.der, Leaf::Tls) => tls,
        _ => {
            tracing::info!("issuing a new TLS certificate in {}", dir.display());
            let tls = issue_tls(&issuer)?;
            save_pair(dir, TLS_FILE, TLS_KEY_FILE, &tls)?;
            tls
        }
    };
    material(&ca, &signing, &tls)
}

/// Whether the stored signing key belongs to the stored certificate (a hand-edited
/// directory must not produce signatures nobody can verify).
fn signing_key_matches(signing: &Issued) -> bool {
    let Ok(key) = RsaKeyPair::from_pkcs8(&signing.key_pkcs8) else {
        return false;
    };
    let Ok(signature) = sign(&key, b"probe") else {
        return false;
    };
    webpki::EndEntityCert::try_from(&signing.der).is_ok_and(|cert| {
        cert.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            b"probe",
            &signature,
        )
        .is_ok()
    })
}

/// Reads `cert_file` + `key_file`; `None` when either is missing.
fn load_pair(dir: &Path, cert_file: &str, key_file: &str) -> anyhow::Result<Option<Issued>> {
    let cert_path = dir.join(cert_file);
    let key_path = dir.join(key_file);
    if !cert_path.exists() || !key_path.exists() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow!("{} is not a PEM certificate: {e}", cert_path.display()))?;
    let key_pem =
        std::fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    // The error says only which file: never echo key material.
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
        .map_err(|_| anyhow!("{} is not a PKCS#8 PEM private key", key_path.display()))?;
    Ok(Some(Issued {
        der,
        pem,
        key_pkcs8: key.secret_pkcs8_der().to_vec(),
    }))
}

fn save_pair(dir: &Path, cert_file: &str, key_file: &str, issued: &Issued) -> anyhow::Result<()> {
    let key_pem = pem_encode("PRIVATE KEY", &issued.key_pkcs8);
    write_private(&dir.join(key_file), key_pem.as_bytes())?;
    super::write_atomically(&dir.join(cert_file), issued.pem.as_bytes())
}

/// PEM with 64-character lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Like [`super::write_atomically`], but the file is created readable by its owner only
/// (0600) before any key byte is written.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_certificate_verifies_signatures_and_chains_to_the_ca() {
        let pki = Pki::load_or_generate(None).expect("pki");
        let der = CertificateDer::from(pki.signing_certificate_der().to_vec());
        let ca = CertificateDer::from(pki.ca_der().to_vec());
        assert!(leaf_is_current(&ca, &der, Leaf::Signing));
        let cert = webpki::EndEntityCert::try_from(&der).expect("parse");
        let signature = pki.sign_rsa_sha256(b"body");
        assert_eq!(signature.len(), 256);
        cert.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            b"body",
            &signature,
        )
        .expect("signature verifies");
        assert!(
            cert.verify_signature(
                webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
                b"bodY",
                &signature
            )
            .is_err()
        );
    }

    #[test]
    fn debug_does_not_print_keys() {
        let pki = Pki::load_or_generate(None).expect("pki");
        let text = format!("{pki:?}");
        assert!(!text.contains("PRIVATE"));
        assert!(text.contains("Pki"));
    }

    #[test]
    fn directory_round_trip_keeps_the_ca_and_reissues_missing_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Pki::load_or_generate(Some(dir.path())).expect("generate");
        let second = Pki::load_or_generate(Some(dir.path())).expect("load");
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(
            first.signing_certificate_der(),
            second.signing_certificate_der()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("pki").join(CA_KEY_FILE))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_file(dir.path().join("pki").join(TLS_FILE)).expect("remove");
        let third = Pki::load_or_generate(Some(dir.path())).expect("reissue");
        assert_eq!(first.ca_pem(), third.ca_pem());
        assert!(third.tls_server_config().is_ok());
        let ca = CertificateDer::from(third.ca_der().to_vec());
        assert!(leaf_is_current(&ca, &third.inner.tls_der, Leaf::Tls));
    }
}
