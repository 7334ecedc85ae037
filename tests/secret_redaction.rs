//! A literal secret never reaches logs, error messages or `Debug` output.
//!
//! Alone in its test binary: tracing caches per-callsite interest process-wide, so a
//! thread-local subscriber in a binary with other concurrently running tests could miss
//! events and make this test pass for the wrong reason.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosell::config::model::Budget;
use cosell::connectors::auth::TokenSource;
use cosell::connectors::http::{Request, Upstream, UpstreamOptions};
use cosell::connectors::retry::RetryPolicy;
use cosell::connectors::{ConnectorError, Secret};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};

fn partner_center(handle: &SandboxHandle, secret: &str) -> Upstream {
    let base = handle.base_url();
    let mut options = UpstreamOptions::new("partner_center", base);
    options.allow_insecure_http = true;
    options.budget = Budget::default();
    options.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(1),
    };
    let http = cosell::connectors::http::http_client(&options).unwrap();
    let tokens = TokenSource::entra_client_credentials(
        "partner_center",
        base,
        "contoso",
        "cosell-sandbox",
        Secret::new(secret),
        "https://api.partner.microsoft.com/.default",
        http,
    );
    Upstream::new(options, Some(tokens)).unwrap()
}

/// Collects everything tracing writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_literal_secret_never_reaches_logs_or_errors() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let secret = "Sup3r-Literal-Secret-Value-7c1f";
    let upstream = partner_center(&handle, secret);
    let error = upstream
        .send(Request::get(
            "list_referrals",
            "/v1.0/engagements/referrals",
        ))
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?} {upstream:?}");
    assert!(matches!(error, ConnectorError::Auth { .. }), "{shown}");
    assert!(
        shown.contains("invalid_client"),
        "the error says why: {shown}"
    );

    // And a working client: tokens are secrets too.
    let good = partner_center(&handle, "sandbox-secret");
    good.send(Request::get(
        "list_referrals",
        "/v1.0/engagements/referrals",
    ))
    .await
    .unwrap();
    let good_debug = format!("{good:?}");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("list_referrals"),
        "logging was captured: {logs}"
    );
    for (name, text) in [("error", &shown), ("logs", &logs), ("debug", &good_debug)] {
        assert!(!text.contains(secret), "secret in {name}: {text}");
        assert!(!text.contains("sandbox-secret"), "secret in {name}: {text}");
        assert!(
            !text.contains("eyJ0eXAiOiJKV1Qi.sbx."),
            "token in {name}: {text}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_secret_from_the_config_never_reaches_logs_or_errors() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url();
    let yaml = format!(
        "version: 1\ncrm: dynamics365\nconnections:\n  partner_center:\n    base_url: \"{base}\"\n    webhook_base_url: \"{base}\"\n    allow_insecure_http: true\n    auth:\n      tenant_id: contoso\n      client_id: cosell-sandbox\n      client_secret: \"${{PC_CLIENT_SECRET}}\"\n      authority: \"{base}\"\nflows: {{}}\n"
    );
    let checked = cosell::load::check_bytes("secret.yaml", yaml.as_bytes(), &[]);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
    let config = checked.config.unwrap();
    let connection = config.connections.partner_center.as_ref().unwrap();
    let secret = "Literal-From-Config-4b9e";
    let env = |name: &str| (name == "PC_CLIENT_SECRET").then(|| secret.to_owned());
    let client =
        cosell::connectors::partner_center::PartnerCenterClient::from_config(connection, &env, &[])
            .unwrap();
    let error = client.get_referral("anything").await.unwrap_err();
    let shown = format!("{error} {error:?} {client:?} {connection:?} {config:?}");
    assert!(matches!(error, ConnectorError::Auth { .. }), "{shown}");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty());
    assert!(!shown.contains(secret), "secret in error or Debug: {shown}");
    assert!(!logs.contains(secret), "secret in logs: {logs}");
}
