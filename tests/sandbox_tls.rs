//! `--tls`: the sandbox serves HTTPS with a certificate from its own CA, valid for
//! `127.0.0.1` and `localhost`; clients trusting the CA connect, others do not.

use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use serde_json::Value;

async fn start_tls() -> SandboxHandle {
    sandbox::start(SandboxOptions {
        tls: true,
        ..SandboxOptions::default()
    })
    .await
    .expect("sandbox starts with TLS")
}

fn trusting(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .build()
        .expect("client")
}

fn port(handle: &SandboxHandle) -> u16 {
    handle
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in base URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_for_127_0_0_1_and_localhost_with_the_ca_trusted() {
    let handle = start_tls().await;
    assert!(handle.base_url().starts_with("https://127.0.0.1:"));
    let client = trusting(&handle.ca_pem());
    let port = port(&handle);
    for host in ["127.0.0.1", "localhost"] {
        let response = client
            .get(format!("https://{host}:{port}/_sandbox/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("https://{host}: {e:?}"));
        assert_eq!(response.status(), 200, "{host}");
        let info: Value = response.json().await.expect("json");
        assert_eq!(info["tls"], true);
        assert_eq!(info["base_url"], handle.base_url());
    }

    // A real API call over TLS: token, then the webhook registration API.
    let response = client
        .post(format!("{}/common/oauth2/v2.0/token", handle.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
            ("scope", "https://api.partnercenter.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token over https");
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.expect("json");
    let events = client
        .get(format!(
            "{}/webhooks/v1/registration/events",
            handle.base_url()
        ))
        .bearer_auth(token["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("events over https");
    assert_eq!(events.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_fails_without_trusting_the_ca() {
    let handle = start_tls().await;
    let port = port(&handle);

    // Platform roots only: the sandbox CA is not among them.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for host in ["127.0.0.1", "localhost"] {
        let result = untrusting
            .get(format!("https://{host}:{port}/_sandbox/"))
            .send()
            .await;
        assert!(result.is_err(), "{host} must not be trusted");
    }

    // A different CA (another data directory's) is not enough either.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other =
        cosell::sandbox::pki::Pki::load_or_generate(Some(other_dir.path())).expect("other CA");
    assert_ne!(other.ca_pem(), handle.ca_pem());
    let wrong = trusting(&other.ca_pem());
    let result = wrong
        .get(format!("https://127.0.0.1:{port}/_sandbox/"))
        .send()
        .await;
    assert!(
        result.is_err(),
        "a foreign CA must not validate the sandbox certificate"
    );

    // Plain HTTP to a TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let result = plain
        .get(format!("http://127.0.0.1:{port}/_sandbox/"))
        .send()
        .await;
    assert!(result.is_err() || result.is_ok_and(|r| r.status() != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_is_served_and_matches_the_handle() {
    let handle = start_tls().await;
    let client = trusting(&handle.ca_pem());
    let pem = client
        .get(format!("{}/_sandbox/ca.pem", handle.base_url()))
        .send()
        .await
        .expect("ca.pem")
        .text()
        .await
        .expect("text");
    assert_eq!(pem, handle.ca_pem());
    assert!(!pem.contains("PRIVATE KEY"));
}
