//! The Composite resource (`POST /services/data/vXX.X/composite`) over real HTTP: the
//! sandbox's emulation (references, allOrNone rollback, limits, one API call) and the
//! client's `composite` method with its error mapping.

mod common;

use std::time::Duration;

use cosell::connectors::ConnectorError;
use cosell::connectors::Secret;
use cosell::connectors::salesforce::{
    CompositeReply, CompositeRequest, SalesforceAuth, SalesforceClient, SalesforceSettings,
    composite_failure,
};
use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

const V: &str = "/services/data/v59.0";

struct Sf {
    handle: SandboxHandle,
    http: reqwest::Client,
    token: String,
}

impl Sf {
    async fn new() -> Sf {
        Sf::with(SandboxOptions::default()).await
    }

    async fn with(options: SandboxOptions) -> Sf {
        let handle = start(options).await.unwrap();
        let token = common::salesforce_token(handle.base_url()).await;
        Sf {
            handle,
            http: reqwest::Client::new(),
            token,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<String>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.handle.base_url()))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, body)
    }

    /// `POST /composite`; the status and body.
    async fn composite_raw(&self, body: String) -> (StatusCode, Value) {
        self.send(Method::POST, &format!("{V}/composite"), Some(body))
            .await
    }

    /// `POST /composite` that must answer 200; its `compositeResponse`.
    async fn composite(&self, all_or_none: bool, subrequests: Value) -> Vec<Value> {
        let body = json!({ "allOrNone": all_or_none, "compositeRequest": subrequests });
        let (status, body) = self.composite_raw(body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["compositeResponse"].as_array().unwrap().clone()
    }

    async fn query(&self, soql: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        let (status, body) = self
            .send(Method::GET, &format!("{V}/query?q={q}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{soql}: {body}");
        body["records"].as_array().unwrap().clone()
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_sandbox/stats", self.handle.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn salesforce_calls(stats: &Value) -> u64 {
    stats["apis"]["salesforce"]["calls"].as_u64().unwrap_or(0)
}

fn composite_calls(stats: &Value) -> u64 {
    stats["apis"]["salesforce"]["endpoints"]["POST /services/data/vXX.X/composite"]["calls"]
        .as_u64()
        .unwrap_or(0)
}

fn statuses(replies: &[Value]) -> Vec<u64> {
    replies
        .iter()
        .map(|r| r["httpStatusCode"].as_u64().unwrap())
        .collect()
}

fn code(reply: &Value) -> &str {
    reply["body"][0]["errorCode"].as_str().unwrap_or("")
}

const ROLLED_BACK: &str =
    "The transaction was rolled back since another operation in the same transaction failed.";

/// The referral write set: Account → Contact → Opportunity upsert → solution child.
fn referral_writes(referral: &str, account: &str, stage: &str) -> Value {
    json!([
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "refAccount",
         "body": {"Name": account, "BillingCountryCode": "US"}},
        {"method": "POST", "url": format!("{V}/sobjects/Contact"), "referenceId": "refContact",
         "body": {"LastName": "Lovelace", "Email": "ada@example.com", "AccountId": "@{refAccount.id}"}},
        {"method": "PATCH", "url": format!("{V}/sobjects/Opportunity/Referral_Id__c/{referral}"),
         "referenceId": "refOpp",
         "body": {"Name": "Deal", "StageName": stage, "CloseDate": "2025-06-30",
                  "AccountId": "@{refAccount.id}", "ContactId": "@{refContact.id}"}},
        {"method": "PATCH", "url": format!("{V}/sobjects/Microsoft_Solution__c/Solution_Id__c/SOL-{referral}"),
         "referenceId": "refSolution",
         "body": {"Name": "Contoso Cloud Migration", "Opportunity__c": "@{refOpp.id}"}}
    ])
}

#[tokio::test]
async fn a_referral_is_written_linked_in_one_api_call() {
    let sf = Sf::new().await;
    let before = sf.stats().await;
    let replies = sf
        .composite(true, referral_writes("R-1", "Contoso", "Prospecting"))
        .await;
    assert_eq!(statuses(&replies), [201, 201, 201, 201], "{replies:?}");
    let after = sf.stats().await;
    assert_eq!(salesforce_calls(&after) - salesforce_calls(&before), 1);
    assert_eq!(composite_calls(&after), 1);

    let account = replies[0]["body"]["id"].as_str().unwrap();
    let contact = replies[1]["body"]["id"].as_str().unwrap();
    let opportunity = replies[2]["body"]["id"].as_str().unwrap();
    assert_eq!(replies[0]["referenceId"], "refAccount");
    assert_eq!(
        replies[0]["httpHeaders"]["Location"],
        format!("{V}/sobjects/Account/{account}")
    );
    assert_eq!(replies[2]["body"]["created"], true);
    assert_eq!(replies[2]["body"]["success"], true);

    let contacts = sf
        .query(&format!(
            "SELECT Id, AccountId FROM Contact WHERE Id = '{contact}'"
        ))
        .await;
    assert_eq!(contacts[0]["AccountId"], account);
    let opportunities = sf
        .query("SELECT Id, AccountId, ContactId FROM Opportunity WHERE Referral_Id__c = 'R-1'")
        .await;
    assert_eq!(opportunities[0]["Id"], opportunity);
    assert_eq!(opportunities[0]["AccountId"], account);
    assert_eq!(opportunities[0]["ContactId"], contact);
    let solutions = sf
        .query("SELECT Opportunity__c FROM Microsoft_Solution__c WHERE Solution_Id__c = 'SOL-R-1'")
        .await;
    assert_eq!(solutions[0]["Opportunity__c"], opportunity);

    // The same upsert again updates: 200, created false, same record.
    let replies = sf
        .composite(
            true,
            json!([{"method": "PATCH", "url": format!("{V}/sobjects/Opportunity/Referral_Id__c/R-1"),
                    "referenceId": "refOpp", "body": {"StageName": "Qualification"}}]),
        )
        .await;
    assert_eq!(replies[0]["httpStatusCode"], 200);
    assert_eq!(replies[0]["body"]["created"], false);
    assert_eq!(replies[0]["body"]["id"], opportunity);
}

#[tokio::test]
async fn all_or_none_rolls_everything_back_and_announces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sf = Sf::with(SandboxOptions {
        data_dir: Some(dir.path().to_owned()),
        ..SandboxOptions::default()
    })
    .await;
    let state_file = dir.path().join("state.json");
    let (_, existing) = sf
        .send(
            Method::POST,
            &format!("{V}/sobjects/Account"),
            Some(json!({"Name": "Existing"}).to_string()),
        )
        .await;
    let existing = existing["id"].as_str().unwrap().to_owned();
    // Let the saver write the creation, then forget the file: whatever appears next was
    // announced by the composite.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = std::fs::remove_file(&state_file);
    let read_existing = format!("SELECT Name, SystemModstamp FROM Account WHERE Id = '{existing}'");
    let original = sf.query(&read_existing).await;

    let mut writes = referral_writes("R-2", "Fabrikam", "Not A Stage");
    // An update of an existing record first: rolling back must restore it, modstamp too.
    writes.as_array_mut().unwrap().insert(
        0,
        json!({"method": "PATCH", "url": format!("{V}/sobjects/Account/{existing}"),
               "referenceId": "refExisting", "body": {"Name": "Renamed"}}),
    );
    let replies = sf.composite(true, writes).await;
    assert_eq!(statuses(&replies), [400, 400, 400, 400, 400], "{replies:?}");
    assert_eq!(code(&replies[3]), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    for i in [0, 1, 2, 4] {
        assert_eq!(code(&replies[i]), "PROCESSING_HALTED", "{}", replies[i]);
        assert_eq!(replies[i]["body"][0]["message"], ROLLED_BACK);
        assert_eq!(replies[i]["httpHeaders"], json!({}));
    }
    assert!(
        sf.query("SELECT Id FROM Account WHERE Name = 'Fabrikam'")
            .await
            .is_empty()
    );
    assert!(
        sf.query("SELECT Id FROM Contact WHERE LastName = 'Lovelace'")
            .await
            .is_empty()
    );
    assert_eq!(sf.query(&read_existing).await, original);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !state_file.exists(),
        "a rolled-back composite was persisted"
    );

    // A valid run afterwards gets fresh records (ids were not left taken) and is saved.
    let replies = sf
        .composite(true, referral_writes("R-2", "Fabrikam", "Prospecting"))
        .await;
    assert_eq!(statuses(&replies), [201, 201, 201, 201], "{replies:?}");
    assert_eq!(
        sf.query("SELECT Id FROM Account WHERE Name = 'Fabrikam'")
            .await
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        state_file.exists(),
        "a committed composite was not persisted"
    );
}

#[tokio::test]
async fn without_all_or_none_earlier_writes_stay_and_dependants_halt() {
    let sf = Sf::new().await;
    let replies = sf
        .composite(
            false,
            json!([
                {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "refAccount",
                 "body": {"Name": "Northwind"}},
                {"method": "PATCH", "url": format!("{V}/sobjects/Opportunity/Referral_Id__c/R-3"),
                 "referenceId": "refOpp",
                 "body": {"Name": "Deal", "StageName": "Bogus", "CloseDate": "2025-06-30",
                          "AccountId": "@{refAccount.id}"}},
                {"method": "POST", "url": format!("{V}/sobjects/Microsoft_Solution__c"),
                 "referenceId": "refSolution",
                 "body": {"Name": "S", "Opportunity__c": "@{refOpp.id}"}},
                {"method": "POST", "url": format!("{V}/sobjects/Contact"), "referenceId": "refContact",
                 "body": {"LastName": "Later", "AccountId": "@{refAccount.id}"}}
            ]),
        )
        .await;
    assert_eq!(statuses(&replies), [201, 400, 400, 201], "{replies:?}");
    assert_eq!(code(&replies[1]), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(code(&replies[2]), "PROCESSING_HALTED");
    assert_eq!(
        replies[2]["body"][0]["message"],
        "Invalid reference specified. No value for refOpp.id found in refOpp."
    );
    assert_eq!(
        sf.query("SELECT Id FROM Account WHERE Name = 'Northwind'")
            .await
            .len(),
        1
    );
    assert!(
        sf.query("SELECT Id FROM Microsoft_Solution__c")
            .await
            .is_empty()
    );
    let contacts = sf
        .query("SELECT AccountId FROM Contact WHERE LastName = 'Later'")
        .await;
    assert_eq!(contacts[0]["AccountId"], replies[0]["body"]["id"]);
}

#[tokio::test]
async fn lookups_run_as_queries_in_one_call() {
    let sf = Sf::new().await;
    let created = sf
        .composite(
            true,
            json!([
                {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "a",
                 "body": {"Name": "Tailspin"}},
                {"method": "POST", "url": format!("{V}/sobjects/Contact"), "referenceId": "c",
                 "body": {"LastName": "Pilot", "Email": "pilot@tailspin.example", "AccountId": "@{a.id}"}}
            ]),
        )
        .await;
    let account = created[0]["body"]["id"].as_str().unwrap();
    let q = |soql: &str| -> String { form_urlencoded::byte_serialize(soql.as_bytes()).collect() };
    let before = sf.stats().await;
    let replies = sf
        .composite(
            false,
            json!([
                {"method": "GET", "referenceId": "refAccount",
                 "url": format!("{V}/query?q={}", q("SELECT Id, Name FROM Account WHERE Name = 'Tailspin'"))},
                // The reference stays literal in the url; the sandbox substitutes it.
                {"method": "GET", "referenceId": "refContact",
                 "url": format!("{V}/query?q={}'@{{refAccount.records[0].Id}}'",
                                q("SELECT Id, Email FROM Contact WHERE AccountId = "))},
                {"method": "PATCH", "referenceId": "refUpdate",
                 "url": format!("{V}/sobjects/Contact/@{{refContact.records[0].Id}}"),
                 "body": {"Phone": "+1 425 555 0100"}},
                {"method": "GET", "referenceId": "refRead",
                 "url": format!("{V}/sobjects/Contact/@{{refContact.records[0].Id}}?fields=Phone")}
            ]),
        )
        .await;
    assert_eq!(statuses(&replies), [200, 200, 204, 200], "{replies:?}");
    assert_eq!(replies[0]["body"]["records"][0]["Id"], account);
    assert_eq!(replies[0]["body"]["totalSize"], 1);
    assert_eq!(
        replies[1]["body"]["records"][0]["Email"],
        "pilot@tailspin.example"
    );
    assert_eq!(replies[2]["body"], Value::Null);
    assert_eq!(replies[3]["body"]["Phone"], "+1 425 555 0100");
    let after = sf.stats().await;
    assert_eq!(salesforce_calls(&after) - salesforce_calls(&before), 1);
}

#[tokio::test]
async fn limits_headers_and_malformed_bodies_are_refused() {
    let sf = Sf::new().await;
    let get = |i: usize| json!({"method": "GET", "url": format!("{V}/limits"), "referenceId": format!("r{i}")});
    let query = |i: usize| json!({"method": "GET", "url": format!("{V}/query?q=SELECT+Id+FROM+Account"), "referenceId": format!("q{i}")});

    // 25 is fine, 26 is not: 200 with one LIMIT_EXCEEDED result and no referenceId.
    let replies = sf
        .composite(false, Value::Array((0..25).map(get).collect()))
        .await;
    assert_eq!(replies.len(), 25);
    let replies = sf
        .composite(false, Value::Array((0..26).map(get).collect()))
        .await;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["httpStatusCode"], 400);
    assert_eq!(replies[0]["referenceId"], Value::Null);
    assert_eq!(code(&replies[0]), "LIMIT_EXCEEDED");
    assert_eq!(
        replies[0]["body"][0]["message"],
        "The request can’t contain more than 25 operations."
    );

    // Five queries are fine, six are not.
    let replies = sf
        .composite(false, Value::Array((0..5).map(query).collect()))
        .await;
    assert_eq!(statuses(&replies), [200; 5]);
    let replies = sf
        .composite(false, Value::Array((0..6).map(query).collect()))
        .await;
    assert_eq!(replies.len(), 1);
    assert_eq!(code(&replies[0]), "LIMIT_EXCEEDED");

    // Accept, Authorization and Content-Type are inherited: setting one fails the call.
    for name in ["Content-Type", "accept", "Authorization"] {
        let body = json!({"allOrNone": false, "compositeRequest": [
            {"method": "GET", "url": format!("{V}/limits"), "referenceId": "r",
             "httpHeaders": {name: "application/json"}}
        ]});
        let (status, body) = sf.composite_raw(body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body[0]["errorCode"].is_string(), "{body}");
    }
    // Other headers reach the subrequest (`If-None-Match` on an Account row).
    let created = sf
        .composite(
            false,
            json!([{"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "a",
                    "body": {"Name": "Etag Inc"}}]),
        )
        .await;
    let id = created[0]["body"]["id"].as_str().unwrap();
    let read = sf
        .composite(
            false,
            json!([{"method": "GET", "url": format!("{V}/sobjects/Account/{id}"), "referenceId": "a"}]),
        )
        .await;
    let etag = read[0]["httpHeaders"]["ETag"].as_str().unwrap().to_owned();
    let again = sf
        .composite(
            false,
            json!([{"method": "GET", "url": format!("{V}/sobjects/Account/{id}"), "referenceId": "a",
                    "httpHeaders": {"If-None-Match": etag}}]),
        )
        .await;
    assert_eq!(again[0]["httpStatusCode"], 304);

    // Malformed bodies: 400 with Salesforce's JSON_PARSER_ERROR, never a crash.
    for bad in [
        "",
        "{",
        "[]",
        r#"{"compositeRequest": 5}"#,
        r#"{"compositeRequest": [{"method": "get", "url": "/x", "referenceId": "a"}]}"#,
        r#"{"compositeRequest": [{"method": "GET", "referenceId": "a"}]}"#,
    ] {
        let (status, body) = sf.composite_raw(bad.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body[0]["errorCode"], "JSON_PARSER_ERROR", "{bad}: {body}");
    }
    let (status, _) = sf
        .composite_raw(r#"{"compositeRequest": []}"#.to_owned())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let duplicate = json!({"compositeRequest": [get(1), get(1)]});
    let (status, _) = sf.composite_raw(duplicate.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = sf.send(Method::GET, &format!("{V}/composite"), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Subrequest-level problems answer in their own result.
    let replies = sf
        .composite(
            false,
            json!([
                {"method": "POST", "url": format!("{V}/composite"), "referenceId": "nested",
                 "body": {"compositeRequest": []}},
                {"method": "GET", "url": "/services/data/v1.0/limits", "referenceId": "oldVersion"},
                {"method": "GET", "url": format!("{V}/sobjects/Nope/001000000000000AAA"), "referenceId": "unknown"},
                {"method": "GET", "url": format!("{V}/limits/@{{missing.id}}"), "referenceId": "dangling"},
                {"method": "GET", "url": format!("{V}/limits"), "referenceId": "fine"}
            ]),
        )
        .await;
    assert_eq!(statuses(&replies), [400, 404, 404, 400, 200], "{replies:?}");
    assert_eq!(code(&replies[3]), "PROCESSING_HALTED");
}

// ---------------------------------------------------------------------------------------
// The client

fn client(handle: &SandboxHandle) -> SalesforceClient {
    let mut settings = SalesforceSettings::new(
        handle.base_url(),
        SalesforceAuth::ClientCredentials {
            client_id: "cosell-sandbox".into(),
            client_secret: Secret::new("sandbox-secret"),
        },
    );
    settings.allow_insecure_http = true;
    SalesforceClient::new(settings).unwrap()
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn reply<'a>(replies: &'a [CompositeReply], reference_id: &str) -> &'a CompositeReply {
    replies
        .iter()
        .find(|r| r.reference_id == reference_id)
        .unwrap()
}

#[tokio::test]
async fn client_round_trip_lookups_then_writes() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let sf = client(&handle);

    // Lookups as one call: nothing found yet.
    let lookups = [
        CompositeRequest::query(
            "refAccount",
            "SELECT Id FROM Account WHERE Name = 'Woodgrove'",
        ),
        CompositeRequest::query(
            "refContact",
            "SELECT Id FROM Contact WHERE Email = 'eve@woodgrove.example'",
        ),
    ];
    let found = sf.composite(false, &lookups).await.unwrap();
    assert!(composite_failure(&found, "lookup").is_none());
    assert!(found.iter().all(|r| r.records().is_empty()));

    // Writes as one atomic call.
    let writes = [
        CompositeRequest::create(
            "refAccount",
            "Account",
            &fields(json!({"Name": "Woodgrove"})),
        )
        .unwrap(),
        CompositeRequest::create(
            "refContact",
            "Contact",
            &fields(json!({"LastName": "Eve", "Email": "eve@woodgrove.example", "AccountId": "@{refAccount.id}"})),
        )
        .unwrap(),
        CompositeRequest::upsert(
            "refOpp",
            "Opportunity",
            "Referral_Id__c",
            "R 9/1",
            &fields(json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2025-06-30",
                           "AccountId": "@{refAccount.id}", "ContactId": "@{refContact.id}"})),
        )
        .unwrap(),
        CompositeRequest::upsert(
            "refSolution",
            "Microsoft_Solution__c",
            "Solution_Id__c",
            "SOL-9",
            &fields(json!({"Name": "Fabrikam Security Suite", "Opportunity__c": "@{refOpp.id}"})),
        )
        .unwrap(),
    ];
    let replies = sf.composite(true, &writes).await.unwrap();
    assert!(composite_failure(&replies, "sync").is_none(), "{replies:?}");
    let opportunity = reply(&replies, "refOpp");
    assert!(opportunity.created());
    let opportunity_id = opportunity.id().unwrap().to_owned();
    let account_id = reply(&replies, "refAccount").id().unwrap().to_owned();
    let record = sf
        .get_by_external_id("Opportunity", "Referral_Id__c", "R 9/1", &["AccountId"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record["AccountId"], account_id.as_str());

    // The lookups find them now; a query reply's records lose `attributes` like query().
    let found = sf.composite(false, &lookups).await.unwrap();
    let records = reply(&found, "refAccount").records();
    assert_eq!(records[0]["Id"], account_id.as_str());
    assert!(!records[0].contains_key("attributes"));

    // Update and delete helpers, with a reference as the id.
    let replies = sf
        .composite(
            true,
            &[
                CompositeRequest::query(
                    "refFind",
                    "SELECT Id FROM Opportunity WHERE Referral_Id__c = 'R 9/1'",
                ),
                CompositeRequest::update(
                    "refUpdate",
                    "Opportunity",
                    "@{refFind.records[0].Id}",
                    &fields(json!({"StageName": "Qualification"})),
                )
                .unwrap(),
                CompositeRequest::delete("refDelete", "Microsoft_Solution__c", "@{refSolutionId}")
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
    // The dangling reference halts the delete, and allOrNone rolls the update back.
    assert!(replies.iter().all(|r| !r.is_success()));
    assert!(reply(&replies, "refUpdate").is_halted());
    let record = sf
        .get("Opportunity", &opportunity_id, &["StageName"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record["StageName"], "Prospecting");
}

#[tokio::test]
async fn client_maps_failures_like_the_single_calls() {
    let handle = start(SandboxOptions::default()).await.unwrap();
    let sf = client(&handle);
    let deal = |referral: &str| {
        fields(
            json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2025-06-30",
                      "Referral_Id__c": referral}),
        )
    };
    sf.create("Opportunity", &deal("DUP")).await.unwrap();

    // DUPLICATE_VALUE: the single create and the composite create give the same error.
    let single = sf.create("Opportunity", &deal("dup")).await.unwrap_err();
    let replies = sf
        .composite(
            true,
            &[
                CompositeRequest::create("refAccount", "Account", &fields(json!({"Name": "A"})))
                    .unwrap(),
                CompositeRequest::create("refOpp", "Opportunity", &deal("dup")).unwrap(),
            ],
        )
        .await
        .unwrap();
    assert!(reply(&replies, "refAccount").is_halted());
    let composite = composite_failure(&replies, "create").unwrap();
    assert_eq!(composite.to_string(), single.to_string());
    assert!(matches!(
        &composite,
        ConnectorError::Status { status: 400, code: Some(code), .. } if code == "DUPLICATE_VALUE"
    ));
    assert!(matches!(
        reply(&replies, "refAccount").clone().into_result("create"),
        Err(ConnectorError::Status { code: Some(code), .. }) if code == "PROCESSING_HALTED"
    ));

    // FIELD_INTEGRITY_EXCEPTION (a country the picklist does not know), the same way.
    let account =
        fields(json!({"Name": "B", "BillingCountryCode": "US", "BillingCountry": "France"}));
    let single = sf.create("Account", &account).await.unwrap_err();
    let replies = sf
        .composite(
            false,
            &[CompositeRequest::create("refAccount", "Account", &account).unwrap()],
        )
        .await
        .unwrap();
    let composite = replies[0].error("create").unwrap();
    assert_eq!(composite.to_string(), single.to_string());
    assert!(matches!(
        &composite,
        ConnectorError::Status { code: Some(code), .. } if code == "FIELD_INTEGRITY_EXCEPTION"
    ));

    // A missing row is NotFound, as for a single call.
    let replies = sf
        .composite(
            false,
            &[CompositeRequest::delete("refDelete", "Account", "001000000000000AAA").unwrap()],
        )
        .await
        .unwrap();
    assert!(matches!(
        replies[0].error("delete"),
        Some(ConnectorError::NotFound { .. })
    ));

    // Limits are checked before spending a call.
    let before = sf.stats();
    let many: Vec<CompositeRequest> = (0..26)
        .map(|i| CompositeRequest::query(format!("q{i}"), "SELECT Id FROM Account"))
        .collect();
    assert!(matches!(
        sf.composite(false, &many).await,
        Err(ConnectorError::Config { .. })
    ));
    assert!(matches!(
        sf.composite(false, &many[..6]).await,
        Err(ConnectorError::Config { .. })
    ));
    assert_eq!(sf.stats().requests, before.requests);
}
