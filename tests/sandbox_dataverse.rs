//! The Dataverse Web API emulator over real HTTP: what it accepts, what it rejects, and the
//! status codes, headers and error bodies it answers with (crm-apis.md PART A).

mod common;

use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

const USD: &str = "7a5e1c2d-0000-4000-8000-000000000001";

struct Dv {
    client: reqwest::Client,
    base: String,
    token: String,
    handle: SandboxHandle,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Dv {
    async fn start() -> Dv {
        let handle = start(SandboxOptions::default()).await.unwrap();
        let base = handle.base_url().to_owned();
        let client = reqwest::Client::new();
        let token = common::entra_token(&base, &format!("{base}/.default")).await;
        Dv {
            client,
            base,
            token,
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/api/data/v9.2/{path}", self.base)
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, &[]).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    async fn patch(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::PATCH, path, Some(body), headers).await
    }

    /// Creates a row and returns its id, read from `OData-EntityId` like the Python SDK.
    async fn create(&self, set: &str, body: Value) -> String {
        let reply = self.post(set, body).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        let location = reply.header("odata-entityid").unwrap().to_owned();
        let prefix = format!("{}/api/data/v9.2/{set}(", self.base);
        assert!(location.starts_with(&prefix), "{location}");
        location[prefix.len()..location.len() - 1].to_owned()
    }

    async fn account(&self, name: &str) -> String {
        self.create("accounts", json!({ "name": name })).await
    }
}

fn opportunity(name: &str, account: &str) -> Value {
    json!({
        "name": name,
        "customerid_account@odata.bind": format!("/accounts({account})"),
    })
}

#[tokio::test]
async fn create_answers_204_with_entity_id_and_the_row_reads_back() {
    let dv = Dv::start().await;
    let account = dv.account("Contoso Ltd").await;
    let reply = dv
        .post(
            "opportunities",
            json!({
                "name": "Cloud migration",
                "estimatedvalue": 125000.5,
                "estimatedclosedate": "2026-03-31",
                "customerid_account@odata.bind": format!("/accounts({account})"),
                "parentaccountid@odata.bind": format!("accounts({account})"),
                "salesstage": 1,
                "cosell_synctopartnercenter": true,
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.body, Value::Null);
    assert_eq!(reply.header("odata-version"), Some("4.0"));
    let location = reply.header("odata-entityid").unwrap();
    let id = location
        .rsplit_once('(')
        .unwrap()
        .1
        .trim_end_matches(')')
        .to_owned();
    assert_eq!(id.len(), 36);

    let row = dv.get(&format!("opportunities({id})")).await;
    assert_eq!(row.status, StatusCode::OK);
    assert_eq!(
        row.header("content-type"),
        Some("application/json; odata.metadata=minimal")
    );
    let b = &row.body;
    assert_eq!(
        b["@odata.context"],
        json!(format!(
            "{}/api/data/v9.2/$metadata#opportunities/$entity",
            dv.base
        ))
    );
    let etag = b["@odata.etag"].as_str().unwrap();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(row.header("etag"), Some(etag));
    assert_eq!(b["opportunityid"], json!(id));
    assert_eq!(b["name"], json!("Cloud migration"));
    assert_eq!(b["estimatedvalue"], json!(125000.5));
    assert_eq!(b["estimatedclosedate"], json!("2026-03-31"));
    assert_eq!(b["_customerid_value"], json!(account));
    assert_eq!(b["_parentaccountid_value"], json!(account));
    // The base currency is filled in when the create omits it.
    assert_eq!(b["_transactioncurrencyid_value"], json!(USD));
    assert_eq!(b["statecode"], json!(0));
    assert_eq!(b["statuscode"], json!(1));
    assert_eq!(b["cosell_synctopartnercenter"], json!(true));
    assert_eq!(b["cosell_microsoftvisibility"], json!(false));
    assert_eq!(b["description"], Value::Null);
    assert!(b["createdon"].as_str().unwrap().ends_with('Z'));
    assert!(b["versionnumber"].as_u64().unwrap() > 0);
    // Internal lookup bookkeeping is not shown without annotations.
    assert!(
        b.get("_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
            .is_none()
    );

    // $select narrows the columns; the id always comes back.
    let row = dv
        .get(&format!(
            "opportunities({id})?$select=name,_customerid_value"
        ))
        .await;
    let keys: Vec<&String> = row.body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "@odata.context",
            "@odata.etag",
            "_customerid_value",
            "name",
            "opportunityid"
        ]
    );

    // Annotations: formatted values and lookup targets.
    let row = dv
        .call(
            Method::GET,
            &format!("opportunities({id})"),
            None,
            &[("Prefer", "odata.include-annotations=\"*\"")],
        )
        .await;
    let b = &row.body;
    assert_eq!(
        b["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        json!("account")
    );
    assert_eq!(
        b["_customerid_value@OData.Community.Display.V1.FormattedValue"],
        json!("Contoso Ltd")
    );
    assert_eq!(
        b["_customerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"],
        json!("customerid_account")
    );
    assert_eq!(
        b["salesstage@OData.Community.Display.V1.FormattedValue"],
        json!("Develop")
    );
    assert_eq!(
        b["estimatedvalue@OData.Community.Display.V1.FormattedValue"],
        json!("$125,000.50")
    );
    assert!(row.header("preference-applied").is_some());

    // $expand of a single-valued navigation property.
    let row = dv
        .get(&format!(
            "opportunities({id})?$select=name&$expand=parentaccountid($select=name),transactioncurrencyid($select=isocurrencycode)"
        ))
        .await;
    assert_eq!(row.body["parentaccountid"]["name"], json!("Contoso Ltd"));
    assert_eq!(row.body["parentaccountid"]["accountid"], json!(account));
    assert_eq!(
        row.body["transactioncurrencyid"]["isocurrencycode"],
        json!("USD")
    );

    // Missing rows: 404 ObjectDoesNotExist.
    let missing = "00000000-0000-4000-8000-000000000099";
    let reply = dv.get(&format!("opportunities({missing})")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "0x80040217");
    assert_eq!(
        reply.message(),
        format!("opportunity With Id = {missing} Does Not Exist")
    );
}

#[tokio::test]
async fn create_with_representation_answers_201_and_honours_select() {
    let dv = Dv::start().await;
    let reply = dv
        .call(
            Method::POST,
            "accounts?$select=name,address1_postalcode",
            Some(json!({ "name": "Fabrikam", "address1_postalcode": "98052", "accountid": "11111111-2222-4333-8444-555555555555" })),
            &[("Prefer", "return=representation")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(
        reply.header("preference-applied"),
        Some("return=representation")
    );
    assert!(reply.header("odata-entityid").is_none());
    assert!(reply.header("etag").is_some());
    // The client-supplied primary id is kept.
    assert_eq!(
        reply.body["accountid"],
        json!("11111111-2222-4333-8444-555555555555")
    );
    assert_eq!(reply.body["address1_postalcode"], json!("98052"));
    assert!(reply.body.get("telephone1").is_none());
    assert_eq!(
        reply.body["@odata.context"],
        json!(format!(
            "{}/api/data/v9.2/$metadata#accounts(name,address1_postalcode)/$entity",
            dv.base
        ))
    );
    // The same id again is a duplicate.
    let reply = dv
        .post(
            "accounts",
            json!({ "name": "Again", "accountid": "11111111-2222-4333-8444-555555555555" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.code(), "0x80040237");
}

#[tokio::test]
async fn upsert_by_alternate_key_creates_once_then_updates() {
    let dv = Dv::start().await;
    let account = dv.account("Northwind").await;
    let path = "opportunities(cosell_referralid='R-1''x')";
    let first = dv.patch(path, opportunity("Deal v1", &account), &[]).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT, "{}", first.body);
    assert_eq!(
        first.header("odata-entityid"),
        Some(
            format!(
                "{}/api/data/v9.2/opportunities(cosell_referralid='R-1''x')",
                dv.base
            )
            .as_str()
        )
    );
    let created = dv.get(path).await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.body["cosell_referralid"], json!("R-1'x"));
    let id = created.body["opportunityid"].as_str().unwrap().to_owned();
    let etag1 = created.body["@odata.etag"].as_str().unwrap().to_owned();

    // The key value in the body is ignored on update.
    let second = dv
        .patch(
            path,
            json!({ "name": "Deal v2", "cosell_referralid": "OTHER" }),
            &[("Prefer", "return=representation")],
        )
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body["opportunityid"], json!(id));
    assert_eq!(second.body["name"], json!("Deal v2"));
    assert_eq!(second.body["cosell_referralid"], json!("R-1'x"));
    assert_ne!(second.body["@odata.etag"], json!(etag1));

    let all = dv
        .get("opportunities?$filter=cosell_referralid eq 'R-1''x'&$count=true")
        .await;
    assert_eq!(all.body["@odata.count"], json!(1));
    assert_eq!(all.body["value"].as_array().unwrap().len(), 1);

    // A create through the key of another row's value is a duplicate.
    let reply = dv
        .post(
            "opportunities",
            json!({ "name": "Dup", "cosell_referralid": "r-1'X", "customerid_account@odata.bind": format!("/accounts({account})") }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.code(), "0x80040237");
    assert_eq!(
        reply.message(),
        "A record with matching key values already exists."
    );

    // A new key with return=representation answers 201.
    let reply = dv
        .call(
            Method::PATCH,
            "opportunities(cosell_referralid='R-2')",
            Some(opportunity("Deal 2", &account)),
            &[("Prefer", "return=representation")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["cosell_referralid"], json!("R-2"));

    // Not an alternate key of the table.
    let reply = dv.get("opportunities(name='x')").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = dv.get("opportunities(cosell_referralid='nope')").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "0x80040217");
}

#[tokio::test]
async fn conditional_requests_follow_etags() {
    let dv = Dv::start().await;
    let id = dv.account("Tailspin").await;
    let path = format!("accounts({id})");
    let row = dv.get(&path).await;
    let etag = row.body["@odata.etag"].as_str().unwrap().to_owned();

    // Unchanged: 304 for If-None-Match with the current tag.
    let reply = dv
        .call(Method::GET, &path, None, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    let reply = dv
        .call(Method::GET, &path, None, &[("If-None-Match", "null")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // Optimistic concurrency.
    let reply = dv
        .patch(
            &path,
            json!({ "telephone1": "1" }),
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.code(), "0x80060882");
    assert_eq!(
        reply.message(),
        "The version of the existing record doesn't match the RowVersion property provided."
    );
    let reply = dv
        .patch(&path, json!({ "telephone1": "2" }), &[("If-Match", &etag)])
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // The write changed the version: the old tag no longer matches.
    let reply = dv
        .call(Method::GET, &path, None, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["telephone1"], json!("2"));
    let reply = dv
        .patch(&path, json!({ "telephone1": "3" }), &[("If-Match", &etag)])
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);

    // Create-only on an existing row.
    let reply = dv
        .patch(&path, json!({ "name": "x" }), &[("If-None-Match", "*")])
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        reply.message(),
        "A record with matching key values already exists."
    );

    // Update-only on a missing row.
    let missing = "00000000-0000-4000-8000-0000000000aa";
    let reply = dv
        .patch(
            &format!("accounts({missing})"),
            json!({ "name": "x" }),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "0x80040217");
    assert_eq!(
        dv.get(&format!("accounts({missing})")).await.status,
        StatusCode::NOT_FOUND
    );

    // Without a condition the same PATCH creates the row with that id.
    let reply = dv
        .patch(
            &format!("accounts({missing})"),
            json!({ "name": "Upserted" }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        dv.get(&format!("accounts({missing})")).await.body["name"],
        json!("Upserted")
    );

    // Delete honours If-Match too, then the row is gone.
    let reply = dv
        .call(Method::DELETE, &path, None, &[("If-Match", "W/\"1\"")])
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    let reply = dv
        .call(Method::DELETE, &path, None, &[("If-Match", "*")])
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(dv.get(&path).await.status, StatusCode::NOT_FOUND);
    let reply = dv.call(Method::DELETE, &path, None, &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lookups_bind_disassociate_and_reject_missing_targets() {
    let dv = Dv::start().await;
    let account = dv.account("Wingtip").await;
    let contact = dv
        .create(
            "contacts",
            json!({ "firstname": "Sue", "lastname": "Smith", "parentcustomerid_account@odata.bind": format!("/accounts({account})") }),
        )
        .await;
    let row = dv.get(&format!("contacts({contact})")).await;
    assert_eq!(row.body["_parentcustomerid_value"], json!(account));
    assert_eq!(row.body["fullname"], json!("Sue Smith"));

    let id = dv
        .create(
            "opportunities",
            json!({
                "name": "Deal",
                "customerid_contact@odata.bind": format!("/contacts({contact})"),
                "parentcontactid@odata.bind": format!("/contacts({contact})"),
                "transactioncurrencyid@odata.bind": "/transactioncurrencies(7a5e1c2d-0000-4000-8000-000000000002)",
            }),
        )
        .await;
    let path = format!("opportunities({id})");
    let row = dv
        .call(
            Method::GET,
            &path,
            None,
            &[(
                "Prefer",
                "odata.include-annotations=\"Microsoft.Dynamics.CRM.lookuplogicalname\"",
            )],
        )
        .await;
    assert_eq!(row.body["_customerid_value"], json!(contact));
    assert_eq!(
        row.body["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        json!("contact")
    );
    assert_eq!(
        row.body["_transactioncurrencyid_value"],
        json!("7a5e1c2d-0000-4000-8000-000000000002")
    );
    assert!(
        row.body
            .get("_customerid_value@OData.Community.Display.V1.FormattedValue")
            .is_none()
    );

    // Switch the customer to the account; disassociate the contact two ways.
    let reply = dv
        .patch(
            &path,
            json!({ "customerid_account@odata.bind": format!("/accounts({account})"), "parentcontactid@odata.bind": null }),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let row = dv.get(&path).await;
    assert_eq!(row.body["_customerid_value"], json!(account));
    assert_eq!(row.body["_parentcontactid_value"], Value::Null);
    let reply = dv
        .patch(
            &path,
            json!({ "parentaccountid@odata.bind": format!("/accounts({account})") }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = dv
        .call(
            Method::DELETE,
            &format!("{path}/parentaccountid/$ref"),
            None,
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        dv.get(&path).await.body["_parentaccountid_value"],
        Value::Null
    );

    // Binding to a row that does not exist.
    let missing = "00000000-0000-4000-8000-0000000000bb";
    let reply = dv
        .patch(
            &path,
            json!({ "parentaccountid@odata.bind": format!("/accounts({missing})") }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "0x80040217");
    assert_eq!(
        reply.message(),
        format!("account With Id = {missing} Does Not Exist")
    );
    // Navigation property names are case-sensitive.
    let reply = dv
        .patch(
            &path,
            json!({ "ParentAccountId@odata.bind": format!("/accounts({account})") }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.message().contains("ParentAccountId"),
        "{}",
        reply.message()
    );
    // The wrong entity set for the navigation property.
    let reply = dv
        .patch(
            &path,
            json!({ "parentaccountid@odata.bind": format!("/contacts({contact})") }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Lookup values are read-only.
    let reply = dv
        .patch(&path, json!({ "_parentaccountid_value": account }), &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("Navigation properties"));

    // Single-property PUT and DELETE.
    let reply = dv
        .call(
            Method::PUT,
            &format!("{path}/description"),
            Some(json!({ "value": "Hello" })),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = dv.get(&format!("{path}/description")).await;
    assert_eq!(reply.body["value"], json!("Hello"));
    let reply = dv
        .call(Method::DELETE, &format!("{path}/description"), None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(dv.get(&path).await.body["description"], Value::Null);
}

#[tokio::test]
async fn invalid_writes_are_rejected_like_dataverse() {
    let dv = Dv::start().await;
    let account = dv.account("Litware").await;
    let path = format!("accounts({account})");

    let reply = dv
        .post("accounts", json!({ "name": "x", "nosuchcolumn": 1 }))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "0x80048d19");
    assert!(
        reply.message().contains(
            "The property 'nosuchcolumn' does not exist on type 'Microsoft.Dynamics.CRM.account'"
        ),
        "{}",
        reply.message()
    );

    // Required column missing (name is ApplicationRequired; the sandbox enforces it).
    let reply = dv.post("accounts", json!({ "telephone1": "1" })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "0x80040200");
    assert!(reply.message().contains("'name'"), "{}", reply.message());
    let reply = dv
        .post("contacts", json!({ "firstname": "No last name" }))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("lastname"));
    // SystemRequired cannot be set to null on update.
    let reply = dv
        .patch(
            "transactioncurrencies(7a5e1c2d-0000-4000-8000-000000000002)",
            json!({ "currencyname": null }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("currencyname"));

    // Option set value outside the choices.
    let reply = dv
        .post("opportunities", json!({ "name": "x", "salesstage": 7, "customerid_account@odata.bind": format!("/accounts({account})") }))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "0x8004431a");
    assert!(
        reply.message().contains("The value 7 of 'salesstage'"),
        "{}",
        reply.message()
    );
    // A label instead of a value is a type error.
    let reply = dv
        .patch(&path, json!({ "accountcategorycode": "Standard" }), &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("Edm.Int32"), "{}", reply.message());

    // Too long.
    let reply = dv
        .patch(&path, json!({ "name": "x".repeat(161) }), &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "0x80044331");
    assert!(reply.message().contains("maximum allowed length of '160'"));
    assert_eq!(
        dv.patch(&path, json!({ "name": "é".repeat(160) }), &[])
            .await
            .status,
        StatusCode::NO_CONTENT,
        "lengths count characters"
    );

    // Wrong JSON types.
    for body in [
        json!({ "revenue": "1000" }),
        json!({ "numberofemployees": 1.5 }),
        json!({ "creditonhold": "yes" }),
        json!({ "name": 5 }),
    ] {
        let reply = dv.patch(&path, body.clone(), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply.message().contains("Cannot convert the literal"),
            "{}",
            reply.message()
        );
    }
    let reply = dv
        .post("opportunities", json!({ "name": "x", "estimatedclosedate": "2026-01-01T00:00:00Z", "customerid_account@odata.bind": format!("/accounts({account})") }))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("Edm.Date"));
    // Out of range.
    let reply = dv.patch(&path, json!({ "revenue": -1 }), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Read-only columns.
    for body in [
        json!({ "versionnumber": 5 }),
        json!({ "createdon": "2020-01-01T00:00:00Z" }),
    ] {
        assert_eq!(
            dv.patch(&path, body, &[]).await.status,
            StatusCode::BAD_REQUEST
        );
    }
    let contact = dv.create("contacts", json!({ "lastname": "Jansen" })).await;
    let reply = dv
        .patch(
            &format!("contacts({contact})"),
            json!({ "fullname": "X" }),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // statecode is not valid for create, but is for update (with its default status).
    let reply = dv
        .post("accounts", json!({ "name": "x", "statecode": 1 }))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("statecode"));
    assert_eq!(
        dv.patch(&path, json!({ "statecode": 1 }), &[]).await.status,
        StatusCode::NO_CONTENT
    );
    let row = dv.get(&path).await;
    assert_eq!(
        (
            row.body["statecode"].clone(),
            row.body["statuscode"].clone()
        ),
        (json!(1), json!(2))
    );
    let reply = dv
        .patch(&path, json!({ "statecode": 0, "statuscode": 2 }), &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Malformed JSON, wrong media type, wrong methods.
    let reply = dv
        .client
        .post(dv.url("accounts"))
        .bearer_auth(&dv.token)
        .header("Content-Type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let reply = dv
        .client
        .post(dv.url("accounts"))
        .bearer_auth(&dv.token)
        .header("Content-Type", "text/plain")
        .body("{\"name\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        dv.patch("accounts", json!({ "name": "x" }), &[])
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        dv.post(&path, json!({ "name": "x" })).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Unknown tables and versions.
    let reply = dv.get("widgets").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.message(),
        "Resource not found for the segment 'widgets'."
    );
    let reply = dv.get(&format!("{}/api/data/v8.0/accounts", dv.base)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        dv.get(&format!("{}/api/data/v9.0/accounts", dv.base))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn queries_filter_order_count_and_reject_what_dataverse_rejects() {
    let dv = Dv::start().await;
    let contoso = dv.account("Contoso Pharmaceuticals").await;
    let fabrikam = dv.account("Fabrikam").await;
    for (name, value, account, stage) in [
        ("Alpha", 100, &contoso, 0),
        ("beta", 300, &contoso, 1),
        ("Gamma", 200, &fabrikam, 2),
        ("Delta", 300, &fabrikam, 3),
        ("O'Brien deal", 50, &fabrikam, 0),
    ] {
        dv.create(
            "opportunities",
            json!({
                "name": name,
                "estimatedvalue": value,
                "salesstage": stage,
                "estimatedclosedate": format!("2026-0{}-15", stage + 1),
                "customerid_account@odata.bind": format!("/accounts({account})"),
                "parentaccountid@odata.bind": format!("/accounts({account})"),
            }),
        )
        .await;
    }
    let names = |reply: &Reply| -> Vec<String> {
        reply.body["value"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", reply.body))
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let q = |query: &str| format!("opportunities?$select=name&{query}");

    // Case-insensitive comparison; string functions; logic.
    assert_eq!(
        names(&dv.get(&q("$filter=name eq 'ALPHA'")).await),
        vec!["Alpha"]
    );
    let reply = dv
        .get(&q("$filter=contains(name,'TA')&$orderby=name"))
        .await;
    assert_eq!(names(&reply), vec!["beta", "Delta"]);
    let reply = dv
        .get(&q("$filter=(estimatedvalue ge 200 and not startswith(name,'g')) or name eq 'O''Brien deal'&$orderby=estimatedvalue desc,name asc"))
        .await;
    assert_eq!(names(&reply), vec!["beta", "Delta", "O'Brien deal"]);
    assert_eq!(
        reply.body["@odata.context"],
        json!(format!(
            "{}/api/data/v9.2/$metadata#opportunities(name)",
            dv.base
        ))
    );
    // Lookups by value, GUID unquoted and quoted; nulls; dates.
    let reply = dv
        .get(&q(&format!(
            "$filter=_parentaccountid_value eq {contoso}&$orderby=name"
        )))
        .await;
    assert_eq!(names(&reply), vec!["Alpha", "beta"]);
    let reply = dv
        .get(&q(&format!(
            "$filter=_customerid_value eq '{}'",
            fabrikam.to_uppercase()
        )))
        .await;
    assert_eq!(names(&reply).len(), 3);
    assert_eq!(
        names(&dv.get(&q("$filter=description ne null")).await).len(),
        0
    );
    let reply = dv
        .get(&q("$filter=estimatedclosedate ge 2026-03-01 and estimatedclosedate lt 2026-04-30&$orderby=name"))
        .await;
    assert_eq!(names(&reply), vec!["Delta", "Gamma"]);
    let reply = dv
        .get(&q("$filter=Microsoft.Dynamics.CRM.In(PropertyName='salesstage',PropertyValues=['2','3'])&$orderby=name"))
        .await;
    assert_eq!(names(&reply), vec!["Delta", "Gamma"]);
    let reply = dv
        .get(&q("$filter=modifiedon gt 2020-01-01T00:00:00Z"))
        .await;
    assert_eq!(names(&reply).len(), 5);

    // $top and $count (the count ignores $top).
    let reply = dv
        .get(&q("$orderby=estimatedvalue&$top=2&$count=true"))
        .await;
    assert_eq!(names(&reply), vec!["O'Brien deal", "Alpha"]);
    assert_eq!(reply.body["@odata.count"], json!(5));
    assert!(reply.body.get("@odata.nextLink").is_none());
    let reply = dv.get("opportunities/$count").await;
    assert_eq!(reply.body, json!(5));

    // Collection-valued $expand.
    let reply = dv
        .get(&format!(
            "accounts({contoso})?$select=name&$expand=opportunity_customer_accounts($select=name)"
        ))
        .await;
    assert_eq!(
        reply.body["opportunity_customer_accounts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Rejections.
    let reply = dv.get(&q("$skip=1")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("$skip"));
    assert_eq!(
        dv.get(&q("$search=x")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        dv.get(&q("$format=json")).await.status,
        StatusCode::BAD_REQUEST
    );
    let reply = dv.get("opportunities?$select=name,nosuch").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "0x80060888");
    assert_eq!(
        reply.message(),
        "Could not find a property named 'nosuch' on type 'Microsoft.Dynamics.CRM.opportunity'."
    );
    let reply = dv.get(&q("$filter=nosuch eq 1")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("'nosuch'"));
    let reply = dv.get(&q("$orderby=nosuch")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = dv.get(&q("$filter=name eq 'x")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.message(),
        "There is an unterminated literal at position 8 in 'name eq 'x'."
    );
    let reply = dv.get(&q("$filter=(name eq 'x'")).await;
    assert!(
        reply.message().contains("at position 12"),
        "{}",
        reply.message()
    );
    assert_eq!(dv.get(&q("$top=-1")).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn paging_follows_next_links_verbatim_across_pages() {
    let dv = Dv::start().await;
    for i in 0..23 {
        dv.create(
            "accounts",
            json!({ "name": format!("Account {i:02}"), "numberofemployees": i % 4 }),
        )
        .await;
    }
    // Rows created while paging must not disturb the pages (keyset paging).
    let mut url = "accounts?$select=name,numberofemployees&$orderby=numberofemployees desc,name&$count=true&$top=2".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let reply = dv
            .call(
                Method::GET,
                &url,
                None,
                &[("Prefer", "odata.maxpagesize=7")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.header("preference-applied"),
            Some("odata.maxpagesize=7")
        );
        assert_eq!(reply.body["@odata.count"], json!(23 + pages.min(1)));
        let rows = reply.body["value"].as_array().unwrap();
        assert!(rows.len() <= 7);
        for row in rows {
            seen.push((
                row["numberofemployees"].as_i64().unwrap(),
                row["name"].as_str().unwrap().to_owned(),
            ));
        }
        pages += 1;
        if pages == 1 {
            // A row sorting before the current position appears in no later page.
            dv.create(
                "accounts",
                json!({ "name": "Account 00", "numberofemployees": 9 }),
            )
            .await;
        }
        match reply.body.get("@odata.nextLink").and_then(Value::as_str) {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/api/data/v9.2/accounts?", dv.base)),
                    "{next}"
                );
                assert!(next.contains("$skiptoken="));
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 4, "23 rows in pages of 7");
    assert_eq!(seen.len(), 23);
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen, expected, "pages continue the order");
    expected.dedup();
    assert_eq!(expected.len(), 23, "no row twice");

    // Without maxpagesize, $top limits and there is no next link.
    let reply = dv.get("accounts?$top=5").await;
    assert_eq!(reply.body["value"].as_array().unwrap().len(), 5);
    assert!(reply.body.get("@odata.nextLink").is_none());
    // A forged token is refused.
    let reply = dv
        .get("accounts?$skiptoken=%3Ccookie%20pagenumber%3D%222%22")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn service_protection_limit_answers_429_with_retry_after() {
    let dv = Dv::start().await;
    let reply = dv
        .client
        .post(format!("{}/_sandbox/faults", dv.base))
        .json(&json!({ "quota": { "dataverse_requests_per_window": 3 } }))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    for _ in 0..3 {
        assert_eq!(dv.get("WhoAmI").await.status, StatusCode::OK);
    }
    let reply = dv.get("accounts").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(reply.code(), "0x80072322");
    assert!(
        reply
            .message()
            .contains("Number of requests exceeded the limit of 3")
    );
}

#[tokio::test]
async fn tokens_are_required_and_must_be_for_dataverse() {
    let dv = Dv::start().await;
    let reply = dv.client.get(dv.url("accounts")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert!(reply.headers().get("www-authenticate").is_some());
    let partner = common::entra_token(&dv.base, "https://api.partner.microsoft.com/.default").await;
    let reply = dv
        .client
        .get(dv.url("accounts"))
        .bearer_auth(partner)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(dv.get("accounts").await.status, StatusCode::OK);
}

#[tokio::test]
async fn metadata_endpoints_answer_the_python_sdk() {
    let dv = Dv::start().await;
    let reply = dv
        .get("EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute&$filter=LogicalName eq 'opportunity'")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let value = reply.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert_eq!(value[0]["EntitySetName"], json!("opportunities"));
    assert_eq!(value[0]["PrimaryIdAttribute"], json!("opportunityid"));
    assert!(value[0].get("DisplayName").is_none());
    let reply = dv
        .get("EntityDefinitions?$select=LogicalName&$filter=LogicalName eq 'nosuch'")
        .await;
    assert_eq!(reply.body["value"], json!([]));

    let reply = dv
        .get("EntityDefinitions(LogicalName='opportunity')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options)")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let help = reply.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["LogicalName"] == json!("cosell_microsofthelp"))
        .unwrap();
    assert_eq!(help["OptionSet"]["Options"][0]["Value"], json!(100_000_000));
    assert_eq!(
        help["OptionSet"]["Options"][0]["Label"]["LocalizedLabels"][0]["Label"],
        json!("General or other")
    );
    // statecode and statuscode are State/Status metadata, not Picklist.
    assert!(
        !reply.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["LogicalName"] == json!("statecode"))
    );

    let reply = dv.get("EntityDefinitions(LogicalName='account')").await;
    assert_eq!(reply.body["PrimaryNameAttribute"], json!("name"));
    let reply = dv
        .get("EntityDefinitions(LogicalName='account')/Attributes")
        .await;
    assert!(reply.body["value"].as_array().unwrap().len() > 20);
    let reply = dv
        .get("EntityDefinitions(LogicalName='opportunity')/Keys")
        .await;
    assert_eq!(
        reply.body["value"][0]["KeyAttributes"],
        json!(["cosell_referralid"])
    );
    let reply = dv.get("EntityDefinitions(LogicalName='nosuch')").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let who = dv.get("WhoAmI").await;
    assert_eq!(who.status, StatusCode::OK);
    assert!(who.body["UserId"].as_str().unwrap().len() == 36);
    assert_eq!(who.body, dv.get("WhoAmI()").await.body, "stable ids");

    let service = dv.get("").await;
    assert!(
        service.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == json!("cosell_solutions"))
    );
}

#[tokio::test]
async fn bulk_actions_are_all_or_nothing() {
    let dv = Dv::start().await;
    let reply = dv
        .post(
            "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
            json!({ "Targets": [
                { "name": "A", "@odata.type": "Microsoft.Dynamics.CRM.account" },
                { "name": "B", "@odata.type": "Microsoft.Dynamics.CRM.account" },
            ] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let ids: Vec<String> = reply.body["Ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);

    // One bad target: nothing is written.
    let reply = dv
        .post(
            "accounts/Microsoft.Dynamics.CRM.UpdateMultiple",
            json!({ "Targets": [
                { "accountid": ids[0], "name": "A2" },
                { "accountid": ids[1], "revenue": "bad" },
            ] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        dv.get(&format!("accounts({})", ids[0])).await.body["name"],
        json!("A")
    );

    let opportunity = dv
        .create("opportunities", json!({ "name": "Parent", "customerid_account@odata.bind": format!("/accounts({})", ids[0]) }))
        .await;
    let reply = dv
        .post(
            "cosell_solutions/Microsoft.Dynamics.CRM.UpsertMultiple",
            json!({ "Targets": [
                { "@odata.id": format!("cosell_solutions(cosell_opportunityid={opportunity},cosell_pcsolutionid='SOL-1')"), "cosell_name": "Solution one" },
                { "@odata.id": format!("cosell_solutions(cosell_opportunityid={opportunity},cosell_pcsolutionid='SOL-1')"), "cosell_name": "Solution one, renamed" },
            ] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["Results"][0]["RecordCreated"], json!(true));
    assert_eq!(reply.body["Results"][1]["RecordCreated"], json!(false));
    let reply = dv
        .get(&format!("opportunities({opportunity})?$select=name&$expand=cosell_opportunity_solutions($select=cosell_name,cosell_pcsolutionid)"))
        .await;
    let solutions = reply.body["cosell_opportunity_solutions"]
        .as_array()
        .unwrap();
    assert_eq!(solutions.len(), 1);
    assert_eq!(solutions[0]["cosell_name"], json!("Solution one, renamed"));
    assert_eq!(solutions[0]["cosell_pcsolutionid"], json!("SOL-1"));
}

#[tokio::test]
async fn stats_name_endpoints_without_ids_and_seed_matches_companies() {
    let dv = Dv::start().await;
    let id = dv.account("Proseware").await;
    dv.get(&format!("accounts({id})")).await;
    dv.patch(
        &format!("accounts({id})"),
        json!({ "telephone1": "1" }),
        &[],
    )
    .await;
    dv.get("accounts?$top=1").await;
    let stats: Value = dv
        .client
        .get(format!("{}/_sandbox/stats", dv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoints = &stats["apis"]["dataverse"]["endpoints"];
    for name in [
        "POST /api/data/v9.2/accounts",
        "GET /api/data/v9.2/accounts({key})",
        "PATCH /api/data/v9.2/accounts({key})",
        "GET /api/data/v9.2/accounts",
    ] {
        assert!(
            endpoints.get(name).is_some(),
            "{name} missing from {endpoints}"
        );
    }

    let reply = dv
        .client
        .post(format!("{}/_sandbox/seed", dv.base))
        .json(&json!({ "referrals": 0, "accounts": 3 }))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    let company = cosell::sandbox::seed_data::company(1);
    let reply = dv
        .get(&format!(
            "accounts?$filter=name eq '{}' and address1_postalcode eq '{}'",
            company.name.replace('\'', "''"),
            company.postal_code
        ))
        .await;
    assert_eq!(
        reply.body["value"].as_array().unwrap().len(),
        1,
        "{}",
        reply.body
    );
    let reply = dv.get("opportunities?$count=true").await;
    assert_eq!(reply.body["@odata.count"], json!(3));
    let reply = dv
        .get("contacts?$count=true&$filter=_parentcustomerid_value ne null")
        .await;
    assert_eq!(reply.body["@odata.count"], json!(3));

    // Persistence: a snapshot restores the same rows.
    let state = dv.handle.state();
    let snapshot = state.dataverse.snapshot();
    state.dataverse.reset();
    assert_eq!(
        dv.get("accounts?$count=true").await.body["@odata.count"],
        json!(0)
    );
    assert_eq!(
        dv.get("transactioncurrencies?$count=true").await.body["@odata.count"],
        json!(7),
        "currencies exist in every organization"
    );
    state.dataverse.restore(snapshot).unwrap();
    assert_eq!(
        dv.get("accounts?$count=true").await.body["@odata.count"],
        json!(4)
    );
}

/// `GET` with `Prefer: odata.track-changes` (and a page size).
async fn tracked(dv: &Dv, path: &str, page_size: Option<usize>) -> Reply {
    let prefer = match page_size {
        Some(n) => format!("odata.track-changes,odata.maxpagesize={n}"),
        None => "odata.track-changes".to_owned(),
    };
    dv.call(Method::GET, path, None, &[("Prefer", prefer.as_str())])
        .await
}

fn ids_of(reply: &Reply, id: &str) -> Vec<String> {
    let mut ids: Vec<String> = reply.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row[id].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn change_tracking_answers_delta_links_with_changes_and_deletions() {
    let dv = Dv::start().await;
    let a = dv.account("A").await;
    let b = dv.account("B").await;
    let c = dv.account("C").await;

    // The initial load pages like any query; the last page carries the delta link.
    let first = tracked(&dv, "accounts?$select=name", Some(2)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let applied = first.header("preference-applied").unwrap();
    assert!(applied.contains("odata.track-changes"), "{applied}");
    assert!(applied.contains("odata.maxpagesize=2"), "{applied}");
    assert_eq!(first.body["value"].as_array().unwrap().len(), 2);
    assert!(first.body.get("@odata.deltaLink").is_none());
    let next = first.body["@odata.nextLink"].as_str().unwrap().to_owned();
    let last = tracked(&dv, &next, Some(2)).await;
    assert_eq!(last.body["value"].as_array().unwrap().len(), 1);
    assert!(last.body.get("@odata.nextLink").is_none());
    let delta_link = last.body["@odata.deltaLink"].as_str().unwrap().to_owned();
    let prefix = format!("{}/api/data/v9.2/accounts?", dv.base);
    assert!(delta_link.starts_with(&prefix), "{delta_link}");
    assert!(delta_link.contains("$select=name"), "{delta_link}");
    // The token is `<version>!<MM/dd/yyyy HH:mm:ss>`, URL-encoded.
    let token = delta_link.split("$deltatoken=").nth(1).unwrap();
    let token = percent_encoding::percent_decode_str(token)
        .decode_utf8()
        .unwrap()
        .into_owned();
    let (version, at) = token.split_once('!').unwrap();
    assert!(version.parse::<u64>().is_ok(), "{token}");
    assert_eq!(at.len(), "08/22/2017 08:10:44".len(), "{token}");
    assert_eq!(
        (&at[2..3], &at[5..6], &at[10..11]),
        ("/", "/", " "),
        "{token}"
    );
    let mut all = ids_of(&first, "accountid");
    all.extend(ids_of(&last, "accountid"));
    all.sort();
    let mut expected = vec![a.clone(), b.clone(), c.clone()];
    expected.sort();
    assert_eq!(all, expected);

    // Nothing changed: an empty delta and a fresh link.
    let quiet = dv.get(&delta_link).await;
    assert_eq!(quiet.status, StatusCode::OK, "{}", quiet.body);
    assert_eq!(quiet.body["value"], json!([]));
    assert!(
        quiet.body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$delta")
    );
    let quiet_link = quiet.body["@odata.deltaLink"].as_str().unwrap().to_owned();

    // Update A, delete B, create D: all three show up in the next delta.
    let reply = dv
        .patch(
            &format!("accounts({a})"),
            json!({ "name": "A2" }),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = dv
        .call(Method::DELETE, &format!("accounts({b})"), None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let d = dv.account("D").await;

    let count = dv
        .get(&quiet_link.replacen("/accounts?", "/accounts/$count?", 1))
        .await;
    assert_eq!(count.status, StatusCode::OK, "{}", count.body);
    assert_eq!(count.body, json!(3));

    let delta = tracked(&dv, &quiet_link, None).await;
    assert_eq!(delta.status, StatusCode::OK, "{}", delta.body);
    let value = delta.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{}", delta.body);
    let row_a = value.iter().find(|r| r["accountid"] == json!(a)).unwrap();
    assert_eq!(row_a["name"], json!("A2"));
    assert!(row_a["@odata.etag"].as_str().is_some());
    assert!(value.iter().any(|r| r["accountid"] == json!(d)));
    let gone = value.iter().find(|r| r["id"] == json!(b)).unwrap();
    assert_eq!(gone["reason"], json!("deleted"));
    assert_eq!(
        gone["@odata.context"],
        json!(format!(
            "{}/api/data/v9.2/$metadata#accounts/$deletedEntity",
            dv.base
        ))
    );
    assert!(value.iter().all(|r| r["accountid"] != json!(c)));
    let next_link = delta.body["@odata.deltaLink"].as_str().unwrap();
    assert_eq!(dv.get(next_link).await.body["value"], json!([]));

    // A delta that needs several pages.
    for name in ["E", "F", "G"] {
        dv.account(name).await;
    }
    let page = tracked(&dv, next_link, Some(2)).await;
    assert_eq!(page.body["value"].as_array().unwrap().len(), 2);
    let more = page.body["@odata.nextLink"].as_str().unwrap().to_owned();
    let rest = tracked(&dv, &more, Some(2)).await;
    assert_eq!(rest.body["value"].as_array().unwrap().len(), 1);
    assert!(rest.body["@odata.deltaLink"].as_str().is_some());

    // Old links stay valid until they expire (7 days): replaying the first one reports
    // everything since, the deleted row included.
    let replay = dv.get(&delta_link).await;
    assert!(
        replay.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == json!(b))
    );

    // Tombstones survive a snapshot (`--data`).
    let state = dv.handle.state();
    let snapshot = state.dataverse.snapshot();
    state.dataverse.reset();
    state.dataverse.restore(snapshot).unwrap();
    assert_eq!(dv.get(&delta_link).await.body, replay.body);
}

#[tokio::test]
async fn change_tracking_refuses_what_the_service_refuses() {
    let dv = Dv::start().await;
    dv.account("A").await;
    for option in [
        "$filter=name eq 'A'",
        "$orderby=name",
        "$top=1",
        "$expand=primarycontactid($select=fullname)",
    ] {
        let reply = tracked(&dv, &format!("accounts?$select=name&{option}"), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{option}");
        let name = option.split('=').next().unwrap();
        assert_eq!(
            reply.message(),
            format!(
                "The \"{name}\" query parameter isn't supported when Change Tracking is enabled."
            )
        );
    }
    // A table without change tracking.
    let reply = tracked(&dv, "transactioncurrencies?$select=isocurrencycode", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .message()
            .starts_with("Change tracking is not enabled for the entity 'transactioncurrency'"),
        "{}",
        reply.message()
    );
    let reply = dv
        .get("EntityDefinitions?$select=LogicalName,ChangeTrackingEnabled&$filter=ChangeTrackingEnabled eq true")
        .await;
    let mut tracked_tables: Vec<&str> = reply.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["LogicalName"].as_str().unwrap())
        .collect();
    tracked_tables.sort_unstable();
    assert_eq!(
        tracked_tables,
        vec![
            "account",
            "contact",
            "cosell_solution",
            "lead",
            "opportunity"
        ]
    );
    // Malformed and expired tokens.
    let reply = dv.get("accounts?$select=name&$deltatoken=garbage").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let first = tracked(&dv, "accounts?$select=name", None).await;
    let link = first.body["@odata.deltaLink"].as_str().unwrap().to_owned();
    let reply = dv
        .client
        .post(format!("{}/_sandbox/clock", dv.base))
        .json(&json!({ "advance_seconds": 8 * 86_400 }))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    let fresh = common::entra_token(&dv.base, &format!("{}/.default", dv.base)).await;
    let reply = dv
        .client
        .get(&link)
        .bearer_auth(fresh)
        .header("Prefer", "odata.track-changes")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        json!("Version stamp associated with the client has expired. Please perform a full sync.")
    );
}
