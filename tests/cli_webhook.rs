//! `cosell webhook register|show` as a user runs it, against the sandbox.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cosell::sandbox::webhooks::RetryPolicy;
use cosell::sandbox::{self, SandboxOptions};
use serde_json::Value;

fn write_config(dir: &Path, base: &str) -> std::path::PathBuf {
    let path = dir.join("cosell.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\ncrm: dynamics365\nconnections:\n  partner_center:\n    base_url: \"{base}\"\n    webhook_base_url: \"{base}\"\n    allow_insecure_http: true\n    auth:\n      tenant_id: contoso\n      client_id: cosell-sandbox\n      client_secret: \"${{PC_CLIENT_SECRET}}\"\n      authority: \"{base}\"\nflows: {{}}\n"
        ),
    )
    .unwrap();
    path
}

async fn cosell(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cosell"))
            .args(&args)
            .env("PC_CLIENT_SECRET", "sandbox-secret")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn receiver() -> String {
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_overwrites_and_validates_delivery() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base);
    let config = config.to_str().unwrap().to_owned();
    let url = receiver().await;

    let output = cosell(vec![
        "webhook".into(),
        "register".into(),
        "--config".into(),
        config.clone(),
        "--url".into(),
        url.clone(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("validation event delivered"), "{stdout}");

    let status: Value = reqwest::get(format!("{base}/_sandbox/webhooks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let registration = &status["registration"];
    assert_eq!(registration["WebhookUrl"], url.as_str(), "{status}");
    let events = registration["WebhookEvents"].as_array().unwrap();
    for event in [
        "referral-created",
        "referral-updated",
        "related-referral-created",
        "related-referral-updated",
    ] {
        assert!(
            events.iter().any(|e| e == event),
            "{event} missing: {status}"
        );
    }

    // A second registration replaces the first (PUT after the 409); this time the URL
    // comes from the config's `connections.webhooks.public_url`.
    let other = receiver().await;
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "flows: {}",
        &format!("  webhooks:\n    public_url: \"{other}\"\nflows: {{}}"),
    );
    std::fs::write(&config, text).unwrap();
    let output = cosell(vec![
        "webhook".into(),
        "register".into(),
        "--config".into(),
        config.clone(),
        "--no-validation".into(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = cosell(vec![
        "webhook".into(),
        "show".into(),
        "--config".into(),
        config,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.starts_with(&other), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_url_fails_the_validation() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    handle.state().webhooks.set_retry_policy(RetryPolicy {
        max_attempts: 2,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(20),
        timeout: Duration::from_secs(1),
    });
    let base = handle.base_url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base);
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let output = cosell(vec![
        "webhook".into(),
        "register".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
        "--url".into(),
        format!("http://{closed}/hook"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be delivered"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_without_partner_center_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.yaml");
    std::fs::write(&path, "version: 1\ncrm: salesforce\nflows: {}\n").unwrap();
    let output = cosell(vec![
        "webhook".into(),
        "register".into(),
        "--config".into(),
        path.to_str().unwrap().into(),
        "--url".into(),
        "https://example.com/hook".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connections.partner_center"), "{stderr}");
}
