//! The Dataverse client against the in-process sandbox over real HTTP: every operation,
//! paging, token expiry mid-stream, eTags, upserts, lookups, currencies, change polling,
//! change tracking, throttling and configuration errors.

use std::collections::BTreeMap;

use cosell::config::model::{Budget, CrmAuth, CrmConnection, SecretRef};
use cosell::connectors::dataverse::{
    AlternateKey, ChangeTrackingError, DataverseClient, DataverseSettings, QueryOptions, Row, bind,
    odata_string,
};
use cosell::connectors::{ConnectorError, Secret};
use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::{Map, Value, json};

const USD: &str = "7a5e1c2d-0000-4000-8000-000000000001";
const EUR: &str = "7a5e1c2d-0000-4000-8000-000000000002";

struct Env {
    handle: SandboxHandle,
    base: String,
    http: reqwest::Client,
}

impl Env {
    async fn start() -> Env {
        let handle = start(SandboxOptions::default()).await.unwrap();
        let base = handle.base_url().to_owned();
        Env {
            handle,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn settings(&self) -> DataverseSettings {
        let mut settings = DataverseSettings::new(
            self.base.clone(),
            "contoso-tenant",
            "cosell-sandbox",
            Secret::new("sandbox-secret"),
        );
        settings.authority = self.base.clone();
        settings.allow_insecure_http = true;
        settings
    }

    fn client(&self) -> DataverseClient {
        DataverseClient::new(self.settings()).unwrap()
    }

    async fn control(&self, path: &str, body: Value) {
        let reply = self
            .http
            .post(format!("{}/_sandbox/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "{path}: {}", reply.status());
    }

    /// Dataverse calls the sandbox has served so far.
    async fn dataverse_calls(&self) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["apis"]["dataverse"]["calls"].as_u64().unwrap_or(0)
    }
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

async fn account(client: &DataverseClient, name: &str) -> String {
    client
        .create("accounts", &fields(json!({ "name": name })))
        .await
        .unwrap()
}

async fn collect(
    stream: impl futures_util::Stream<Item = Result<Row, ConnectorError>>,
) -> Vec<Row> {
    stream.try_collect().await.unwrap()
}

#[tokio::test]
async fn create_retrieve_update_delete_round_trip() {
    let env = Env::start().await;
    let client = env.client();

    let id = account(&client, "Contoso").await;
    let row = client
        .retrieve("accounts", &id, &["name", "accountid"])
        .await
        .unwrap()
        .expect("the row exists");
    assert_eq!(row.id.as_deref(), Some(id.as_str()));
    assert_eq!(row.str("name"), Some("Contoso"));
    let etag = row.etag.clone().expect("rows carry an eTag");
    assert!(etag.starts_with("W/\""), "{etag}");

    // create_returning: 201 with the stored row.
    let created = client
        .create_returning(
            "accounts",
            &fields(json!({ "name": "Fabrikam", "telephone1": "555" })),
            &["name", "telephone1"],
        )
        .await
        .unwrap();
    assert_eq!(created.str("name"), Some("Fabrikam"));
    assert!(created.id.is_some() && created.etag.is_some());

    // Update with the current eTag succeeds; the old eTag is then stale → 412.
    client
        .update(
            "accounts",
            &id,
            &fields(json!({ "name": "Contoso Ltd" })),
            Some(&etag),
        )
        .await
        .unwrap();
    let error = client
        .update(
            "accounts",
            &id,
            &fields(json!({ "name": "Lost update" })),
            Some(&etag),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectorError::PreconditionFailed { .. }),
        "{error:?}"
    );
    let row = client
        .retrieve("accounts", &id, &["name"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.str("name"), Some("Contoso Ltd"));
    assert_ne!(row.etag.as_deref(), Some(etag.as_str()));

    // Delete; then the row is gone, a retrieve says None and an update never recreates it.
    assert!(client.delete("accounts", &id, None).await.unwrap());
    assert!(!client.delete("accounts", &id, None).await.unwrap());
    assert!(
        client
            .retrieve("accounts", &id, &[])
            .await
            .unwrap()
            .is_none()
    );
    let error = client
        .update("accounts", &id, &fields(json!({ "name": "Zombie" })), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectorError::NotFound { .. }),
        "{error:?}"
    );
    assert!(
        client
            .retrieve("accounts", &id, &[])
            .await
            .unwrap()
            .is_none()
    );

    // An unknown entity set is an error, not a missing row.
    let error = client.retrieve("acounts", &id, &[]).await.unwrap_err();
    assert!(
        matches!(error, ConnectorError::NotFound { .. }),
        "{error:?}"
    );

    // Service errors carry the service's code and message.
    let error = client
        .create("accounts", &fields(json!({ "nosuchcolumn": 1 })))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.to_string().contains("nosuchcolumn"), "{error}");

    // Every request carried the token, and the stats name the operations.
    let stats = client.stats();
    assert!(stats.by_outcome.contains_key("create_row 204"), "{stats:?}");
    assert!(stats.by_outcome.contains_key("update_row 412"), "{stats:?}");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn upsert_by_referral_id_twice_leaves_one_row() {
    let env = Env::start().await;
    let client = env.client();
    let customer = account(&client, "Northwind").await;
    let key = AlternateKey::new("cosell_referralid", "REF-O'Neil/42");
    let body = |name: &str| {
        fields(json!({
            "name": name,
            "customerid_account@odata.bind": bind("accounts", &customer),
        }))
    };

    let first = client
        .upsert_returning(
            "opportunities",
            &key,
            &body("Deal v1"),
            &["name", "cosell_referralid"],
        )
        .await
        .unwrap();
    assert_eq!(first.created, Some(true));
    let id = first.id.clone().expect("the representation names the row");
    assert_eq!(
        first.row.as_ref().and_then(|r| r.str("cosell_referralid")),
        Some("REF-O'Neil/42")
    );

    let second = client
        .upsert_returning("opportunities", &key, &body("Deal v2"), &["name"])
        .await
        .unwrap();
    assert_eq!(second.created, Some(false));
    assert_eq!(second.id.as_deref(), Some(id.as_str()));

    // A plain upsert (204) updates the same row again.
    let third = client
        .upsert("opportunities", &key, &body("Deal v3"))
        .await
        .unwrap();
    assert_eq!(third.created, None);

    let rows = collect(client.query(
        "opportunities",
        QueryOptions {
            select: vec!["name".into(), "cosell_referralid".into()],
            filter: Some(format!(
                "cosell_referralid eq {}",
                odata_string("REF-O'Neil/42")
            )),
            ..QueryOptions::default()
        },
    ))
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(rows[0].str("name"), Some("Deal v3"));

    let by_key = client
        .retrieve_by_key("opportunities", &key, &["name"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_key.id.as_deref(), Some(id.as_str()));
    assert!(
        client
            .retrieve_by_key(
                "opportunities",
                &AlternateKey::new("cosell_referralid", "none"),
                &[]
            )
            .await
            .unwrap()
            .is_none()
    );
    env.handle.shutdown().await;
}

#[tokio::test]
async fn lookups_bind_and_read_back_as_value_properties() {
    let env = Env::start().await;
    let client = env.client();
    let customer = account(&client, "Adventure Works").await;
    let eur = client.currency_id("EUR").await.unwrap().unwrap();
    let id = client
        .create(
            "opportunities",
            &fields(json!({
                "name": "Bound deal",
                "customerid_account@odata.bind": bind("accounts", &customer),
                "transactioncurrencyid@odata.bind": bind("transactioncurrencies", &eur),
            })),
        )
        .await
        .unwrap();
    let row = client
        .retrieve(
            "opportunities",
            &id,
            &["name", "_customerid_value", "_transactioncurrencyid_value"],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.lookup("customerid"), Some(customer.as_str()));
    assert_eq!(row.lookup("transactioncurrencyid"), Some(EUR));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn currencies_are_found_by_iso_code_and_cached() {
    let env = Env::start().await;
    let client = env.client();
    assert_eq!(
        client.currency_id("EUR").await.unwrap().as_deref(),
        Some(EUR)
    );
    let calls = env.dataverse_calls().await;
    let requests = client.stats().requests;
    // Cached: no HTTP call for the second lookup, whatever the case of the code.
    assert_eq!(
        client.currency_id("eur").await.unwrap().as_deref(),
        Some(EUR)
    );
    assert_eq!(env.dataverse_calls().await, calls);
    assert_eq!(client.stats().requests, requests);
    // Clones share the cache.
    assert_eq!(
        client.clone().currency_id("EUR").await.unwrap().as_deref(),
        Some(EUR)
    );
    assert_eq!(client.stats().requests, requests);

    assert_eq!(
        client.currency_id("USD").await.unwrap().as_deref(),
        Some(USD)
    );
    assert_eq!(client.currency_id("XXX").await.unwrap(), None);
    // Not a currency code at all: no call.
    let requests = client.stats().requests;
    assert_eq!(client.currency_id("EUR' or 1 eq 1").await.unwrap(), None);
    assert_eq!(client.stats().requests, requests);
    env.handle.shutdown().await;
}

#[tokio::test]
async fn queries_page_across_next_links_and_survive_an_expired_token() {
    let env = Env::start().await;
    let client = env.client();
    for i in 0..27 {
        account(&client, &format!("Paged {i:02}")).await;
    }
    account(&client, "Other").await;
    let options = QueryOptions {
        select: vec!["name".into()],
        filter: Some("startswith(name,'Paged')".into()),
        orderby: Some("name asc".into()),
        page_size: Some(10),
        ..QueryOptions::default()
    };

    let before = client.stats();
    let mut stream = Box::pin(client.query("accounts", options.clone()));
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(
            stream
                .next()
                .await
                .unwrap()
                .unwrap()
                .str("name")
                .unwrap()
                .to_owned(),
        );
    }
    // One page consumed; every token the sandbox issued now expires.
    env.control("tokens/expire", json!({})).await;
    while let Some(row) = stream.next().await {
        names.push(row.unwrap().str("name").unwrap().to_owned());
    }
    let expected: Vec<String> = (0..27).map(|i| format!("Paged {i:02}")).collect();
    assert_eq!(names, expected);
    let after = client.stats();
    assert!(after.token_refreshes > before.token_refreshes, "{after:?}");
    assert!(after.token_refreshes >= 1);
    let pages = after.by_outcome.get("query_rows 200").copied().unwrap_or(0);
    assert_eq!(pages, 3, "27 rows at 10 per page: {after:?}");

    // $top caps the stream even when paging.
    let top = collect(client.query(
        "accounts",
        QueryOptions {
            top: Some(12),
            ..options.clone()
        },
    ))
    .await;
    assert_eq!(top.len(), 12);
    // $top without page size: one result.
    let top = collect(client.query(
        "accounts",
        QueryOptions {
            top: Some(3),
            page_size: None,
            ..options.clone()
        },
    ))
    .await;
    assert_eq!(top.len(), 3);

    // A bad query is an error item, and the stream ends.
    let mut bad = Box::pin(client.query(
        "accounts",
        QueryOptions {
            filter: Some("nosuchcolumn eq 1".into()),
            ..QueryOptions::default()
        },
    ));
    let error = bad.next().await.unwrap().unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(bad.next().await.is_none());
    let mut invalid = Box::pin(client.query("accounts?x=1", QueryOptions::default()));
    assert!(matches!(
        invalid.next().await,
        Some(Err(ConnectorError::Config { .. }))
    ));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn change_polling_by_modifiedon_returns_newer_rows_oldest_first() {
    let env = Env::start().await;
    let client = env.client();
    let old = account(&client, "Old").await;
    let watermark = client
        .retrieve("accounts", &old, &["modifiedon"])
        .await
        .unwrap()
        .unwrap()
        .str("modifiedon")
        .unwrap()
        .to_owned();
    // modifiedon has whole seconds: move the sandbox clock so later writes are newer.
    env.control("clock", json!({ "advance_seconds": 5 })).await;
    let new = account(&client, "New").await;
    env.control("clock", json!({ "advance_seconds": 5 })).await;
    client
        .update(
            "accounts",
            &old,
            &fields(json!({ "name": "Old, edited" })),
            None,
        )
        .await
        .unwrap();

    let changed = collect(client.changes_since("accounts", &watermark, &["name"])).await;
    let ids: Vec<&str> = changed.iter().filter_map(|r| r.id.as_deref()).collect();
    assert_eq!(ids, vec![new.as_str(), old.as_str()]);
    assert!(changed.iter().all(|r| r.str("modifiedon").is_some()));

    let latest = changed[1].str("modifiedon").unwrap().to_owned();
    assert!(
        collect(client.changes_since("accounts", &latest, &["name"]))
            .await
            .is_empty()
    );

    let mut bad = Box::pin(client.changes_since("accounts", "last tuesday", &[]));
    assert!(matches!(
        bad.next().await,
        Some(Err(ConnectorError::Config { .. }))
    ));
    assert!(bad.next().await.is_none());
    env.handle.shutdown().await;
}

#[tokio::test]
async fn change_tracking_reports_creates_updates_and_deletes_between_rounds() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.page_size = 2;
    let client = DataverseClient::new(settings).unwrap();
    let a = account(&client, "A").await;
    let b = account(&client, "B").await;
    let c = account(&client, "C").await;

    assert!(client.change_tracking_enabled("accounts").await.unwrap());
    let initial = client
        .track_changes("accounts", &["name"], None)
        .await
        .unwrap();
    let mut ids: Vec<&str> = initial
        .upserted
        .iter()
        .filter_map(|r| r.id.as_deref())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![a.as_str(), b.as_str(), c.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "three rows over two pages");
    assert!(initial.deleted.is_empty());
    assert!(
        initial.delta_link.contains("$deltatoken="),
        "{}",
        initial.delta_link
    );

    // Nothing changed: an empty round.
    let quiet = client
        .track_changes("accounts", &["name"], Some(&initial.delta_link))
        .await
        .unwrap();
    assert!(quiet.upserted.is_empty() && quiet.deleted.is_empty());

    client
        .update("accounts", &a, &fields(json!({ "name": "A2" })), None)
        .await
        .unwrap();
    assert!(client.delete("accounts", &b, None).await.unwrap());
    let d = account(&client, "D").await;
    let e = account(&client, "E").await;
    assert!(client.delete("accounts", &e, None).await.unwrap());

    let delta = client
        .track_changes("accounts", &["name"], Some(&quiet.delta_link))
        .await
        .unwrap();
    let upserted: BTreeMap<&str, &str> = delta
        .upserted
        .iter()
        .map(|r| (r.id.as_deref().unwrap(), r.str("name").unwrap()))
        .collect();
    assert_eq!(
        upserted,
        BTreeMap::from([(a.as_str(), "A2"), (d.as_str(), "D")])
    );
    let mut deleted = delta.deleted.clone();
    deleted.sort_unstable();
    let mut expected = vec![b.clone(), e.clone()];
    expected.sort_unstable();
    assert_eq!(deleted, expected);
    assert_ne!(delta.delta_link, quiet.delta_link);

    // A table without change tracking says so, so the engine can poll by modifiedon.
    let error = client
        .track_changes("transactioncurrencies", &["isocurrencycode"], None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ChangeTrackingError::NotEnabled { ref entity_set } if entity_set == "transactioncurrencies"),
        "{error:?}"
    );
    assert!(
        !client
            .change_tracking_enabled("transactioncurrencies")
            .await
            .unwrap()
    );

    // A bad column on a tracked table is an ordinary error, not "not enabled".
    let error = client
        .track_changes("accounts", &["nosuchcolumn"], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ChangeTrackingError::Connector(ConnectorError::Status { status: 400, .. })
        ),
        "{error:?}"
    );

    // An expired delta link is refused: start over.
    env.control("clock", json!({ "advance_seconds": 8 * 86_400 }))
        .await;
    let error = client
        .track_changes("accounts", &["name"], Some(&delta.delta_link))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ChangeTrackingError::DeltaLinkRejected { ref message } if message.contains("expired")),
        "{error:?}"
    );
    let again = client
        .track_changes("accounts", &["name"], None)
        .await
        .unwrap();
    assert_eq!(again.upserted.len(), 3, "A2, C and D");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn throttling_is_waited_out_honouring_retry_after() {
    let env = Env::start().await;
    let client = env.client();
    let id = account(&client, "Throttled").await;
    env.control(
        "faults",
        json!({ "quota": { "dataverse_requests_per_window": 5, "dataverse_window_seconds": 2 } }),
    )
    .await;
    let started = std::time::Instant::now();
    for _ in 0..12 {
        let row = client.retrieve("accounts", &id, &["name"]).await.unwrap();
        assert_eq!(row.unwrap().str("name"), Some("Throttled"));
    }
    let stats = client.stats();
    let throttled = stats
        .by_outcome
        .get("retrieve_row 429")
        .copied()
        .unwrap_or(0);
    assert!(throttled >= 1, "the quota was hit: {stats:?}");
    assert!(stats.retries >= throttled, "{stats:?}");
    // 12 calls at 5 per 2 s cannot finish in under two windows.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn http_without_allow_insecure_http_is_a_config_error() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.allow_insecure_http = false;
    let error = DataverseClient::new(settings).unwrap_err();
    assert!(matches!(error, ConnectorError::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("allow_insecure_http"), "{error}");
    env.handle.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_error_that_never_shows_the_secret() {
    let env = Env::start().await;
    let mut settings = env.settings();
    let secret = "wrong-secret-Zq81";
    settings.client_secret = Secret::new(secret);
    assert!(!format!("{settings:?}").contains(secret));
    let client = DataverseClient::new(settings).unwrap();
    let error = client.retrieve("accounts", USD, &[]).await.unwrap_err();
    assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
    assert!(!error.to_string().contains(secret), "{error}");
    assert!(!format!("{error:?}").contains(secret), "{error:?}");
    assert!(!format!("{client:?}").contains(secret));
    env.handle.shutdown().await;
}

#[tokio::test]
async fn from_config_resolves_references_and_requires_the_tenant() {
    let env = Env::start().await;
    let conn = |tenant: Option<&str>, authority: Option<&str>| CrmConnection {
        base_url: "${DV_URL}".into(),
        api_version: Some("v9.2".into()),
        auth: CrmAuth {
            tenant_id: tenant.map(str::to_owned),
            client_id: "cosell-sandbox".into(),
            client_secret: Some(SecretRef("${DV_SECRET}".into())),
            refresh_token: None,
            private_key: None,
            username: None,
            authority: authority.map(str::to_owned),
        },
        budget: Budget {
            concurrent: Some(4),
            ..Budget::default()
        },
        allow_insecure_http: true,
        timeout_seconds: None,
    };
    let base = env.base.clone();
    let vars = move |name: &str| match name {
        "DV_URL" => Some(base.clone()),
        "DV_SECRET" => Some("sandbox-secret".to_owned()),
        "TENANT" => Some("contoso".to_owned()),
        _ => None,
    };

    let error = DataverseClient::from_config(&conn(None, None), &vars, &[]).unwrap_err();
    assert!(
        error.to_string().contains("connections.crm.auth.tenant_id"),
        "{error}"
    );
    let error = DataverseClient::from_config(&conn(Some("t"), None), &|_| None, &[]).unwrap_err();
    assert!(
        error.to_string().contains("connections.crm.base_url"),
        "{error}"
    );

    let settings =
        DataverseSettings::from_config(&conn(Some("${TENANT}"), None), &vars, &[]).unwrap();
    assert_eq!(settings.base_url, env.base);
    assert_eq!(settings.tenant_id, "contoso");
    assert_eq!(settings.client_secret.expose(), "sandbox-secret");
    assert_eq!(settings.budget.concurrent, Some(4));
    assert_eq!(
        settings.authority, "https://login.microsoftonline.com",
        "the public cloud by default"
    );

    // `auth.authority` points the token requests elsewhere (here: the sandbox).
    let client =
        DataverseClient::from_config(&conn(Some("${TENANT}"), Some("${DV_URL}")), &vars, &[])
            .unwrap();
    assert_eq!(
        client.currency_id("GBP").await.unwrap().as_deref(),
        Some("7a5e1c2d-0000-4000-8000-000000000003")
    );
    env.handle.shutdown().await;
}
