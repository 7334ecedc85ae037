//! Dataverse `$batch` over real HTTP: the sandbox's emulation on the wire (multipart
//! framing, change set atomicity, `Content-ID` references, errors) and the client's
//! [`DataverseClient::batch`] on top of it.

mod common;

use cosell::connectors::dataverse::{
    AlternateKey, BatchOptions, BatchPart, BatchRequest, DataverseClient, DataverseSettings,
    QueryOptions, batch_failure, batch_ref, bind, odata_string,
};
use cosell::connectors::{ConnectorError, Secret};
use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

const USD: &str = "7a5e1c2d-0000-4000-8000-000000000001";
const EUR: &str = "7a5e1c2d-0000-4000-8000-000000000002";

struct Env {
    _handle: SandboxHandle,
    base: String,
    http: reqwest::Client,
}

impl Env {
    async fn start() -> Env {
        let handle = start(SandboxOptions::default()).await.unwrap();
        let base = handle.base_url().to_owned();
        Env {
            _handle: handle,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn client(&self) -> DataverseClient {
        let mut settings = DataverseSettings::new(
            self.base.clone(),
            "contoso-tenant",
            "cosell-sandbox",
            Secret::new("sandbox-secret"),
        );
        settings.authority = self.base.clone();
        settings.allow_insecure_http = true;
        DataverseClient::new(settings).unwrap()
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn dataverse_calls(&self) -> u64 {
        self.stats().await["apis"]["dataverse"]["calls"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Sends a hand-written batch body; returns status, content type and body text.
    async fn raw_batch(
        &self,
        content_type: &str,
        body: &str,
        prefer: Option<&str>,
    ) -> (StatusCode, String, String) {
        let token = common::entra_token(&self.base, &format!("{}/.default", self.base)).await;
        let mut request = self
            .http
            .post(format!("{}/api/data/v9.2/$batch", self.base))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .header("OData-Version", "4.0")
            .body(body.to_owned());
        if let Some(prefer) = prefer {
            request = request.header("Prefer", prefer);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, content_type, response.text().await.unwrap())
    }
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn query(filter: String, select: &[&str]) -> QueryOptions {
    QueryOptions {
        select: select.iter().map(|s| (*s).to_owned()).collect(),
        filter: Some(filter),
        top: Some(5),
        ..QueryOptions::default()
    }
}

/// The three lookups of a referral (account by name and postal code, contact by e-mail,
/// currency by ISO code) go out as one call and come back as three result sets.
#[tokio::test]
async fn three_queries_are_one_call() {
    let env = Env::start().await;
    let client = env.client();
    let account = client
        .create(
            "accounts",
            &fields(json!({ "name": "O'Brien & Co", "address1_postalcode": "98052" })),
        )
        .await
        .unwrap();
    client
        .create(
            "contacts",
            &fields(json!({
                "lastname": "Doe",
                "emailaddress1": "jane@obrien.example",
                "parentcustomerid_account@odata.bind": bind("accounts", &account),
            })),
        )
        .await
        .unwrap();
    let before = env.dataverse_calls().await;

    let responses = client
        .batch(vec![
            BatchPart::query(
                "accounts",
                query(
                    format!(
                        "name eq {} and address1_postalcode eq {}",
                        odata_string("O'Brien & Co"),
                        odata_string("98052")
                    ),
                    &["accountid", "name"],
                ),
            ),
            BatchPart::query(
                "contacts",
                query(
                    format!("emailaddress1 eq {}", odata_string("jane@obrien.example")),
                    &["contactid", "_parentcustomerid_value"],
                ),
            ),
            BatchPart::query(
                "transactioncurrencies",
                query(
                    format!("isocurrencycode eq {}", odata_string("EUR")),
                    &["transactioncurrencyid", "isocurrencycode"],
                ),
            ),
        ])
        .await
        .unwrap();

    assert_eq!(responses.len(), 3);
    assert!(
        responses
            .iter()
            .all(|r| r.status == StatusCode::OK && r.answered)
    );
    assert_eq!(responses[0].rows.len(), 1);
    assert_eq!(responses[0].rows[0].id.as_deref(), Some(account.as_str()));
    assert_eq!(responses[1].rows.len(), 1);
    assert_eq!(
        responses[1].rows[0].lookup("parentcustomerid"),
        Some(account.as_str())
    );
    assert_eq!(responses[2].rows[0].id.as_deref(), Some(EUR));
    assert_eq!(responses[2].operation(), "query_rows");

    assert_eq!(env.dataverse_calls().await, before + 1, "one HTTP call");
    let stats = env.stats().await;
    assert_eq!(
        stats["apis"]["dataverse"]["endpoints"]["POST /api/data/v9.2/$batch"]["calls"], 1,
        "{stats}"
    );
    assert_eq!(client.stats().by_outcome.get("batch 200"), Some(&1));
}

/// The writes of a referral as one atomic change set: account, contact bound to `$1`,
/// opportunity upserted by alternate key bound to `$1`/`$2`, solution bound to `$3`.
#[tokio::test]
async fn change_set_creates_linked_rows() {
    let env = Env::start().await;
    let client = env.client();
    let referral = "R-0001/x'y";
    let before = env.dataverse_calls().await;

    let responses = client
        .batch(vec![BatchPart::ChangeSet(vec![
            BatchRequest::create(
                "accounts",
                fields(json!({ "name": "Fabrikam", "address1_postalcode": "10115" })),
            )
            .content_id(1),
            BatchRequest::create(
                "contacts",
                fields(json!({
                    "firstname": "Ana",
                    "lastname": "Lima",
                    "emailaddress1": "ana@fabrikam.example",
                    "parentcustomerid_account@odata.bind": batch_ref(1),
                })),
            )
            .content_id(2),
            BatchRequest::upsert(
                "opportunities",
                &AlternateKey::new("cosell_referralid", referral),
                fields(json!({
                    "name": "Fabrikam - Cloud migration",
                    "estimatedvalue": 50000,
                    "customerid_account@odata.bind": batch_ref(1),
                    "parentaccountid@odata.bind": batch_ref(1),
                    "parentcontactid@odata.bind": batch_ref(2),
                    "transactioncurrencyid@odata.bind": bind("transactioncurrencies", EUR),
                })),
            )
            .content_id(3),
            BatchRequest::create(
                "cosell_solutions",
                fields(json!({
                    "cosell_name": "Azure Migrate",
                    "cosell_pcsolutionid": "SOL-1",
                    "cosell_opportunityid@odata.bind": batch_ref(3),
                })),
            )
            .content_id(4),
        ])])
        .await
        .unwrap();
    assert_eq!(env.dataverse_calls().await, before + 1);

    assert_eq!(responses.len(), 4);
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(
            response.status,
            StatusCode::NO_CONTENT,
            "{i}: {:?}",
            response.body
        );
        assert_eq!(response.content_id, Some(i as u32 + 1));
        assert!(response.error().is_none());
    }
    let account = responses[0].entity_id.clone().expect("account id");
    let contact = responses[1].entity_id.clone().expect("contact id");
    let solution = responses[3].entity_id.clone().expect("solution id");
    // An upsert by alternate key answers with the key's URL.
    assert!(
        responses[2]
            .entity_url
            .as_deref()
            .is_some_and(|u| u.contains("opportunities(cosell_referralid=")),
        "{:?}",
        responses[2].entity_url
    );

    let opportunity = client
        .retrieve_by_key(
            "opportunities",
            &AlternateKey::new("cosell_referralid", referral),
            &[],
        )
        .await
        .unwrap()
        .expect("the opportunity exists");
    assert_eq!(opportunity.lookup("customerid"), Some(account.as_str()));
    assert_eq!(
        opportunity.lookup("parentaccountid"),
        Some(account.as_str())
    );
    assert_eq!(
        opportunity.lookup("parentcontactid"),
        Some(contact.as_str())
    );
    assert_eq!(opportunity.lookup("transactioncurrencyid"), Some(EUR));
    let contact_row = client
        .retrieve("contacts", &contact, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        contact_row.lookup("parentcustomerid"),
        Some(account.as_str())
    );
    let solution_row = client
        .retrieve("cosell_solutions", &solution, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        solution_row.lookup("cosell_opportunityid"),
        opportunity.id.as_deref()
    );

    // The same upsert again with return=representation updates and returns the row, and a
    // reference to it in the URL (`PATCH $1`) reaches the same row.
    let responses = client
        .batch(vec![BatchPart::ChangeSet(vec![
            BatchRequest::upsert(
                "opportunities",
                &AlternateKey::new("cosell_referralid", referral),
                fields(json!({ "estimatedvalue": 60000 })),
            )
            .return_representation(&["estimatedvalue", "opportunityid"]),
            BatchRequest::update_reference(1, fields(json!({ "description": "via $1" }))),
        ])])
        .await
        .unwrap();
    assert_eq!(responses[0].status, StatusCode::OK);
    assert_eq!(responses[0].entity_id, opportunity.id);
    assert_eq!(
        responses[0]
            .row
            .as_ref()
            .and_then(|r| r.get("estimatedvalue")),
        Some(&json!(60000))
    );
    assert_eq!(
        responses[1].status,
        StatusCode::NO_CONTENT,
        "{:?}",
        responses[1].body
    );
    let after = client
        .retrieve(
            "opportunities",
            opportunity.id.as_deref().unwrap(),
            &["description"],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.str("description"), Some("via $1"));
}

/// A failing request rolls its whole change set back: no row, no key, no change
/// tracking entry, no row version survives; the answer names the failure.
#[tokio::test]
async fn failing_change_set_persists_nothing() {
    let env = Env::start().await;
    let client = env.client();
    client
        .upsert(
            "opportunities",
            &AlternateKey::new("cosell_referralid", "R-DUP"),
            &fields(json!({ "name": "Existing", "customerid_account@odata.bind": bind("accounts", &client.create("accounts", &fields(json!({"name": "Seed"}))).await.unwrap()) })),
        )
        .await
        .unwrap();
    let initial = client
        .track_changes("accounts", &["name"], None)
        .await
        .unwrap();

    // Unknown column in the second request.
    let responses = client
        .batch(vec![BatchPart::ChangeSet(vec![
            BatchRequest::create("accounts", fields(json!({ "name": "Ghost" }))),
            BatchRequest::create(
                "contacts",
                fields(json!({ "lastname": "X", "no_such_column": 1, "parentcustomerid_account@odata.bind": batch_ref(1) })),
            ),
        ])])
        .await
        .unwrap();
    assert_eq!(responses.len(), 2);
    assert!(!responses[0].answered);
    assert_eq!(responses[0].status, StatusCode::FAILED_DEPENDENCY);
    assert!(responses[1].answered);
    assert_eq!(responses[1].status, StatusCode::BAD_REQUEST);
    let error = batch_failure(&responses).expect("a failure");
    assert!(
        matches!(&error, ConnectorError::Status { status: 400, operation: "create_row", message, .. } if message.contains("no_such_column")),
        "{error}"
    );
    assert!(
        responses[0]
            .error()
            .unwrap()
            .to_string()
            .contains("rolled back because request $2 failed"),
        "{:?}",
        responses[0].error()
    );

    // Duplicate alternate key: create-only upsert on an existing key → 412.
    let responses = client
        .batch(vec![BatchPart::ChangeSet(vec![
            BatchRequest::create("accounts", fields(json!({ "name": "Ghost 2" }))),
            BatchRequest::upsert(
                "opportunities",
                &AlternateKey::new("cosell_referralid", "R-DUP"),
                fields(json!({ "name": "Again", "customerid_account@odata.bind": batch_ref(1) })),
            )
            .if_none_match("*"),
        ])])
        .await
        .unwrap();
    assert_eq!(responses[1].status, StatusCode::PRECONDITION_FAILED);
    assert!(matches!(
        batch_failure(&responses),
        Some(ConnectorError::PreconditionFailed {
            operation: "upsert_row",
            ..
        })
    ));

    // Nothing of either change set exists, and change tracking saw nothing.
    let ghosts = client
        .batch(vec![BatchPart::query(
            "accounts",
            query("startswith(name,'Ghost')".to_owned(), &["name"]),
        )])
        .await
        .unwrap();
    assert!(ghosts[0].rows.is_empty(), "{:?}", ghosts[0].rows);
    let delta = client
        .track_changes("accounts", &["name"], Some(&initial.delta_link))
        .await
        .unwrap();
    assert!(
        delta.upserted.is_empty() && delta.deleted.is_empty(),
        "{delta:?}"
    );
    let opportunity = client
        .retrieve_by_key(
            "opportunities",
            &AlternateKey::new("cosell_referralid", "R-DUP"),
            &["name"],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opportunity.str("name"), Some("Existing"));
}

/// The single calls' errors, from inside a batch: 404, 412 on a stale eTag, and requests
/// left unanswered after the batch stopped.
#[tokio::test]
async fn inner_failures_map_to_the_single_call_errors() {
    let env = Env::start().await;
    let client = env.client();
    let id = client
        .create("accounts", &fields(json!({ "name": "Contoso" })))
        .await
        .unwrap();
    let missing = "00000000-0000-4000-8000-0000000000ff";

    let responses = client
        .batch(vec![
            BatchPart::ChangeSet(vec![BatchRequest::update(
                "accounts",
                missing,
                fields(json!({ "name": "x" })),
            )]),
            BatchPart::query("accounts", QueryOptions::default()),
        ])
        .await
        .unwrap();
    assert!(matches!(
        responses[0].error(),
        Some(ConnectorError::NotFound {
            operation: "update_row",
            ..
        })
    ));
    // The batch stopped: the query did not run.
    assert!(!responses[1].answered);
    assert_eq!(responses[1].status, StatusCode::FAILED_DEPENDENCY);
    assert!(matches!(
        batch_failure(&responses),
        Some(ConnectorError::NotFound { .. })
    ));

    // With continue-on-error the query runs after the failed change set.
    let responses = client
        .batch_with(
            vec![
                BatchPart::ChangeSet(vec![
                    BatchRequest::update("accounts", &id, fields(json!({ "name": "y" })))
                        .if_match("W/\"1\""),
                ]),
                BatchPart::query("accounts", QueryOptions::default()),
            ],
            BatchOptions {
                continue_on_error: true,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        responses[0].error(),
        Some(ConnectorError::PreconditionFailed { .. })
    ));
    assert_eq!(responses[1].status, StatusCode::OK);
    assert_eq!(responses[1].rows.len(), 1);

    // Checked before sending, like the single calls.
    let error = client
        .batch(vec![BatchPart::ChangeSet(vec![BatchRequest::delete(
            "accounts", "1 or 1",
        )])])
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectorError::Config { .. }), "{error}");
    let error = client
        .batch(vec![BatchPart::ChangeSet(vec![
            BatchRequest::update_reference(7, Map::new()),
        ])])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("$7"), "{error}");
    // Delete through a batch, then the row is gone.
    let responses = client
        .batch(vec![BatchPart::ChangeSet(vec![BatchRequest::delete(
            "accounts", &id,
        )])])
        .await
        .unwrap();
    assert_eq!(responses[0].status, StatusCode::NO_CONTENT);
    assert!(
        client
            .retrieve("accounts", &id, &[])
            .await
            .unwrap()
            .is_none()
    );
}

/// The wire format, hand-written as Microsoft's examples are: relative and absolute URLs,
/// `Content-ID` references in URL and body, nested change set answers, and the batch's
/// own status when a request fails with and without `odata.continue-on-error`.
#[tokio::test]
async fn wire_format_follows_the_documented_examples() {
    let env = Env::start().await;
    let body = format!(
        "--batch_AAA123\r\n\
Content-Type: multipart/mixed; boundary=changeset_BBB456\r\n\
\r\n\
--changeset_BBB456\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 1\r\n\
\r\n\
POST {base}/api/data/v9.2/accounts HTTP/1.1\r\n\
Content-Type: application/json; type=entry\r\n\
\r\n\
{{\"name\":\"Wire\"}}\r\n\
--changeset_BBB456\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 2\r\n\
\r\n\
PATCH $1 HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{{\"telephone1\":\"555\"}}\r\n\
--changeset_BBB456\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 3\r\n\
\r\n\
POST /api/data/v9.2/contacts HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{{\"lastname\":\"Wire\",\"parentcustomerid_account@odata.bind\":\"$1\"}}\r\n\
--changeset_BBB456--\r\n\
--batch_AAA123\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
GET accounts?$select=name,telephone1&$filter=name%20eq%20'Wire' HTTP/1.1\r\n\
Accept: application/json\r\n\
\r\n\
\r\n\
--batch_AAA123--\r\n",
        base = env.base
    );
    let (status, content_type, text) = env
        .raw_batch("multipart/mixed; boundary=\"batch_AAA123\"", &body, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        content_type.starts_with("multipart/mixed; boundary=batchresponse_"),
        "{content_type}"
    );
    assert!(text.contains("boundary=changesetresponse_"), "{text}");
    assert!(
        text.contains("Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n"),
        "{text}"
    );
    assert!(text.contains("OData-EntityId: "), "{text}");
    assert!(text.contains("Content-ID: 3\r\n"), "{text}");
    assert!(text.contains("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\"telephone1\":\"555\""), "{text}");
    assert!(text.trim_end().ends_with("--"), "{text}");

    // A reference to an undeclared Content-ID fails the change set; without
    // continue-on-error the batch answers with the failure's status and stops.
    let failing = "--b\r\n\
Content-Type: multipart/mixed; boundary=c\r\n\
\r\n\
--c\r\n\
Content-Type: application/http\r\n\
Content-ID: 1\r\n\
\r\n\
POST accounts HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{\"name\":\"Never\"}\r\n\
--c\r\n\
Content-Type: application/http\r\n\
Content-ID: 2\r\n\
\r\n\
POST contacts HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{\"lastname\":\"N\",\"parentcustomerid_account@odata.bind\":\"$9\"}\r\n\
--c--\r\n\
--b\r\n\
Content-Type: application/http\r\n\
\r\n\
GET accounts?$select=name HTTP/1.1\r\n\
\r\n\
--b--\r\n";
    let (status, _, text) = env
        .raw_batch("multipart/mixed; boundary=b", failing, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("Content-ID: 2\r\n\r\nHTTP/1.1 400 Bad Request"),
        "{text}"
    );
    assert!(
        text.contains("Content-ID Reference: '$9' does not exist in the batch context."),
        "{text}"
    );
    assert!(
        !text.contains("Content-ID: 1\r\n"),
        "only the failure is answered: {text}"
    );
    assert!(
        !text.contains("HTTP/1.1 200 OK"),
        "the GET did not run: {text}"
    );
    let (status, _, text) = env
        .raw_batch(
            "multipart/mixed; boundary=b",
            failing,
            Some("odata.continue-on-error"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert!(!text.contains("Never"), "rolled back: {text}");
}

/// Anything that is not a well-formed batch is a Dataverse-shaped 400, before anything
/// runs; the sandbox keeps serving.
#[tokio::test]
async fn malformed_batches_are_400() {
    let env = Env::start().await;
    let create = "Content-Type: application/http\r\n\r\nPOST accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"name\":\"Malformed\"}\r\n";
    let cases = [
        ("application/json", "{}".to_owned()),
        ("multipart/mixed", format!("--b\r\n{create}--b--\r\n")),
        ("multipart/mixed; boundary=b", format!("--b\r\n{create}")),
        ("multipart/mixed; boundary=b", "".to_owned()),
        ("multipart/mixed; boundary=b", "--b--\r\n".to_owned()),
        (
            "multipart/mixed; boundary=b",
            format!("--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n{create}--b--\r\n"),
        ),
        (
            "multipart/mixed; boundary=b",
            "--b\r\nContent-Type: application/http\r\n\r\nnot a request line\r\n--b--\r\n"
                .to_owned(),
        ),
        (
            // GET inside a change set.
            "multipart/mixed; boundary=b",
            format!(
                "--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n{create}--c\r\nContent-Type: application/http\r\n\r\nGET accounts HTTP/1.1\r\n\r\n--c--\r\n--b--\r\n"
            ),
        ),
        (
            // A change set inside a change set.
            "multipart/mixed; boundary=b",
            "--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d--\r\n--c--\r\n--b--\r\n"
                .to_owned(),
        ),
    ];
    for (content_type, body) in &cases {
        let (status, _, text) = env.raw_batch(content_type, body, None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{content_type} {body:?}: {text}"
        );
        let error: Value = serde_json::from_str(&text).expect("a JSON error body");
        assert!(error["error"]["code"].is_string(), "{text}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    // Nothing ran: the valid create in the mixed cases was not applied.
    let client = env.client();
    let found = client
        .batch(vec![BatchPart::query(
            "accounts",
            query("name eq 'Malformed'".to_owned(), &["name"]),
        )])
        .await
        .unwrap();
    assert!(found[0].rows.is_empty());
    // More than 1,000 requests: refused by the client before sending.
    let many: Vec<BatchPart> = (0..1001)
        .map(|_| BatchPart::query("transactioncurrencies", QueryOptions::default()))
        .collect();
    assert!(matches!(
        client.batch(many).await,
        Err(ConnectorError::Config { .. })
    ));
    let _ = USD;
}
