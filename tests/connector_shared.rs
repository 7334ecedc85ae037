//! The behaviour every connector shares, proven against the sandbox over HTTP: a 429/503
//! storm completes without duplicates and within the configured concurrency and rate;
//! 401 refreshes the token once; https is required. (Secrets in logs: `tests/secret_redaction.rs`.)

use std::collections::HashSet;
use std::time::Duration;

use cosell::config::model::Budget;
use cosell::connectors::auth::TokenSource;
use cosell::connectors::http::{Request, Upstream, UpstreamOptions};
use cosell::connectors::retry::RetryPolicy;
use cosell::connectors::{ConnectorError, Secret};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use serde_json::{Value, json};

const REFERRALS_SCOPE: &str = "https://api.partner.microsoft.com/.default";

fn partner_center(handle: &SandboxHandle, budget: Budget, secret: &str) -> Upstream {
    let base = handle.base_url();
    let mut options = UpstreamOptions::new("partner_center", base);
    options.allow_insecure_http = true;
    options.budget = budget;
    options.retry = RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
    };
    let http = cosell::connectors::http::http_client(&options).unwrap();
    let tokens = TokenSource::entra_client_credentials(
        "partner_center",
        base,
        "contoso",
        "cosell-sandbox",
        Secret::new(secret),
        REFERRALS_SCOPE,
        http,
    );
    Upstream::new(options, Some(tokens)).unwrap()
}

fn referral(name: &str) -> Value {
    json!({
        "name": name,
        "type": "Independent",
        "customerProfile": { "name": "Storm Customer", "address": { "country": "NL", "postalCode": "1011" } },
        "consent": { "consentToContact": true, "consentToToShareInfoWithOthers": true },
        "details": { "dealValue": 1000, "currency": "EUR" }
    })
}

async fn control(base: &str, path: &str, body: &Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

async fn sandbox_stats(base: &str) -> Value {
    reqwest::get(format!("{base}/_sandbox/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_and_503_storm_completes_every_operation_once_within_budget() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url().to_owned();
    let budget = Budget {
        per_second: Some(100),
        concurrent: Some(8),
        ..Budget::default()
    };
    let upstream = partner_center(&handle, budget, "sandbox-secret");
    control(
        &base,
        "/_sandbox/faults",
        &json!({"partner_center": {"latency_ms": 25, "errors": [
            {"rate": 0.2, "status": 429, "retry_after_seconds": 1},
            {"rate": 0.1, "status": 503, "retry_after_seconds": 1}
        ]}}),
    )
    .await;

    let mut tasks = tokio::task::JoinSet::new();
    for name in (0..500).map(|i| format!("storm-{i:03}")) {
        let upstream = upstream.clone();
        tasks.spawn(async move {
            upstream
                .send(
                    Request::post("create_referral", "/v1.0/engagements/referrals")
                        .json(&referral(&name)),
                )
                .await
        });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        let reply = result
            .unwrap()
            .unwrap_or_else(|e| panic!("operation failed: {e}"));
        assert_eq!(reply.status, 201);
        created += 1;
    }
    assert_eq!(created, 500);

    // Nothing was created twice: exactly the 500 names, once each.
    let snapshot = handle.state().partner_center.snapshot();
    let stored: Vec<String> = snapshot["referrals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored.len(), 500, "no duplicates, no losses");
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), 500);

    // The storm really happened, and the client stayed inside its budget throughout.
    let stats = sandbox_stats(&base).await;
    let api = &stats["apis"]["partner_center"];
    let throttled = api["status"]["429"].as_u64().unwrap_or(0);
    let unavailable = api["status"]["503"].as_u64().unwrap_or(0);
    assert!(throttled > 50 && unavailable > 20, "{api}");
    // With 25 ms per call the cap is reached, so the bound is really tested.
    let in_flight = api["max_in_flight"].as_u64().unwrap();
    assert!((4..=8).contains(&in_flight), "{api}");
    assert!(api["peak_per_second"].as_u64().unwrap() <= 100, "{api}");
    let client = upstream.stats();
    assert_eq!(client.retries, throttled + unavailable, "{client:?}");
    println!(
        "storm: {} calls, {throttled} × 429, {unavailable} × 503, max in flight {}, peak {}/s",
        api["calls"], api["max_in_flight"], api["peak_per_second"]
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_succeeds() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url().to_owned();
    let upstream = partner_center(&handle, Budget::default(), "sandbox-secret");
    let list = || Request::get("list_referrals", "/v1.0/engagements/referrals");
    upstream.send(list()).await.unwrap();
    control(&base, "/_sandbox/tokens/expire", &json!({})).await;
    let reply = upstream.send(list()).await.unwrap();
    assert_eq!(reply.status, 200);
    let stats = upstream.stats();
    assert_eq!(stats.token_refreshes, 1, "{stats:?}");
    assert_eq!(
        stats.by_outcome.get("list_referrals 401"),
        Some(&1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn service_errors_are_classified_and_never_retried_when_the_request_is_wrong() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let upstream = partner_center(&handle, Budget::default(), "sandbox-secret");
    let error = upstream
        .send(
            Request::post("create_referral", "/v1.0/engagements/referrals")
                .json(&json!({"name": "no customer"})),
        )
        .await
        .unwrap_err();
    match &error {
        ConnectorError::Status {
            status: 400, code, ..
        } => assert_eq!(code.as_deref(), Some("invalidRequest")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(upstream.stats().retries, 0);
    assert_eq!(upstream.stats().requests, 1);

    let error = upstream
        .send(Request::get(
            "get_referral",
            "/v1.0/engagements/referrals/missing",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectorError::NotFound { .. }),
        "{error:?}"
    );

    // A link to another host is never followed with our token.
    let error = upstream
        .send(Request::follow(
            "list_referrals",
            "https://elsewhere.example/v1.0/engagements/referrals",
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectorError::Decode { .. }), "{error:?}");
}

#[tokio::test]
async fn production_endpoints_must_be_https() {
    let options = UpstreamOptions::new("dataverse", "http://contoso.crm.dynamics.com");
    let error = Upstream::new(options, None).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ConnectorError::Config { .. }));
    assert!(
        message.contains("https") && message.contains("allow_insecure_http"),
        "{message}"
    );
    let mut options = UpstreamOptions::new("dataverse", "http://127.0.0.1:8787");
    options.allow_insecure_http = true;
    assert!(Upstream::new(options, None).is_ok());

    // The client secret goes to the token endpoint, so it must be https too.
    let options = UpstreamOptions::new("dataverse", "https://contoso.crm.dynamics.com");
    let http = cosell::connectors::http::http_client(&options).unwrap();
    let tokens = TokenSource::entra_client_credentials(
        "dataverse",
        "http://login.example",
        "contoso",
        "client",
        Secret::new("s"),
        "https://contoso.crm.dynamics.com/.default",
        http,
    );
    let error = Upstream::new(options, Some(tokens)).unwrap_err();
    assert!(error.to_string().contains("token endpoint"), "{error}");
}
