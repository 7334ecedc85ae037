//! The Partner Center referrals emulator over real HTTP: auth, create, get, JSON Patch,
//! eTags, transitions, OData listing and paging, Microsoft-side changes, expiry, faults,
//! counters and persistence.

use std::collections::HashSet;

mod common;

use common::{cosell_referral as outbound, entra_token as token};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PARTNER_SCOPE: &str = "https://api.partner.microsoft.com/.default";

async fn start() -> SandboxHandle {
    sandbox::start(SandboxOptions::default()).await.unwrap()
}

struct Pc {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Pc {
    async fn new(handle: &SandboxHandle) -> Pc {
        let base = handle.base_url().to_owned();
        let token = token(&base, PARTNER_SCOPE).await;
        Pc {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get_url(&self, url: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/v1.0/engagements/referrals"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn patch(
        &self,
        id: &str,
        ops: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .patch(self.url(&format!("/v1.0/engagements/referrals/{id}")))
            .bearer_auth(&self.token)
            .json(ops);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, body)
    }

    async fn control(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn calls_need_a_partner_api_token_that_has_not_expired() {
    let handle = start().await;
    let base = handle.base_url().to_owned();
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{base}/v1.0/engagements/referrals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");

    // A Dataverse token is for another audience.
    let dataverse = token(&base, &format!("{base}/.default")).await;
    let response = http
        .get(format!("{base}/v1.0/engagements/referrals"))
        .bearer_auth(&dataverse)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let pc = Pc::new(&handle).await;
    assert_eq!(
        pc.get("/v1.0/engagements/referrals").await.0,
        StatusCode::OK
    );

    // An hour later the token has expired; refreshing gives a working one.
    pc.control("/_sandbox/clock", &json!({"advance_seconds": 3601}))
        .await;
    assert_eq!(
        pc.get("/v1.0/engagements/referrals").await.0,
        StatusCode::UNAUTHORIZED
    );
    let refreshed: Value = http
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "cosell-sandbox"),
            ("refresh_token", "sandbox-refresh-token"),
            (
                "scope",
                "https://api.partner.microsoft.com/user_impersonation offline_access",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(refreshed["refresh_token"].is_string(), "{refreshed}");
    let response = http
        .get(format!("{base}/v1.0/engagements/referrals"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_endpoint_refuses_bad_credentials_like_entra() {
    let handle = start().await;
    let base = handle.base_url();
    let http = reqwest::Client::new();
    let post = |form: Vec<(&'static str, &'static str)>| {
        http.post(format!("{base}/tenant/oauth2/v2.0/token"))
            .form(&form)
            .send()
    };
    let response = post(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "cosell-sandbox"),
        ("client_secret", "wrong"),
        ("scope", PARTNER_SCOPE),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215")
    );

    let response = post(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "cosell-sandbox"),
        ("client_secret", "sandbox-secret"),
        (
            "scope",
            "https://api.partner.microsoft.com/user_impersonation",
        ),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_scope");

    let response = post(vec![
        ("grant_type", "authorization_code"),
        ("client_id", "cosell-sandbox"),
    ])
    .await
    .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn outbound_create_lands_active_accepted_with_an_etag() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (status, created) = pc.create(&outbound("Deal one")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "Active");
    assert_eq!(created["substatus"], "Accepted");
    assert_eq!(created["direction"], "Outgoing");
    assert!(created["eTag"].as_str().unwrap().starts_with('"'));
    let id = created["id"].as_str().unwrap();
    assert!(
        created["links"]["self"]["uri"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1.0/engagements/referrals/{id}"))
    );
    let (status, fetched) = pc.get(&format!("/v1.0/engagements/referrals/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["eTag"], created["eTag"]);
    assert_eq!(fetched["details"]["dealValue"], 50000);

    let (status, missing) = pc.get("/v1.0/engagements/referrals/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["code"], "itemNotFound");
}

#[tokio::test]
async fn create_rejects_what_partner_center_rejects() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "name",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("name");
            }),
        ),
        (
            "customerProfile",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("customerProfile");
            }),
        ),
        (
            "two-letter",
            Box::new(|r| r["customerProfile"]["address"]["country"] = json!("USA")),
        ),
        (
            "solution",
            Box::new(|r| {
                r["details"]["requirements"]["solutions"] = json!([]);
                r["target"] = json!([]);
            }),
        ),
        (
            "contact",
            Box::new(|r| r["customerProfile"]["team"] = json!([])),
        ),
        ("type", Box::new(|r| r["type"] = json!("Partnership"))),
        (
            "dealValue",
            Box::new(|r| r["details"]["dealValue"] = json!("lots")),
        ),
        (
            "currency",
            Box::new(|r| r["details"]["currency"] = json!("dollars")),
        ),
    ];
    for (needle, mutate) in cases {
        let mut body = outbound("Invalid");
        mutate(&mut body);
        let (status, error) = pc.create(&body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{needle}: {error}");
        assert_eq!(error["error"]["code"], "invalidRequest");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle}: {message}");
    }
    let response = pc
        .http
        .post(pc.url("/v1.0/engagements/referrals"))
        .bearer_auth(&pc.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(handle.state().partner_center.is_empty(), "nothing stored");
}

#[tokio::test]
async fn json_patch_with_etags_transitions_and_terminal_states() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (_, created) = pc.create(&outbound("Patch me")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let etag = created["eTag"].as_str().unwrap().to_owned();

    // The documented example sends the deal value as a string.
    let (status, headers, body) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/details/dealValue","value":"10000"}]),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let new_etag = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);

    // The old eTag no longer matches.
    let (status, _, body) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/details/notes","value":"late"}]),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string("../shared/fixtures/partner-center/error-precondition-failed.json")
            .unwrap_or_else(|_| {
                r#"{"error":{"code":"preconditionFailed","message":"A precondition provided in the request (such as an if-match header) does not match the resource's current state.","target":"referral"}}"#.to_owned()
            }),
    )
    .unwrap();
    assert_eq!(body, fixture);

    // Representation on request.
    let (status, _, body) = pc
        .patch(
            &id,
            &json!([{"op":"add","path":"/team/-","value":{"email":"jane.doe@contoso.com","firstName":"Jane","lastName":"Doe"}}]),
            &[("Prefer", "return=representation")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["team"][0]["email"], "jane.doe@contoso.com");
    assert_eq!(body["details"]["dealValue"], 10000);

    // Only replace and add.
    let (status, _, body) = pc
        .patch(&id, &json!([{"op":"remove","path":"/details/notes"}]), &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalidRequest");

    // Active cannot go back to New, nor pair with a Closed substatus.
    let (status, _, _) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/status","value":"New"},{"op":"replace","path":"/substatus","value":"Pending"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/substatus","value":"Won"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Won is terminal.
    let (status, _, _) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/status","value":"Closed"},{"op":"replace","path":"/substatus","value":"Won"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = pc
        .patch(
            &id,
            &json!([{"op":"replace","path":"/details/notes","value":"after"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("terminal")
    );

    let (status, _, _) = pc
        .patch(
            "missing",
            &json!([{"op":"replace","path":"/name","value":"x"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn incoming_referrals_can_be_accepted_or_declined_and_expire() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let mut incoming = outbound("From Microsoft");
    incoming.as_object_mut().unwrap().remove("status");
    incoming.as_object_mut().unwrap().remove("substatus");
    let (status, referral) = pc
        .control("/_sandbox/partner-center/referrals/incoming", &incoming)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{referral}");
    assert_eq!(referral["direction"], "Incoming");
    assert_eq!(referral["status"], "New");
    assert_eq!(referral["substatus"], "Pending");
    assert!(referral["expirationDateTime"].is_string());
    let accepted_id = referral["id"].as_str().unwrap().to_owned();
    let (status, _, _) = pc
        .patch(
            &accepted_id,
            &json!([{"op":"replace","path":"/status","value":"Active"},{"op":"replace","path":"/substatus","value":"Accepted"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (_, second) = pc
        .control("/_sandbox/partner-center/referrals/incoming", &incoming)
        .await;
    let expiring = second["id"].as_str().unwrap().to_owned();
    pc.control("/_sandbox/clock", &json!({"advance_seconds": 15 * 86_400}))
        .await;
    // Tokens expire too; take a new one.
    let pc = Pc::new(&handle).await;
    let (_, expired) = pc
        .get(&format!("/v1.0/engagements/referrals/{expiring}"))
        .await;
    assert_eq!(expired["status"], "Closed");
    assert_eq!(expired["substatus"], "Expired");
    let (_, accepted) = pc
        .get(&format!("/v1.0/engagements/referrals/{accepted_id}"))
        .await;
    assert_eq!(
        accepted["status"], "Active",
        "accepted referrals do not expire"
    );
}

#[tokio::test]
async fn microsoft_side_changes_create_a_related_referral_in_the_engagement() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (_, ours) = pc.create(&outbound("Co-sell")).await;
    let id = ours["id"].as_str().unwrap();
    let engagement = ours["engagementId"].as_str().unwrap();

    let (status, related) = pc
        .control(
            &format!("/_sandbox/partner-center/referrals/{id}/microsoft"),
            &json!({"status": "Active", "substatus": "Accepted", "microsoftMsxId": "7-2ABCDEF3G"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{related}");
    assert_eq!(related["organizationId"], "msft");
    assert_eq!(related["engagementId"], engagement);
    assert_eq!(related["trackingInfo"]["microsoftMsxId"], "7-2ABCDEF3G");
    assert_ne!(related["id"], ours["id"]);

    // Visible through the relatedReferrals link, not in the partner's own list.
    let (status, page) = pc
        .get_url(ours["links"]["relatedReferrals"]["uri"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: HashSet<&str> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{page}");
    let (_, own) = pc.get("/v1.0/engagements/referrals").await;
    assert_eq!(own["value"].as_array().unwrap().len(), 1);

    // A second change updates the same related referral; an invalid one is refused.
    let (status, again) = pc
        .control(
            &format!("/_sandbox/partner-center/referrals/{id}/microsoft"),
            &json!({"status": "Closed", "substatus": "Won"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], related["id"]);
    let (status, _) = pc
        .control(
            &format!("/_sandbox/partner-center/referrals/{id}/microsoft"),
            &json!({"dealValue": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "terminal");
    let (status, _) = pc
        .control(
            &format!("/_sandbox/partner-center/referrals/{id}/microsoft"),
            &json!({"stauts": "Active"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown field");
}

#[tokio::test]
async fn list_filters_orders_and_pages_with_skiptoken() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (status, seeded) = pc
        .control("/_sandbox/seed", &json!({"referrals": 260, "accounts": 0}))
        .await;
    assert_eq!(status, StatusCode::OK, "{seeded}");
    assert_eq!(seeded["referrals"], 260);

    // Every page follows the previous one; all 260 come back exactly once.
    let mut url = pc.url("/v1.0/engagements/referrals?$orderby=createdDateTime asc&$top=100");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = pc.get_url(&url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for referral in page["value"].as_array().unwrap() {
            seen.push((
                referral["createdDateTime"].as_str().unwrap().to_owned(),
                referral["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&pc.base) && next.contains("$skiptoken="),
                    "{next}"
                );
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 260);
    let unique: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), 260);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "ascending order");

    // Filters: the documented shapes.
    let (status, page) = pc
        .get("/v1.0/engagements/referrals?$filter=(type eq 'Shared' and direction eq 'Incoming') and status eq 'New'&$top=100")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let values = page["value"].as_array().unwrap();
    assert!(!values.is_empty());
    assert!(
        values
            .iter()
            .all(|r| r["type"] == "Shared" && r["status"] == "New")
    );

    let email = handle
        .state()
        .partner_center
        .get(handle.state(), seen[7].1.as_str())
        .unwrap()["customerProfile"]["team"][0]["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, page) = pc
        .get(&format!(
            "/v1.0/engagements/referrals?$filter=customerProfile/team/any(t:t/email eq '{email}')"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!page["value"].as_array().unwrap().is_empty());

    let (status, page) = pc
        .get("/v1.0/engagements/referrals?$filter=customerProfile/address/country eq 'XX'")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["value"], json!([]));

    for bad in [
        "$filter=status eq",
        "$filter=colour eq 'red'",
        "$orderby=name",
        "$top=0",
        "$skiptoken=garbage!",
    ] {
        let (status, body) = pc.get(&format!("/v1.0/engagements/referrals?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalidRequest");
    }
}

#[tokio::test]
async fn injected_throttling_and_resets_reach_the_client() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (status, _) = pc
        .control(
            "/_sandbox/faults",
            &json!({"partner_center": {"fail_next": 1, "status": 429, "retry_after_seconds": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = pc
        .http
        .get(pc.url("/v1.0/engagements/referrals"))
        .bearer_auth(&pc.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tooManyRequests");
    assert_eq!(
        pc.get("/v1.0/engagements/referrals").await.0,
        StatusCode::OK
    );

    pc.control(
        "/_sandbox/faults",
        &json!({"partner_center": {"reset_next": 1}}),
    )
    .await;
    let error = pc
        .http
        .get(pc.url("/v1.0/engagements/referrals"))
        .bearer_auth(&pc.token)
        .send()
        .await
        .unwrap_err();
    assert!(
        !error.is_status(),
        "the connection dropped without an answer: {error}"
    );

    let (_, stats) = pc.get_url(&pc.url("/_sandbox/stats")).await;
    let endpoint = &stats["apis"]["partner_center"]["endpoints"]["GET /v1.0/engagements/referrals"];
    assert_eq!(endpoint["status"]["200"], 1, "{stats}");
    assert_eq!(
        stats["apis"]["partner_center"]["status"]["429"], 1,
        "{stats}"
    );
    assert_eq!(
        stats["apis"]["partner_center"]["status"]["reset"], 1,
        "{stats}"
    );

    let (status, body) = pc
        .control(
            "/_sandbox/faults",
            &json!({"partner_center": {"status": 404}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn data_directory_keeps_referrals_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let options = SandboxOptions {
        data_dir: Some(dir.path().to_owned()),
        ..SandboxOptions::default()
    };
    let handle = sandbox::start(options.clone()).await.unwrap();
    let pc = Pc::new(&handle).await;
    let (_, created) = pc.create(&outbound("Kept")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    handle.shutdown().await;

    let handle = sandbox::start(options).await.unwrap();
    let pc = Pc::new(&handle).await;
    let (status, fetched) = pc.get(&format!("/v1.0/engagements/referrals/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["eTag"], created["eTag"]);
    assert_eq!(fetched["name"], "Kept");
}

/// A webhook receiver that keeps every body it gets.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = std::sync::Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = std::sync::Arc::clone(&store);
            async move {
                store
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, bodies)
}

async fn wait_for(bodies: &std::sync::Mutex<Vec<Value>>, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let seen = bodies.lock().unwrap().clone();
        if seen.len() >= count {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bodies.lock().unwrap().clone()
}

#[tokio::test]
async fn referral_changes_fire_the_registered_webhook_events() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    let (url, bodies) = receiver().await;
    let webhooks_token = token(&pc.base, "https://api.partnercenter.microsoft.com/.default").await;
    let response = pc
        .http
        .post(pc.url("/webhooks/v1/registration"))
        .bearer_auth(&webhooks_token)
        .json(&json!({
            "WebhookUrl": url,
            "WebhookEvents": ["referral-created", "referral-updated", "related-referral-created", "related-referral-updated"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let mut incoming = outbound("Shared by Microsoft");
    incoming.as_object_mut().unwrap().remove("status");
    incoming.as_object_mut().unwrap().remove("substatus");
    let (_, shared) = pc
        .control("/_sandbox/partner-center/referrals/incoming", &incoming)
        .await;
    let shared_id = shared["id"].as_str().unwrap().to_owned();
    let (status, _, _) = pc
        .patch(
            &shared_id,
            &json!([{"op":"replace","path":"/status","value":"Active"},{"op":"replace","path":"/substatus","value":"Accepted"}]),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, ours) = pc.create(&outbound("Our co-sell")).await;
    let ours_id = ours["id"].as_str().unwrap().to_owned();
    let (_, related) = pc
        .control(
            &format!("/_sandbox/partner-center/referrals/{ours_id}/microsoft"),
            &json!({"status": "Active", "substatus": "Accepted", "microsoftMsxId": "7-XYZ"}),
        )
        .await;
    let related_id = related["id"].as_str().unwrap().to_owned();

    let events = wait_for(&bodies, 4).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let uri = e["ResourceUri"].as_str().unwrap();
            (
                e["EventName"].as_str().unwrap().to_owned(),
                uri.rsplit('/').next().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("referral-created".to_owned(), shared_id.clone()),
        ("referral-updated".to_owned(), shared_id.clone()),
        ("referral-created".to_owned(), ours_id.clone()),
        ("related-referral-created".to_owned(), related_id.clone()),
    ] {
        assert!(
            summary.contains(&expected),
            "{expected:?} not in {summary:?}"
        );
    }
    assert!(events.iter().all(|e| e["ResourceName"] == "referral"));

    // The ResourceUri can be fetched verbatim.
    let uri = events
        .iter()
        .find(|e| e["EventName"] == "related-referral-created")
        .unwrap()["ResourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, fetched) = pc.get_url(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["trackingInfo"]["microsoftMsxId"], "7-XYZ");
}

#[tokio::test]
async fn stats_record_peak_concurrency_and_rate() {
    let handle = start().await;
    let pc = Pc::new(&handle).await;
    pc.control(
        "/_sandbox/faults",
        &json!({"partner_center": {"latency_ms": 200}}),
    )
    .await;
    let calls = (0..6).map(|_| pc.get("/v1.0/engagements/referrals"));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|(status, _)| *status == StatusCode::OK));
    let (_, stats) = pc.get_url(&pc.url("/_sandbox/stats")).await;
    let api = &stats["apis"]["partner_center"];
    assert_eq!(api["max_in_flight"], 6, "{api}");
    assert_eq!(api["peak_per_second"], 6, "{api}");
    assert_eq!(api["peak_per_minute"], 6, "{api}");
}
