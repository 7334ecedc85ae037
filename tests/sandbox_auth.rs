//! Token endpoints, audiences, expiry and the control API's own input checks, over HTTP;
//! plus the `cosell sandbox` binary itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::Engine as _;
use cosell::sandbox::{self, SandboxOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post_form(url: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn jwt(claims: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        engine.encode(br#"{"alg":"RS256"}"#),
        engine.encode(claims.to_string()),
        engine.encode(b"signature")
    )
}

#[tokio::test]
async fn salesforce_token_grants_and_their_errors() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url();
    let token_url = format!("{base}/services/oauth2/token");

    // Client credentials through HTTP Basic, as simple-salesforce sends them.
    let basic = base64::engine::general_purpose::STANDARD.encode("cosell-sandbox:sandbox-secret");
    let response = reqwest::Client::new()
        .post(&token_url)
        .header("authorization", format!("Basic {basic}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["instance_url"], base);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["issued_at"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(
        body.get("refresh_token").is_none(),
        "client credentials get no refresh token"
    );
    let token = body["access_token"].as_str().unwrap().to_owned();

    let response = reqwest::Client::new()
        .get(format!("{base}/services/data/v59.0/limits"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("sforce-limit-info"));

    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "password"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
            ("username", "admin@sandbox.cosell.dev"),
            ("password", "wrong"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "error_description": "authentication failure"})
    );

    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cosell-sandbox"),
            ("refresh_token", "sandbox-refresh-token"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "someone-else"),
            ("client_secret", "x"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client_id");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = json!({"iss": "cosell-sandbox", "sub": "admin@sandbox.cosell.dev", "aud": "https://login.salesforce.com", "exp": now + 180});
    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &jwt(&good)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "api");
    let mut expired = good.clone();
    expired["exp"] = json!(now - 10);
    let (status, body) = post_form(
        &token_url,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &jwt(&expired)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    let (status, body) = post_form(&token_url, &[("grant_type", "magic")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn expired_and_foreign_tokens_get_each_apis_401() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url().to_owned();
    let http = reqwest::Client::new();
    let (_, body) = post_form(
        &format!("{base}/t/oauth2/v2.0/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
            ("scope", &format!("{base}/.default")),
        ],
    )
    .await;
    let dataverse = body["access_token"].as_str().unwrap().to_owned();

    // Dataverse: 401 with a Bearer challenge and an empty body.
    let response = http
        .get(format!("{base}/api/data/v9.2/WhoAmI"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(response.text().await.unwrap(), "");

    // The Dataverse token is no good for Salesforce or the webhook API.
    let response = http
        .get(format!("{base}/services/data/v59.0/limits"))
        .bearer_auth(&dataverse)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
    let response = http
        .get(format!("{base}/webhooks/v1/registration"))
        .bearer_auth(&dataverse)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Expiring every token through the control API.
    let response = http
        .get(format!("{base}/api/data/v9.2/WhoAmI"))
        .bearer_auth(&dataverse)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = http
        .post(format!("{base}/_sandbox/tokens/expire"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = http
        .get(format!("{base}/api/data/v9.2/WhoAmI"))
        .bearer_auth(&dataverse)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // A one-second lifetime is what the next token gets.
    let response = http
        .put(format!("{base}/_sandbox/tokens/ttl"))
        .json(&json!({"seconds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (_, body) = post_form(
        &format!("{base}/t/oauth2/v2.0/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
            ("scope", "https://api.partnercenter.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(body["expires_in"], 1);
}

#[tokio::test]
async fn control_api_rejects_bad_input_and_changes_nothing() {
    let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = handle.base_url();
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/_sandbox/faults", json!({"dataverse": {"fail_nxt": 1}})),
        (
            "/_sandbox/faults",
            json!({"salesforce": {"error_rate": 2.0}}),
        ),
        ("/_sandbox/faults", json!([1, 2])),
        ("/_sandbox/clock", json!({"advance_seconds": -5})),
        ("/_sandbox/seed", json!({"referals": 3})),
        (
            "/_sandbox/partner-center/referrals/incoming",
            json!({"name": "no customer"}),
        ),
    ] {
        let response = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().is_some(), "{error}");
    }
    let faults: Value = http
        .get(format!("{base}/_sandbox/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["dataverse"]["fail_next"], 0);
    assert_eq!(faults["quota"]["dataverse_requests_per_window"], 6000);
    assert!(handle.state().partner_center.is_empty());

    let info: Value = http
        .get(format!("{base}/_sandbox/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["credentials"]["client_id"], "cosell-sandbox");
    assert_eq!(info["base_url"], base);
}

#[test]
fn the_sandbox_command_serves_until_stopped() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(["sandbox", "--listen", "127.0.0.1:0", "--seed-records", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    // Keep reading so the command never writes into a closed pipe.
    let drain = std::thread::spawn(move || lines.count());
    let base = first
        .strip_prefix("cosell sandbox listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let info: Value = runtime.block_on(async {
        reqwest::get(format!("{base}/_sandbox/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    child.kill().unwrap();
    let _ = child.wait();
    let _ = drain.join();
    assert_eq!(info["base_url"], base.as_str());
}

#[test]
fn sandbox_help_documents_every_flag_and_the_control_api() {
    let output = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(["sandbox", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--listen",
        "--tls",
        "--latency-ms",
        "--seed",
        "--data",
        "--token-ttl",
        "--seed-records",
        "/_sandbox/partner-center/referrals/incoming",
        "/_sandbox/partner-center/referrals/{id}/microsoft",
        "/_sandbox/stats",
        "/_sandbox/faults",
        "/_sandbox/ca.pem",
        "/_sandbox/reset",
        "/_sandbox/seed",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
