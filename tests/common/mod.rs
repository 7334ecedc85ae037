//! Helpers shared by the integration tests: tokens from the sandbox's token endpoints and
//! control-API calls. Each test binary uses a subset.
#![allow(dead_code)]

use reqwest::StatusCode;
use serde_json::Value;

/// An Entra ID access token for `scope` (client credentials with the sandbox app).
pub async fn entra_token(base: &str, scope: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token call");
    assert_eq!(response.status(), StatusCode::OK, "token endpoint refused");
    let body: Value = response.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A Salesforce access token (client credentials with the sandbox app).
pub async fn salesforce_token(base: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cosell-sandbox"),
            ("client_secret", "sandbox-secret"),
        ])
        .send()
        .await
        .expect("token call");
    assert_eq!(response.status(), StatusCode::OK, "token endpoint refused");
    let body: Value = response.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// `POST {base}{path}` on the control API; the status and the JSON body (null when empty).
pub async fn control(base: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("control call");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A co-sell referral as a CRM would send it (the documented create example, trimmed):
/// Shared, with a solution, a customer contact and a request for Microsoft's help.
pub fn cosell_referral(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "status": "New",
        "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Shared",
        "target": [{ "type": "SolutionProfile", "id": "SOL-34104-EBB" }],
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "city": "Redmond", "state": "WA", "postalCode": "98052", "country": "US" },
            "size": "10to50employees",
            "team": [{ "firstName": "Sue", "lastName": "Smith", "email": "sue.smith@contoso.com", "phoneNumber": "1234567890" }],
            "ids": []
        },
        "consent": { "consentToToShareInfoWithOthers": true, "consentToContact": true },
        "details": {
            "notes": "Supply chain",
            "dealValue": 50000,
            "currency": "USD",
            "closingDateTime": "2027-11-14T00:00:00Z",
            "requirements": { "solutions": [{ "id": "SOL-34104-EBB", "name": "Contoso Cloud" }] }
        },
        "inviteContext": { "assistanceRequestCode": "GeneralOrOther", "notes": "Please help" }
    })
}

/// The PostgreSQL the database tests use: `COSELL_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test` (`.ci/run` starts the server).
pub fn postgres_base_url() -> String {
    std::env::var("COSELL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Runs one administrative statement (create or drop a test schema).
pub async fn postgres_admin(sql: &str) {
    let pool = sqlx::PgPool::connect(&postgres_base_url())
        .await
        .expect("connect to PostgreSQL (is it running? .ci/run starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .expect("admin statement");
    pool.close().await;
}

/// A free loopback port (bound, read, released: a process started next binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
