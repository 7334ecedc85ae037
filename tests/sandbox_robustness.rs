//! Hostile input never breaks the sandbox: random SOQL, OData `$filter`s, JSON Patch
//! documents and request bodies get a 2xx or a 4xx in the API's error shape — never a 5xx,
//! never a dropped connection (a panicking handler would drop it).

use std::sync::OnceLock;

use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

struct World {
    runtime: tokio::runtime::Runtime,
    handle: SandboxHandle,
    http: reqwest::Client,
    dataverse: String,
    salesforce: String,
    partner_center: String,
    referral: String,
}

/// One sandbox (with a few records) for every case: starting one per case would make the
/// test about start-up time.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (handle, dataverse, salesforce, partner_center, referral) = runtime.block_on(async {
            let handle = sandbox::start(SandboxOptions::default()).await.unwrap();
            let base = handle.base_url().to_owned();
            common::control(&base, "/_sandbox/seed", &json!({"count": 5})).await;
            let dataverse = common::entra_token(&base, &format!("{base}/.default")).await;
            let salesforce = common::salesforce_token(&base).await;
            let partner_center =
                common::entra_token(&base, "https://api.partner.microsoft.com/.default").await;
            let (_, created) = common::control(
                &base,
                "/_sandbox/partner-center/referrals/incoming",
                &common::cosell_referral("Robust"),
            )
            .await;
            let referral = created["id"].as_str().unwrap().to_owned();
            (handle, dataverse, salesforce, partner_center, referral)
        });
        World {
            runtime,
            handle,
            http: reqwest::Client::new(),
            dataverse,
            salesforce,
            partner_center,
            referral,
        }
    })
}

/// Sends a request and checks the answer is a 2xx/3xx/4xx with a JSON body on errors.
fn check(request: reqwest::RequestBuilder) -> Result<(), TestCaseError> {
    let world = world();
    let (status, body) = world.runtime.block_on(async {
        let response = request
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("connection broke: {e}")))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Ok::<_, TestCaseError>((status, body))
    })?;
    prop_assert!(!status.is_server_error(), "server error {status}: {body}");
    if status.is_client_error() && status != StatusCode::NOT_FOUND && !body.is_empty() {
        prop_assert!(
            serde_json::from_str::<Value>(&body).is_ok(),
            "error body is not JSON: {body}"
        );
    }
    Ok(())
}

/// Fragments that make parsers work: keywords, operators, quotes, brackets, literals.
fn fragments(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(tokens).prop_map(str::to_owned),
            1 => "[a-zA-Z0-9_'\"()%*,.:\\-+ ]{0,6}",
            1 => any::<String>().prop_map(|s| s.chars().take(4).collect()),
        ],
        0..14,
    )
    .prop_map(|parts| parts.join(" "))
}

const SOQL: &[&str] = &[
    "SELECT",
    "Id",
    "Name",
    "Amount",
    "StageName",
    "CloseDate",
    "Account.Name",
    "COUNT()",
    "FROM",
    "Opportunity",
    "Account",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "(",
    ")",
    "=",
    "!=",
    "<",
    ">=",
    "LIKE",
    "IN",
    "'a'",
    "'x\\'y'",
    "2024-01-01",
    "2024-01-01T00:00:00+00:00",
    "null",
    "true",
    "42",
    "-1.5",
    "ORDER BY",
    "ASC",
    "DESC",
    "NULLS FIRST",
    "LIMIT",
    "OFFSET",
    ",",
    "TODAY",
    "LAST_N_DAYS:3",
];

const ODATA: &[&str] = &[
    "name",
    "estimatedvalue",
    "_parentaccountid_value",
    "createdon",
    "statecode",
    "eq",
    "ne",
    "gt",
    "le",
    "and",
    "or",
    "not",
    "(",
    ")",
    "'Contoso'",
    "'O''Brien'",
    "null",
    "true",
    "5",
    "2024-01-01T00:00:00Z",
    "contains(name,'a')",
    "startswith(",
    "endswith(name,",
    ",",
    "/",
    "any(t:t/email eq 'x')",
    "00000000-0000-0000-0000-000000000000",
];

const PC_FILTER: &[&str] = &[
    "status",
    "substatus",
    "type",
    "direction",
    "customerProfile/address/country",
    "team/any(t:t/email eq 'a@b.c')",
    "engagementId",
    "eq",
    "ne",
    "and",
    "or",
    "not",
    "(",
    ")",
    "'New'",
    "'Shared'",
    "'US'",
    "null",
    "createdDateTime",
    "gt",
    "2024-01-01T00:00:00Z",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn soql_never_breaks_the_salesforce_emulator(query in fragments(SOQL)) {
        let w = world();
        check(
            w.http
                .get(format!("{}/services/data/v59.0/query", w.handle.base_url()))
                .bearer_auth(&w.salesforce)
                .query(&[("q", query)]),
        )?;
    }

    #[test]
    fn odata_filters_never_break_the_dataverse_emulator(filter in fragments(ODATA), top in 0u32..6) {
        let w = world();
        check(
            w.http
                .get(format!("{}/api/data/v9.2/accounts", w.handle.base_url()))
                .bearer_auth(&w.dataverse)
                .query(&[("$filter", filter.as_str()), ("$orderby", "name desc,createdon"), ("$top", &top.to_string())]),
        )?;
    }

    #[test]
    fn filters_never_break_the_partner_center_emulator(filter in fragments(PC_FILTER)) {
        let w = world();
        check(
            w.http
                .get(format!("{}/v1.0/engagements/referrals", w.handle.base_url()))
                .bearer_auth(&w.partner_center)
                .query(&[("$filter", filter)]),
        )?;
    }

    #[test]
    fn json_patches_never_break_the_partner_center_emulator(
        op in prop::sample::select(&["replace", "add", "remove", "copy", "", "REPLACE"][..]),
        path in prop::sample::select(&["/name", "/details/dealValue", "/status", "/substatus", "/team/-", "/team/7", "/", "", "name", "/details/requirements/solutions/0/id", "/~1x", "/customerProfile/address/country"][..]),
        value in prop_oneof![
            Just(json!(null)), Just(json!("Active")), Just(json!("Closed")), Just(json!("10000")),
            Just(json!(-5)), Just(json!({"email": "x@y.z"})), Just(json!([1, 2])), any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(|s| json!(s)),
        ],
        wrap in any::<bool>(),
    ) {
        let w = world();
        let operation = json!({ "op": op, "path": path, "value": value });
        let body = if wrap { json!([operation]) } else { operation };
        check(
            w.http
                .patch(format!("{}/v1.0/engagements/referrals/{}", w.handle.base_url(), w.referral))
                .bearer_auth(&w.partner_center)
                .json(&body),
        )?;
    }

    #[test]
    fn arbitrary_bodies_never_break_the_writers(body in prop_oneof![
        any::<Vec<u8>>(),
        ".{0,40}".prop_map(String::into_bytes),
        Just(b"{\"name\": ".to_vec()),
        Just(b"{\"name\": \"x\", \"estimatedvalue\": \"lots\"}".to_vec()),
        Just(b"[{\"Name\": 1}]".to_vec()),
        Just(b"{\"Name\": {\"nested\": [1, {\"x\": null}]}, \"StageName\": 12}".to_vec()),
    ]) {
        let w = world();
        let base = w.handle.base_url();
        check(
            w.http
                .post(format!("{base}/api/data/v9.2/opportunities"))
                .bearer_auth(&w.dataverse)
                .header("content-type", "application/json")
                .body(body.clone()),
        )?;
        check(
            w.http
                .post(format!("{base}/services/data/v59.0/sobjects/Opportunity"))
                .bearer_auth(&w.salesforce)
                .header("content-type", "application/json")
                .body(body.clone()),
        )?;
        check(
            w.http
                .post(format!("{base}/v1.0/engagements/referrals"))
                .bearer_auth(&w.partner_center)
                .header("content-type", "application/json")
                .body(body),
        )?;
    }
}
