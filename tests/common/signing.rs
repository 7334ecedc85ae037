//! Signing webhooks with certificates of our own making, and serving those certificates:
//! shared by the webhook server tests and the reliability suite's `webhooks` section
//! (`#[path]`-included, not a test crate).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize,
};

/// Serves certificate files at `/cert/{name}` from a map the test fills.
#[derive(Clone, Default)]
pub struct CertServer {
    addr: Option<SocketAddr>,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub downloads: Arc<AtomicU32>,
}

impl CertServer {
    pub async fn start() -> CertServer {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = Arc::clone(&files);
        let downloads: Arc<AtomicU32> = Arc::default();
        let counted = Arc::clone(&downloads);
        let app = axum::Router::new().route(
            "/cert/{name}",
            axum::routing::get(
                move |axum::extract::Path(name): axum::extract::Path<String>| {
                    let served = Arc::clone(&served);
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match served.lock().expect("lock").get(&name) {
                            Some(bytes) => (axum::http::StatusCode::OK, bytes.clone()),
                            None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CertServer {
            addr: Some(addr),
            files,
            downloads,
        }
    }

    pub fn host(&self) -> String {
        self.addr.map(|a| a.to_string()).unwrap_or_default()
    }

    /// Serves `bytes` as `name`; its URL.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files
            .lock()
            .expect("lock")
            .insert(name.to_owned(), bytes);
        format!("http://{}/cert/{name}", self.host())
    }
}

/// How the signing certificate of a [`TestSigner`] is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Issued by the signer's CA, valid now.
    Issued,
    /// Issued by the signer's CA, expired in 2021.
    Expired,
    /// Issued by the signer's CA, valid only from 2090.
    NotYetValid,
    /// Self-signed (its own issuer, with the CA's organization), no CA behind it.
    SelfSigned,
    /// A CA certificate (basic constraints CA:TRUE) issued by the signer's CA.
    IssuedCa,
}

/// A test CA (ECDSA, fast to make) and an RSA-2048 signing certificate it issued.
pub struct TestSigner {
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key_der: Vec<u8>,
    pub leaf_der: Vec<u8>,
    pub leaf_pem: String,
    key: RsaKeyPair,
}

impl TestSigner {
    pub fn new(ca_organization: Option<&str>) -> TestSigner {
        TestSigner::with_leaf(ca_organization, Leaf::Issued)
    }

    pub fn with_leaf(ca_organization: Option<&str>, leaf: Leaf) -> TestSigner {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        if let Some(organization) = ca_organization {
            name.push(DnType::OrganizationName, organization);
        }
        name.push(DnType::CommonName, "test webhook CA");
        ca_params.distinguished_name = name;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        TestSigner::issue(ca_pem, ca_params, ca_key.serialize_der(), leaf)
    }

    /// Another signer whose certificate the same CA issued.
    pub fn reissue(&self, leaf: Leaf) -> TestSigner {
        TestSigner::issue(
            self.ca_pem.clone(),
            self.ca_params.clone(),
            self.ca_key_der.clone(),
            leaf,
        )
    }

    fn issue(
        ca_pem: String,
        ca_params: CertificateParams,
        ca_key_der: Vec<u8>,
        leaf: Leaf,
    ) -> TestSigner {
        let ca_key = KeyPair::try_from(ca_key_der.as_slice()).expect("CA key");
        let ca_name = ca_params.distinguished_name.clone();
        let issuer = Issuer::new(ca_params.clone(), &ca_key);
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("RSA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "pcnotifications-dispatch.microsoft.com");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match leaf {
            Leaf::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            Leaf::NotYetValid => {
                params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
            Leaf::IssuedCa => params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
            Leaf::Issued | Leaf::SelfSigned => {}
        }
        let leaf_cert = if leaf == Leaf::SelfSigned {
            // Subject = issuer name, with the organization the issuer check looks for.
            params.distinguished_name = ca_name;
            params.self_signed(&key).expect("self-signed leaf")
        } else {
            params.signed_by(&key, &issuer).expect("leaf")
        };
        TestSigner {
            ca_pem,
            ca_params,
            ca_key_der,
            leaf_der: leaf_cert.der().to_vec(),
            leaf_pem: leaf_cert.pem(),
            key: RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("RSA pkcs8"),
        }
    }

    /// The base64 RSASSA-PKCS1-v1_5 SHA-256 signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                body,
                &mut signature,
            )
            .expect("sign");
        base64::engine::general_purpose::STANDARD.encode(signature)
    }

    /// The three headers Partner Center sends: signature, certificate URL, algorithm.
    pub fn headers(&self, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        vec![
            ("Authorization", format!("Signature {}", self.sign(body))),
            ("X-MS-Certificate-Url", url.to_owned()),
            ("X-MS-Signature-Algorithm", "rsa-sha256".to_owned()),
        ]
    }
}
