//! The control API under `/_sandbox/`: what a test or a curious admin uses to drive the
//! emulated world (Microsoft-side changes live in [`super::partner_center`]).
//!
//! | Call | Effect |
//! |---|---|
//! | `GET /_sandbox/` | base URL, credentials, the emulated APIs |
//! | `GET /_sandbox/stats` / `DELETE /_sandbox/stats` | call counters / zero them |
//! | `GET` / `POST` / `DELETE /_sandbox/faults` | read / merge / clear fault settings |
//! | `GET /_sandbox/ca.pem` | the sandbox CA certificate |
//! | `GET /_sandbox/webhooks` | registration, delivery log, offline queue |
//! | `POST /_sandbox/webhooks/offline/redeliver` | offline events back into the queue |
//! | `GET` / `PUT /_sandbox/webhooks/retry` | the delivery retry policy |
//! | `GET /_sandbox/certificates/pcnotifications-dispatch.cer` | the webhook signing certificate (DER; `.pem` too) |
//! | `POST /_sandbox/reset` | forget every record, counter and fault |
//! | `POST /_sandbox/seed` | `{"referrals":N,"accounts":N,"opportunities":N}` or `{"count":N}` |
//! | `POST /_sandbox/clock` | `{"advance_seconds":N}` moves the sandbox clock |
//! | `POST /_sandbox/tokens/expire` | expire every access token |
//! | `PUT /_sandbox/tokens/ttl` | `{"seconds":N}` lifetime of new tokens |
//! | `GET` / `POST` / `DELETE /_sandbox/interleave` | human edits between a read and a write ([`super::interleave`]) |

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, Sandbox, auth, json_response};

/// The control routes.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/_sandbox", get(info))
        .route("/_sandbox/", get(info))
        .route("/_sandbox/stats", get(stats).delete(clear_stats))
        .route(
            "/_sandbox/faults",
            get(faults).post(merge_faults).delete(clear_faults),
        )
        .route("/_sandbox/ca.pem", get(ca_pem))
        .route("/_sandbox/webhooks", get(webhooks))
        .route("/_sandbox/reset", post(reset))
        .route("/_sandbox/seed", post(seed))
        .route("/_sandbox/clock", post(clock))
        .route("/_sandbox/tokens/expire", post(expire_tokens))
        .route("/_sandbox/tokens/ttl", put(token_ttl))
        .merge(super::interleave::routes())
}

/// A 400 from the control API.
pub fn bad_request(message: impl Into<String>) -> Response {
    Api::Control.error(StatusCode::BAD_REQUEST, "badRequest", &message.into())
}

/// Parses a JSON body; an empty body is `{}`.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        bad_request(format!("invalid body at {path}: {}", e.inner()))
    })
}

async fn info(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let base = &sandbox.base_url;
    json_response(
        StatusCode::OK,
        &json!({
            "base_url": base,
            "tls": sandbox.options.tls,
            "credentials": {
                "client_id": auth::CLIENT_ID,
                "client_secret": auth::CLIENT_SECRET,
                "username": auth::USERNAME,
                "password": auth::PASSWORD,
                "refresh_token": auth::REFRESH_TOKEN,
            },
            "token_ttl_seconds": sandbox.auth.ttl().as_secs(),
            "apis": {
                "entra_id_token": format!("{base}/{{tenant}}/oauth2/v2.0/token"),
                "partner_center": format!("{base}/v1.0/engagements/referrals"),
                "partner_center_webhooks": format!("{base}/webhooks/v1/registration"),
                "dataverse": format!("{base}/api/data/v9.2/"),
                "salesforce_token": format!("{base}/services/oauth2/token"),
                "salesforce": format!("{base}/services/data/v59.0/"),
            },
            "scopes": {
                "partner_center": "https://api.partner.microsoft.com/.default",
                "partner_center_webhooks": "https://api.partnercenter.microsoft.com/.default",
                "dataverse": format!("{base}/.default"),
            },
        }),
    )
}

async fn stats(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let mut body = serde_json::to_value(sandbox.stats.snapshot()).unwrap_or(Value::Null);
    body["webhooks_dropped"] = json!(sandbox.faults.webhooks_dropped());
    body["faults_injected"] = json!(sandbox.faults.injected());
    body["interleaved_edits"] = json!(sandbox.interleave.applied());
    json_response(StatusCode::OK, &body)
}

async fn clear_stats(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.stats.reset();
    StatusCode::NO_CONTENT
}

async fn faults(State(sandbox): State<Arc<Sandbox>>) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(sandbox.faults.settings()).unwrap_or(Value::Null),
    )
}

async fn merge_faults(State(sandbox): State<Arc<Sandbox>>, body: axum::body::Bytes) -> Response {
    let patch: Value = match parse_body(&body) {
        Ok(patch) => patch,
        Err(response) => return response,
    };
    if !patch.is_object() {
        return bad_request("the body must be a JSON object");
    }
    match sandbox.faults.merge(&patch) {
        Ok(settings) => json_response(
            StatusCode::OK,
            &serde_json::to_value(settings).unwrap_or(Value::Null),
        ),
        Err(message) => bad_request(message),
    }
}

async fn clear_faults(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.faults.set(super::faults::FaultSettings::default());
    StatusCode::NO_CONTENT
}

async fn ca_pem(State(sandbox): State<Arc<Sandbox>>) -> Response {
    let mut response = sandbox.pki.ca_pem().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    response
}

async fn webhooks(State(sandbox): State<Arc<Sandbox>>) -> Response {
    json_response(StatusCode::OK, &sandbox.webhooks.status())
}

async fn reset(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.reset();
    StatusCode::NO_CONTENT
}

/// `POST /_sandbox/seed` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRequest {
    /// Shorthand: this many of each.
    count: Option<usize>,
    referrals: Option<usize>,
    accounts: Option<usize>,
    opportunities: Option<usize>,
}

async fn seed(State(sandbox): State<Arc<Sandbox>>, body: axum::body::Bytes) -> Response {
    let request: SeedRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let default = request.count.unwrap_or(10);
    let referrals = request.referrals.unwrap_or(default);
    let crm = request
        .accounts
        .or(request.opportunities)
        .unwrap_or(default);
    if referrals > 100_000 || crm > 100_000 {
        return bad_request("at most 100000 records per seed call");
    }
    // One generator per call, derived from the sandbox seed, so seeding is reproducible.
    let mut rng = super::Rng::new(sandbox.rng().next_u64());
    let created = sandbox.partner_center.seed(&sandbox, &mut rng, referrals);
    sandbox.dataverse.seed(&sandbox, &mut rng, crm);
    sandbox.salesforce.seed(&sandbox, &mut rng, crm);
    sandbox.changed();
    json_response(
        StatusCode::OK,
        &json!({ "referrals": created, "crm_records_per_system": crm }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance_seconds: i64,
}

async fn clock(State(sandbox): State<Arc<Sandbox>>, body: axum::body::Bytes) -> Response {
    let request: ClockRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if request.advance_seconds < 0 {
        return bad_request("advance_seconds: the clock only moves forward");
    }
    sandbox.advance_clock(request.advance_seconds);
    json_response(StatusCode::OK, &json!({ "now": sandbox.now_dataverse() }))
}

async fn expire_tokens(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.auth.expire_all();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlRequest {
    seconds: u64,
}

async fn token_ttl(State(sandbox): State<Arc<Sandbox>>, body: axum::body::Bytes) -> Response {
    let request: TtlRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    sandbox.auth.set_ttl(Duration::from_secs(request.seconds));
    StatusCode::NO_CONTENT.into_response()
}
