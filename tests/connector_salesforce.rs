//! The Salesforce client against the in-process sandbox over real HTTP: the three OAuth
//! flows, `instance_url`, sObject CRUD and upsert, SOQL paging (with a token expiring
//! mid-stream), literal escaping, `If-Unmodified-Since`, `Sforce-Limit-Info`, the daily
//! allocation, and the configuration errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cosell::config::model::{Budget, CrmAuth, CrmConnection, SecretRef};
use cosell::connectors::ConnectorError;
use cosell::connectors::Secret;
use cosell::connectors::http::Request;
use cosell::connectors::salesforce::soql::{Soql, SoqlValue};
use cosell::connectors::salesforce::{
    Lookup, QueryOptions, Record, SalesforceAuth, SalesforceClient, SalesforceSettings,
    is_entity_deleted,
};
use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};

const CLIENT_ID: &str = "cosell-sandbox";
const CLIENT_SECRET: &str = "sandbox-secret";
const REFRESH_TOKEN: &str = "sandbox-refresh-token";
const USERNAME: &str = "admin@sandbox.cosell.dev";

fn settings(login_url: &str, auth: SalesforceAuth) -> SalesforceSettings {
    let mut settings = SalesforceSettings::new(login_url, auth);
    settings.allow_insecure_http = true;
    settings
}

fn client_credentials() -> SalesforceAuth {
    SalesforceAuth::ClientCredentials {
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
    }
}

async fn sandbox() -> (SandboxHandle, SalesforceClient) {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let client = SalesforceClient::new(settings(handle.base_url(), client_credentials())).unwrap();
    (handle, client)
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

async fn control(handle: &SandboxHandle, path: &str, body: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sandbox/{path}", handle.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

async fn opportunity(client: &SalesforceClient, name: &str) -> String {
    client
        .create(
            "Opportunity",
            &fields(json!({"Name": name, "StageName": "Prospecting", "CloseDate": "2025-06-30"})),
        )
        .await
        .unwrap()
}

fn text<'a>(record: &'a Record, field: &str) -> &'a str {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A login host that only issues tokens (by asking the sandbox) and refuses everything
/// else, so every API call that works must have gone to the token's `instance_url`.
async fn login_only_proxy(sandbox_base: String) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use axum::routing::post;
    let tokens = Arc::new(AtomicUsize::new(0));
    let others = Arc::new(AtomicUsize::new(0));
    let (token_count, other_count) = (Arc::clone(&tokens), Arc::clone(&others));
    let app = axum::Router::new()
        .route(
            "/services/oauth2/token",
            post(move |body: axum::body::Bytes| {
                let base = sandbox_base.clone();
                let count = Arc::clone(&token_count);
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = reqwest::Client::new()
                        .post(format!("{base}/services/oauth2/token"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body.to_vec())
                        .send()
                        .await
                        .unwrap();
                    let status = answer.status().as_u16();
                    let text = answer.text().await.unwrap();
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        text,
                    )
                }
            }),
        )
        .fallback(move || {
            let count = Arc::clone(&other_count);
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NOT_FOUND
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), tokens, others)
}

#[tokio::test]
async fn client_credentials_take_the_api_host_from_instance_url() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let (login, tokens, others) = login_only_proxy(handle.base_url().to_owned()).await;
    assert_ne!(login, handle.base_url());
    let client = SalesforceClient::new(settings(&login, client_credentials())).unwrap();

    let id = opportunity(&client, "Via instance_url").await;
    let record = client
        .get("Opportunity", &id, &["Name"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&record, "Name"), "Via instance_url");
    assert_eq!(client.instance_url().await.unwrap(), handle.base_url());
    assert_eq!(tokens.load(Ordering::SeqCst), 1, "one token, cached");
    assert_eq!(
        others.load(Ordering::SeqCst),
        0,
        "no API call went to the login host"
    );
}

#[tokio::test]
async fn refresh_token_flow_with_and_without_the_secret() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    for client_secret in [Some(Secret::new(CLIENT_SECRET)), None] {
        let client = SalesforceClient::new(settings(
            handle.base_url(),
            SalesforceAuth::RefreshToken {
                client_id: CLIENT_ID.into(),
                client_secret,
                refresh_token: Secret::new(REFRESH_TOKEN),
            },
        ))
        .unwrap();
        let limits = client.limits().await.unwrap();
        assert!(limits["DailyApiRequests"]["Max"].as_u64().unwrap() > 0);
    }
    let wrong = SalesforceClient::new(settings(
        handle.base_url(),
        SalesforceAuth::RefreshToken {
            client_id: CLIENT_ID.into(),
            client_secret: None,
            refresh_token: Secret::new("revoked-refresh-token"),
        },
    ))
    .unwrap();
    let error = wrong.limits().await.unwrap_err();
    assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
    assert!(!error.to_string().contains("revoked-refresh-token"));
}

#[tokio::test]
async fn jwt_bearer_with_a_fresh_rsa_key() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let pem = key.serialize_pem();
    assert!(pem.contains("BEGIN PRIVATE KEY"), "PKCS#8");
    let client = SalesforceClient::new(settings(
        handle.base_url(),
        SalesforceAuth::JwtBearer {
            client_id: CLIENT_ID.into(),
            username: USERNAME.into(),
            private_key: Secret::new(pem.clone()),
        },
    ))
    .unwrap();
    let id = opportunity(&client, "JWT").await;
    assert!(client.get("Opportunity", &id, &[]).await.unwrap().is_some());

    // A user the sandbox does not know is refused by the token endpoint.
    let stranger = SalesforceClient::new(settings(
        handle.base_url(),
        SalesforceAuth::JwtBearer {
            client_id: CLIENT_ID.into(),
            username: "nobody@example.com".into(),
            private_key: Secret::new(pem),
        },
    ))
    .unwrap();
    assert!(matches!(
        stranger.limits().await,
        Err(ConnectorError::Auth { .. })
    ));

    // An unusable key fails at construction, not at the first sync.
    let broken = SalesforceClient::new(settings(
        handle.base_url(),
        SalesforceAuth::JwtBearer {
            client_id: CLIENT_ID.into(),
            username: USERNAME.into(),
            private_key: Secret::new(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            ),
        },
    ));
    assert!(matches!(broken, Err(ConnectorError::Config { .. })));
}

#[tokio::test]
async fn create_get_update_delete_and_the_two_kinds_of_missing() {
    let (_handle, client) = sandbox().await;
    let id = opportunity(&client, "CRUD").await;
    let record = client
        .get("Opportunity", &id, &["Name", "StageName"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&record, "Name"), "CRUD");
    assert!(record.get("attributes").is_none());
    assert!(record.get("Amount").is_none(), "only the fields asked for");

    client
        .update(
            "Opportunity",
            &id,
            &fields(json!({"StageName": "Qualification", "Amount": 1200.5})),
        )
        .await
        .unwrap();
    let record = client.get("Opportunity", &id, &[]).await.unwrap().unwrap();
    assert_eq!(text(&record, "StageName"), "Qualification");
    assert_eq!(record["Amount"], json!(1200.5));
    assert_eq!(text(&record, "Name"), "CRUD", "fields not sent stay");

    // Validation errors carry Salesforce's code.
    let error = client
        .create("Opportunity", &fields(json!({"Name": "no stage"})))
        .await
        .unwrap_err();
    match &error {
        ConnectorError::Status {
            status: 400, code, ..
        } => {
            assert_eq!(code.as_deref(), Some("REQUIRED_FIELD_MISSING"));
        }
        other => panic!("{other:?}"),
    }

    client.delete("Opportunity", &id).await.unwrap();
    client.delete("Opportunity", &id).await.unwrap();
    assert_eq!(
        client.fetch("Opportunity", &id, &[]).await.unwrap(),
        Lookup::Deleted
    );
    let error = client.get("Opportunity", &id, &[]).await.unwrap_err();
    assert!(is_entity_deleted(&error), "{error:?}");
    assert!(matches!(
        client
            .update("Opportunity", &id, &fields(json!({"Name": "x"})))
            .await,
        Err(ConnectorError::NotFound { .. })
    ));

    let never = "006Dn0000099999";
    assert_eq!(client.get("Opportunity", never, &[]).await.unwrap(), None);
    assert_eq!(
        client.fetch("Opportunity", never, &[]).await.unwrap(),
        Lookup::Missing
    );
    assert!(matches!(
        client.delete("Opportunity", never).await,
        Err(ConnectorError::NotFound { .. })
    ));
    // Ids and names are checked before they reach a path.
    assert!(matches!(
        client.get("Opportunity", "../limits", &[]).await,
        Err(ConnectorError::Config { .. })
    ));
    assert!(matches!(
        client.get("Opportunity/../Account", &id, &[]).await,
        Err(ConnectorError::Config { .. })
    ));
}

#[tokio::test]
async fn upsert_creates_then_updates_without_duplicates() {
    let (_handle, client) = sandbox().await;
    // `/`, `+`, `%`, `?` and spaces all travel inside one path segment.
    let referral = "REF/2024 +a%b?c";
    let body =
        fields(json!({"Name": "Upserted", "StageName": "Prospecting", "CloseDate": "2025-01-31"}));
    let first = client
        .upsert("Opportunity", "Referral_Id__c", referral, &body)
        .await
        .unwrap();
    assert!(first.created);
    let second = client
        .upsert(
            "Opportunity",
            "Referral_Id__c",
            referral,
            &fields(json!({"StageName": "Qualification"})),
        )
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.id, first.id);

    let query = Soql::select(&["Id", "Referral_Id__c", "StageName"])
        .from("Opportunity")
        .where_eq("Referral_Id__c", referral)
        .build()
        .unwrap();
    let found: Vec<Record> = client.query(&query).try_collect().await.unwrap();
    assert_eq!(found.len(), 1, "no duplicate");
    assert_eq!(text(&found[0], "Referral_Id__c"), referral);
    assert_eq!(text(&found[0], "StageName"), "Qualification");

    let by_key = client
        .get_by_external_id("Opportunity", "Referral_Id__c", referral, &["Id"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&by_key, "Id"), first.id);
    assert!(
        client
            .get_by_external_id("Opportunity", "Referral_Id__c", "unknown", &[])
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        client
            .upsert("Opportunity", "Referral_Id__c", "", &body)
            .await,
        Err(ConnectorError::Config { .. })
    ));
}

/// 650 opportunities through sObject Collections (200 a call), sent with the client's raw
/// `send` so they count like every other call.
async fn bulk_create(client: &SalesforceClient, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut made = 0;
    while made < count {
        let n = (count - made).min(200);
        let records: Vec<Value> = (made..made + n)
            .map(|i| {
                json!({"attributes": {"type": "Opportunity"}, "Name": format!("Bulk {i:04}"), "StageName": "Qualification", "CloseDate": "2025-01-31"})
            })
            .collect();
        let reply = client
            .send(
                Request::post("bulk_create", client.data_path("/composite/sobjects"))
                    .json(&json!({"allOrNone": true, "records": records})),
            )
            .await
            .unwrap();
        let results: Vec<Value> = reply.json().unwrap();
        for result in results {
            assert_eq!(result["success"], true, "{result}");
            ids.push(result["id"].as_str().unwrap().to_owned());
        }
        made += n;
    }
    ids
}

#[tokio::test]
async fn query_pages_follow_next_records_url_across_a_token_expiry() {
    let (handle, client) = sandbox().await;
    let created = bulk_create(&client, 650).await;

    let options = QueryOptions {
        batch_size: Some(200),
        include_deleted: false,
    };
    let mut records = Box::pin(client.query_with("SELECT Id, Name FROM Opportunity", options));
    let mut seen = Vec::new();
    for _ in 0..200 {
        let record = records.next().await.unwrap().unwrap();
        seen.push(text(&record, "Id").to_owned());
    }
    assert_eq!(client.stats().by_outcome.get("query 200"), Some(&1));
    assert_eq!(
        client.stats().by_outcome.get("query_more 200"),
        None,
        "lazy: one batch so far"
    );

    control(&handle, "tokens/expire", json!({})).await;
    while let Some(record) = records.next().await {
        seen.push(text(&record.unwrap(), "Id").to_owned());
    }
    assert_eq!(seen, created, "every record once, in order");
    let stats = client.stats();
    assert!(stats.token_refreshes >= 1, "{stats:?}");
    assert_eq!(stats.by_outcome.get("query_more 401"), Some(&1));
    assert_eq!(
        stats.by_outcome.get("query_more 200"),
        Some(&3),
        "batches 2–4"
    );

    // queryAll sees a deleted record, query does not.
    client.delete("Opportunity", &created[0]).await.unwrap();
    let soql = Soql::select(&["Id", "IsDeleted"])
        .from("Opportunity")
        .where_eq("Id", created[0].as_str())
        .build()
        .unwrap();
    let live: Vec<Record> = client.query(&soql).try_collect().await.unwrap();
    assert!(live.is_empty());
    let all: Vec<Record> = client.query_all(&soql).try_collect().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["IsDeleted"], json!(true));

    // A malformed query ends the stream with Salesforce's error.
    let errors: Vec<_> = client.query("SELECT Nope FROM Opportunity").collect().await;
    assert_eq!(errors.len(), 1);
    match &errors[0] {
        Err(ConnectorError::Status {
            status: 400, code, ..
        }) => {
            assert_eq!(code.as_deref(), Some("INVALID_FIELD"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn literals_with_quotes_backslashes_and_wildcards_round_trip() {
    let (_handle, client) = sandbox().await;
    let tricky = "O'Brien \\ 100% \"best\" _deal_\tdone";
    let tricky_id = client
        .create("Account", &fields(json!({"Name": tricky})))
        .await
        .unwrap();
    let decoy_id = client
        .create("Account", &fields(json!({"Name": "O Brien 1000 units"})))
        .await
        .unwrap();

    let by_name = |name: &str| {
        Soql::select(&["Id", "Name"])
            .from("Account")
            .where_eq("Name", name)
            .build()
            .unwrap()
    };
    let found: Vec<Record> = client.query(&by_name(tricky)).try_collect().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(text(&found[0], "Id"), tricky_id);
    assert_eq!(text(&found[0], "Name"), tricky);

    // Injection attempts are just names nobody has.
    for attempt in [
        "x' OR Name != '",
        "x\\' OR Name != '",
        "' OR Id != null OR Name = '",
    ] {
        let found: Vec<Record> = client.query(&by_name(attempt)).try_collect().await.unwrap();
        assert!(found.is_empty(), "{attempt}: {found:?}");
    }

    // LIKE with the wildcards escaped matches the literal text only.
    let like = Soql::select(&["Id"])
        .from("Account")
        .where_like_literal("Name", "100%")
        .build()
        .unwrap();
    let found: Vec<Record> = client.query(&like).try_collect().await.unwrap();
    let ids: HashSet<&str> = found.iter().map(|r| text(r, "Id")).collect();
    assert!(ids.contains(tricky_id.as_str()));
    assert!(
        !ids.contains(decoy_id.as_str()),
        "'100%' must not match '1000'"
    );
}

#[tokio::test]
async fn update_if_unmodified_fails_after_another_update() {
    let (handle, client) = sandbox().await;
    let id = opportunity(&client, "Concurrency").await;
    let read = client
        .get("Opportunity", &id, &["LastModifiedDate", "SystemModstamp"])
        .await
        .unwrap()
        .unwrap();
    let as_read = text(&read, "LastModifiedDate").to_owned();

    // Unchanged since the read: the conditional update goes through.
    client
        .update_if_unmodified("Opportunity", &id, &fields(json!({"Amount": 10})), &as_read)
        .await
        .unwrap();
    let mine = client
        .get("Opportunity", &id, &["LastModifiedDate"])
        .await
        .unwrap()
        .unwrap();
    let mine = text(&mine, "LastModifiedDate").to_owned();

    // Someone else updates a couple of seconds later (HTTP dates have whole seconds).
    control(&handle, "clock", json!({"advance_seconds": 2})).await;
    client
        .update("Opportunity", &id, &fields(json!({"Amount": 20})))
        .await
        .unwrap();

    let error = client
        .update_if_unmodified("Opportunity", &id, &fields(json!({"Amount": 30})), &mine)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectorError::PreconditionFailed { .. }),
        "{error:?}"
    );
    let record = client
        .get("Opportunity", &id, &["Amount"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record["Amount"].as_f64(),
        Some(20.0),
        "the stale write was not applied"
    );

    // SystemModstamp works as the token too.
    let fresh = client
        .get("Opportunity", &id, &["SystemModstamp"])
        .await
        .unwrap()
        .unwrap();
    client
        .update_if_unmodified(
            "Opportunity",
            &id,
            &fields(json!({"Amount": 30})),
            text(&fresh, "SystemModstamp"),
        )
        .await
        .unwrap();
    assert!(matches!(
        client
            .update_if_unmodified(
                "Opportunity",
                &id,
                &fields(json!({"Amount": 1})),
                "yesterday"
            )
            .await,
        Err(ConnectorError::Config { .. })
    ));
}

#[tokio::test]
async fn changed_since_lists_later_changes_oldest_first() {
    let (handle, client) = sandbox().await;
    let first = opportunity(&client, "Before").await;
    let stamp = client
        .get("Opportunity", &first, &["SystemModstamp"])
        .await
        .unwrap()
        .unwrap();
    let since = text(&stamp, "SystemModstamp").to_owned();
    control(&handle, "clock", json!({"advance_seconds": 5})).await;
    let later = opportunity(&client, "After").await;
    control(&handle, "clock", json!({"advance_seconds": 5})).await;
    let latest = opportunity(&client, "Latest").await;

    let changed: Vec<Record> = client
        .changed_since("Opportunity", &["Name"], &since)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = changed.iter().map(|r| text(r, "Id")).collect();
    let at = |id: &str| ids.iter().position(|i| *i == id);
    assert!(at(&later).unwrap() < at(&latest).unwrap(), "{ids:?}");
    let stamps: Vec<&str> = changed.iter().map(|r| text(r, "SystemModstamp")).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(changed.iter().all(|r| r.contains_key("Name")));
    assert!(
        client
            .changed_since("Opportunity", &["Name"], "not a date")
            .is_err()
    );
}

#[tokio::test]
async fn limit_info_is_read_from_every_reply() {
    let (_handle, client) = sandbox().await;
    assert_eq!(client.last_api_usage(), None);
    client.limits().await.unwrap();
    let (used, limit) = client.last_api_usage().unwrap();
    assert_eq!(limit, 100_000);
    opportunity(&client, "Counted").await;
    let (after, _) = client.last_api_usage().unwrap();
    assert_eq!(after, used + 1);
}

#[tokio::test]
async fn request_limit_exceeded_is_budget_exhaustion() {
    let (handle, client) = sandbox().await;
    control(
        &handle,
        "faults",
        json!({"quota": {"salesforce_daily_requests": 3}}),
    )
    .await;
    for _ in 0..3 {
        client.limits().await.unwrap();
    }
    let error = client.limits().await.unwrap_err();
    assert!(
        matches!(error, ConnectorError::BudgetExhausted { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(client.last_api_usage(), Some((3, 3)));
}

#[tokio::test]
async fn insecure_urls_and_missing_credentials_are_config_errors() {
    let http = SalesforceSettings::new("http://login.example.com", client_credentials());
    match SalesforceClient::new(http) {
        Err(ConnectorError::Config { message }) => assert!(message.contains("https"), "{message}"),
        other => panic!("{other:?}"),
    }
    let mut bad_version = settings("https://login.salesforce.com", client_credentials());
    bad_version.api_version = "latest".into();
    assert!(matches!(
        SalesforceClient::new(bad_version),
        Err(ConnectorError::Config { .. })
    ));

    let handle = start(SandboxOptions::default()).await.unwrap();
    let connection = |auth: CrmAuth| CrmConnection {
        base_url: "${SF_LOGIN}".into(),
        api_version: Some("v59.0".into()),
        auth,
        budget: Budget::default(),
        allow_insecure_http: true,
        timeout_seconds: None,
    };
    let auth = CrmAuth {
        tenant_id: None,
        client_id: CLIENT_ID.into(),
        client_secret: None,
        refresh_token: None,
        private_key: None,
        username: None,
        authority: None,
    };
    let vars: HashMap<&str, String> = HashMap::from([
        ("SF_LOGIN", handle.base_url().to_owned()),
        ("SF_SECRET", CLIENT_SECRET.to_owned()),
        ("SF_KEY", "not a key".to_owned()),
    ]);
    let env = |name: &str| vars.get(name).cloned();

    let missing = SalesforceClient::from_config(&connection(auth.clone()), &env, &[]).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("connections.crm.auth.client_secret"),
        "{missing}"
    );
    let no_user = SalesforceClient::from_config(
        &connection(CrmAuth {
            private_key: Some(SecretRef("${SF_KEY}".into())),
            ..auth.clone()
        }),
        &env,
        &[],
    )
    .unwrap_err();
    assert!(
        no_user
            .to_string()
            .contains("connections.crm.auth.username"),
        "{no_user}"
    );
    let unset = SalesforceClient::from_config(
        &connection(CrmAuth {
            client_secret: Some(SecretRef("${SF_UNSET}".into())),
            ..auth.clone()
        }),
        &env,
        &[],
    )
    .unwrap_err();
    assert!(unset.to_string().contains("SF_UNSET"), "{unset}");

    let client = SalesforceClient::from_config(
        &connection(CrmAuth {
            client_secret: Some(SecretRef("${SF_SECRET}".into())),
            ..auth
        }),
        &env,
        &[],
    )
    .unwrap();
    assert_eq!(client.api_version(), "59.0");
    client.limits().await.unwrap();
    assert!(!format!("{client:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_error_that_does_not_show_it() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let secret = "wrong-secret-7f3a9c";
    let client = SalesforceClient::new(settings(
        handle.base_url(),
        SalesforceAuth::ClientCredentials {
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(secret),
        },
    ))
    .unwrap();
    let error = client
        .get("Opportunity", "006Dn0000099999", &[])
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert!(!error.to_string().contains(secret));
    assert!(!format!("{error:?}").contains(secret));
    assert!(!format!("{client:?}").contains(secret));
}

#[tokio::test]
async fn soql_datetime_literals_filter_like_salesforce() {
    let (_handle, client) = sandbox().await;
    let id = opportunity(&client, "Dated").await;
    let query = Soql::select(&["Id"])
        .from("Opportunity")
        .where_gt(
            "CreatedDate",
            SoqlValue::datetime("2000-01-01T00:00:00+00:00").unwrap(),
        )
        .filter(
            "CloseDate",
            cosell::connectors::salesforce::soql::Op::Eq,
            SoqlValue::date("2025-06-30").unwrap(),
        )
        .where_eq("IsDeleted", false)
        .build()
        .unwrap();
    let found: Vec<Record> = client.query(&query).try_collect().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(text(&found[0], "Id"), id);
}
