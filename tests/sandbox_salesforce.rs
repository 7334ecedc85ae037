//! The Salesforce REST API emulator over real HTTP: sObject CRUD, upsert by External ID,
//! the errors Salesforce returns, SOQL with cursors, limits and quotas.

mod common;

use cosell::sandbox::{SandboxHandle, SandboxOptions, start};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const V: &str = "/services/data/v59.0";

struct Sf {
    handle: SandboxHandle,
    client: reqwest::Client,
    token: String,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    /// The `errorCode` of a Salesforce error array.
    fn code(&self) -> &str {
        self.body[0]["errorCode"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body[0]["message"].as_str().unwrap_or("")
    }
}

impl Sf {
    async fn new() -> Sf {
        let handle = start(SandboxOptions::default()).await.unwrap();
        let client = reqwest::Client::new();
        let token = common::salesforce_token(handle.base_url()).await;
        Sf {
            handle,
            client,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(&body.to_string()), &[])
            .await
    }

    async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(&body.to_string()), &[])
            .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    async fn create(&self, object: &str, body: Value) -> String {
        let reply = self.post(&format!("{V}/sobjects/{object}/"), body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    async fn query(&self, soql: &str) -> Reply {
        let q: String = form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        self.get(&format!("{V}/query?q={q}")).await
    }

    /// Records of a query that must succeed, as `field` values.
    async fn column(&self, soql: &str, field: &str) -> Vec<Value> {
        let reply = self.query(soql).await;
        assert_eq!(reply.status, StatusCode::OK, "{soql}: {}", reply.body);
        reply.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[field].clone())
            .collect()
    }

    async fn opportunity(&self, name: &str, extra: Value) -> String {
        let mut body =
            json!({ "Name": name, "StageName": "Prospecting", "CloseDate": "2024-06-30" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.create("Opportunity", body).await
    }
}

#[tokio::test]
async fn versions_and_resources() {
    let sf = Sf::new().await;
    let versions = sf.get("/services/data/").await;
    assert_eq!(versions.status, StatusCode::OK);
    let list = versions.body.as_array().unwrap();
    assert!(list.contains(
        &json!({"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"})
    ));
    assert!(list.contains(
        &json!({"label": "Summer '19", "url": "/services/data/v46.0", "version": "46.0"})
    ));
    let resources = sf.get(&format!("{V}/")).await;
    assert_eq!(resources.body["sobjects"], "/services/data/v59.0/sobjects");
    let unknown = sf.get("/services/data/v99.0/sobjects").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "NOT_FOUND");
}

#[tokio::test]
async fn create_get_update_delete() {
    let sf = Sf::new().await;
    let account = sf
        .create(
            "Account",
            json!({"Name": "Contoso Ltd", "BillingCountryCode": "NL", "BillingPostalCode": "1011"}),
        )
        .await;
    assert!(
        account.starts_with("001") && account.len() == 18,
        "{account}"
    );
    let id = sf
        .opportunity(
            "Deal",
            json!({"AccountId": account, "Amount": 1234.567, "Referral_Id__c": "R-1"}),
        )
        .await;
    assert!(id.starts_with("006"));

    let got = sf.get(&format!("{V}/sobjects/Opportunity/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body["attributes"],
        json!({"type": "Opportunity", "url": format!("{V}/sobjects/Opportunity/{id}")})
    );
    assert_eq!(got.body["Id"], id);
    assert_eq!(
        got.body["Amount"], 1234.57,
        "currency is rounded to its scale"
    );
    assert_eq!(got.body["CurrencyIsoCode"], "USD");
    assert_eq!(got.body["Sync_With_Partner_Center__c"], false);
    assert_eq!(got.body["IsClosed"], false);
    assert_eq!(got.body["Probability"], 10.0);
    assert_eq!(got.body["Description"], Value::Null);
    let created = got.body["CreatedDate"].as_str().unwrap();
    assert!(
        created.len() == 28 && created.ends_with("+0000"),
        "{created}"
    );

    // The 15-character id and a lower-cased 18-character id name the same record.
    let short = sf
        .get(&format!(
            "{V}/sobjects/Opportunity/{}?fields=Name,StageName",
            &id[..15]
        ))
        .await;
    assert_eq!(short.body["Name"], "Deal");
    assert!(short.body.get("Amount").is_none());
    let lower = sf
        .get(&format!("{V}/sobjects/Opportunity/{}", id.to_lowercase()))
        .await;
    assert_eq!(lower.status, StatusCode::OK);

    let account_got = sf.get(&format!("{V}/sobjects/Account/{account}")).await;
    assert_eq!(
        account_got.body["BillingCountry"], "Netherlands",
        "country name follows the code"
    );

    let patched = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"StageName": "Closed Won", "Description": "won"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::NO_CONTENT);
    assert_eq!(patched.body, Value::Null);
    let got = sf.get(&format!("{V}/sobjects/Opportunity/{id}")).await;
    assert_eq!(got.body["IsWon"], true);
    assert_eq!(got.body["IsClosed"], true);
    assert_eq!(got.body["Probability"], 100.0);
    assert_eq!(
        got.body["Name"], "Deal",
        "fields not in the body are unchanged"
    );

    // POST with ?_HttpMethod=PATCH is an update.
    let tunnelled = sf
        .post(
            &format!("{V}/sobjects/Opportunity/{id}?_HttpMethod=PATCH"),
            json!({"NextStep": "call"}),
        )
        .await;
    assert_eq!(tunnelled.status, StatusCode::NO_CONTENT);

    assert_eq!(
        sf.delete(&format!("{V}/sobjects/Opportunity/{id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for reply in [
        sf.get(&format!("{V}/sobjects/Opportunity/{id}")).await,
        sf.patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"Name": "x"}),
        )
        .await,
        sf.delete(&format!("{V}/sobjects/Opportunity/{id}")).await,
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(
            reply.body,
            json!([{"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}])
        );
    }

    let missing = sf
        .get(&format!("{V}/sobjects/Opportunity/006Dn0000000999AAA"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.message(), "The requested resource does not exist");
    let not_an_id = sf.get(&format!("{V}/sobjects/Opportunity/bogus")).await;
    assert_eq!(not_an_id.status, StatusCode::NOT_FOUND);
    assert_eq!(
        not_an_id.message(),
        "Provided external ID field does not exist or is not accessible: bogus"
    );
    let no_type = sf
        .post(&format!("{V}/sobjects/Nope__c"), json!({"Name": "x"}))
        .await;
    assert_eq!(no_type.status, StatusCode::NOT_FOUND);
    assert_eq!(no_type.code(), "NOT_FOUND");
}

#[tokio::test]
async fn deleting_an_account_cascades_and_clears_lookups() {
    let sf = Sf::new().await;
    let account = sf.create("Account", json!({"Name": "Fabrikam"})).await;
    let opportunity = sf.opportunity("Child", json!({"AccountId": account})).await;
    let solution = sf
        .create(
            "Microsoft_Solution__c",
            json!({"Name": "S", "Solution_Id__c": "SOL-1", "Opportunity__c": opportunity}),
        )
        .await;
    assert_eq!(
        sf.delete(&format!("{V}/sobjects/Account/{account}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sf.get(&format!("{V}/sobjects/Opportunity/{opportunity}"))
            .await
            .code(),
        "ENTITY_IS_DELETED"
    );
    let solution = sf
        .get(&format!("{V}/sobjects/Microsoft_Solution__c/{solution}"))
        .await;
    assert_eq!(solution.status, StatusCode::OK);
    assert_eq!(solution.body["Opportunity__c"], Value::Null);
    // A lookup to a deleted record is refused.
    let reply = sf
        .post(
            &format!("{V}/sobjects/Contact"),
            json!({"LastName": "X", "AccountId": account}),
        )
        .await;
    assert_eq!(reply.code(), "ENTITY_IS_DELETED");
}

#[tokio::test]
async fn upsert_by_referral_id_creates_then_updates() {
    let sf = Sf::new().await;
    let path = format!("{V}/sobjects/Opportunity/Referral_Id__c/ref-42");
    let first = sf
        .patch(
            &path,
            json!({"Name": "From PC", "StageName": "On Hold", "CloseDate": "2024-09-01"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["created"], true);
    assert_eq!(first.body["success"], true);
    assert_eq!(first.body["errors"], json!([]));
    let id = first.body["id"].as_str().unwrap().to_owned();

    let second = sf
        .patch(&path, json!({"Amount": 5000, "Referral_Id__c": "ref-42"}))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(
        second.body,
        json!({"id": id, "success": true, "errors": [], "created": false})
    );

    let count = sf
        .query("SELECT COUNT() FROM Opportunity WHERE Referral_Id__c = 'REF-42'")
        .await;
    assert_eq!(
        count.body["totalSize"], 1,
        "no duplicate, matched case-insensitively"
    );
    let by_key = sf.get(&path).await;
    assert_eq!(by_key.body["Amount"], 5000.0);
    assert_eq!(by_key.body["StageName"], "On Hold");

    // Before v46.0 an update by upsert answers 204 and a create has no `created`.
    let old = sf
        .patch(
            "/services/data/v45.0/sobjects/Opportunity/Referral_Id__c/ref-42",
            json!({"Amount": 1}),
        )
        .await;
    assert_eq!(old.status, StatusCode::NO_CONTENT);

    let mismatch = sf.patch(&path, json!({"Referral_Id__c": "other"})).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    let not_external = sf
        .patch(&format!("{V}/sobjects/Opportunity/Name/x"), json!({}))
        .await;
    assert_eq!(not_external.status, StatusCode::NOT_FOUND);
    assert_eq!(
        not_external.message(),
        "Provided external ID field does not exist or is not accessible: Name"
    );
    let missing_required = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/Referral_Id__c/new"),
            json!({"Name": "n"}),
        )
        .await;
    assert_eq!(missing_required.code(), "REQUIRED_FIELD_MISSING");
    let update_only = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/Referral_Id__c/none?updateOnly=true"),
            json!({"Name": "n"}),
        )
        .await;
    assert_eq!(update_only.status, StatusCode::NOT_FOUND);

    // Several matches on a non-unique External ID: 300 with the records' URLs.
    let a = sf
        .create(
            "Microsoft_Solution__c",
            json!({"Name": "A", "Solution_Id__c": "SOL-9"}),
        )
        .await;
    let b = sf
        .create(
            "Microsoft_Solution__c",
            json!({"Name": "B", "Solution_Id__c": "SOL-9"}),
        )
        .await;
    let many = sf
        .patch(
            &format!("{V}/sobjects/Microsoft_Solution__c/Solution_Id__c/SOL-9"),
            json!({"Name": "C"}),
        )
        .await;
    assert_eq!(many.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(
        many.body,
        json!([
            format!("{V}/sobjects/Microsoft_Solution__c/{a}"),
            format!("{V}/sobjects/Microsoft_Solution__c/{b}")
        ])
    );
}

#[tokio::test]
async fn create_errors_match_salesforce() {
    let sf = Sf::new().await;
    let sf_ref = &sf;
    let post = |body: &str| {
        let body = body.to_owned();
        async move {
            sf_ref
                .send(
                    Method::POST,
                    &format!("{V}/sobjects/Opportunity"),
                    Some(&body),
                    &[],
                )
                .await
        }
    };

    let reply =
        post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","Foo__c":1}"#).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        json!([{"message": "No such column 'Foo__c' on sobject of type Opportunity", "errorCode": "INVALID_FIELD", "fields": []}])
    );

    let reply = post(r#"{"Id":"006Dn0000000001AAA","Name":"x"}"#).await;
    assert_eq!(reply.code(), "INVALID_FIELD");
    assert_eq!(
        reply.message(),
        "The Id field should not be specified in the sobject data."
    );

    let reply = post(r#"{"StageName":"Prospecting"}"#).await;
    assert_eq!(
        reply.body,
        json!([{"message": "Required fields are missing: [Name, CloseDate]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["Name", "CloseDate"]}])
    );

    let reply = post(r#"{"Name":"x","StageName":"Dreaming","CloseDate":"2024-01-01"}"#).await;
    assert_eq!(
        reply.body,
        json!([{"message": "StageName: bad value for restricted picklist field: Dreaming", "errorCode": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "fields": ["StageName"]}])
    );

    let long = "x".repeat(121);
    let reply = post(
        &json!({"Name": long, "StageName": "Prospecting", "CloseDate": "2024-01-01"}).to_string(),
    )
    .await;
    assert_eq!(reply.code(), "STRING_TOO_LONG");
    assert_eq!(reply.body[0]["fields"], json!(["Name"]));

    let reply = post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"abc"}"#).await;
    assert_eq!(reply.code(), "JSON_PARSER_ERROR");
    assert!(
        reply
            .message()
            .starts_with("Cannot deserialize instance of date from VALUE_STRING value abc"),
        "{}",
        reply.message()
    );
    let reply =
        post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","Amount":"lots"}"#)
            .await;
    assert_eq!(reply.code(), "JSON_PARSER_ERROR");
    let reply = post(r#"{"Name":"x""#).await;
    assert_eq!(reply.code(), "JSON_PARSER_ERROR");
    let reply = post("").await;
    assert_eq!(reply.code(), "JSON_PARSER_ERROR");

    let reply =
        post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","IsClosed":true}"#)
            .await;
    assert_eq!(reply.code(), "INVALID_FIELD_FOR_INSERT_UPDATE");
    assert_eq!(reply.body[0]["fields"], json!(["IsClosed"]));

    let reply = post(
        r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","AccountId":"nope"}"#,
    )
    .await;
    assert_eq!(reply.code(), "MALFORMED_ID");
    let reply = post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","AccountId":"001Dn0000000999AAA"}"#).await;
    assert_eq!(reply.code(), "INVALID_CROSS_REFERENCE_KEY");
    let reply = post(r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","CurrencyIsoCode":"XXX"}"#).await;
    assert_eq!(reply.code(), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");

    sf.opportunity("first", json!({"Referral_Id__c": "dup"}))
        .await;
    let reply = post(
        r#"{"Name":"x","StageName":"Prospecting","CloseDate":"2024-01-01","Referral_Id__c":"DUP"}"#,
    )
    .await;
    assert_eq!(reply.code(), "DUPLICATE_VALUE");
    assert!(reply.message().starts_with(
        "duplicate value found: Referral_Id__c duplicates value on record with id: 006"
    ));

    let reply = sf
        .post(
            &format!("{V}/sobjects/Contact"),
            json!({"LastName": "L", "Email": "not-an-email"}),
        )
        .await;
    assert_eq!(reply.code(), "INVALID_EMAIL_ADDRESS");
    let reply = sf
        .post(
            &format!("{V}/sobjects/Account"),
            json!({"Name": "A", "BillingCountryCode": "XX"}),
        )
        .await;
    assert_eq!(reply.code(), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    let reply = sf
        .post(&format!("{V}/sobjects/Lead"), json!({"LastName": "L"}))
        .await;
    assert_eq!(
        reply.body[0]["fields"],
        json!(["Company"]),
        "Status has a default"
    );

    // Updates: required fields cannot be cleared.
    let id = sf.opportunity("y", json!({})).await;
    let reply = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"Name": null}),
        )
        .await;
    assert_eq!(reply.code(), "REQUIRED_FIELD_MISSING");
    let reply = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"CreatedDate": "2024-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(reply.code(), "INVALID_FIELD_FOR_INSERT_UPDATE");
}

/// Twelve opportunities with known values for the operator tests.
async fn fixtures(sf: &Sf) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..12 {
        let stage = ["Prospecting", "Qualification", "Closed Won"][i % 3];
        let body = json!({
            "Name": format!("Deal {i:02} {}", if i % 2 == 0 { "Contoso" } else { "Fabrikam" }),
            "StageName": stage,
            "CloseDate": format!("2024-{:02}-15", i + 1),
            "Amount": if i == 11 { Value::Null } else { json!(1000 * (i + 1)) },
            "Sync_With_Partner_Center__c": i < 4,
            "Referral_Id__c": format!("R-{i}"),
        });
        ids.push(sf.create("Opportunity", body).await);
    }
    ids
}

#[tokio::test]
async fn soql_operators() {
    let sf = Sf::new().await;
    let ids = fixtures(&sf).await;
    let count = |soql: &'static str| {
        let sf = &sf;
        async move {
            let reply = sf.query(soql).await;
            assert_eq!(reply.status, StatusCode::OK, "{soql}: {}", reply.body);
            reply.body["totalSize"].as_u64().unwrap()
        }
    };
    assert_eq!(count("SELECT Id FROM Opportunity").await, 12);
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE StageName = 'Closed Won'").await,
        4
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE StageName = 'closed won'").await,
        4,
        "case-insensitive"
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE StageName != 'Closed Won'").await,
        8
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE StageName <> 'Closed Won'").await,
        8
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount > 5000").await,
        6
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount >= 5000").await,
        7
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount < 2000").await,
        1
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount <= 2000").await,
        2
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount = null").await,
        1
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Amount != null").await,
        11
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Name LIKE '%contoso'").await,
        6
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Name LIKE 'Deal 1_ %'").await,
        2
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Referral_Id__c IN ('R-1', 'R-2', 'nope')").await,
        2
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Referral_Id__c NOT IN ('R-1', 'R-2')").await,
        10
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Sync_With_Partner_Center__c = true").await,
        4
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE Sync_With_Partner_Center__c = false AND (StageName = 'Prospecting' OR Amount > 10000)").await,
        3
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE NOT StageName = 'Prospecting'").await,
        8
    );
    assert_eq!(count("SELECT Id FROM Opportunity WHERE NOT (StageName = 'Prospecting' OR StageName = 'Qualification')").await, 4);
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CloseDate > 2024-06-30").await,
        6
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CloseDate = 2024-03-15").await,
        1
    );
    assert_eq!(
        count(
            "select id from opportunity where closedate >= 2024-03-15 and closedate <= 2024-04-15"
        )
        .await,
        2
    );
    // Date-time literals: Z, +00:00 (simple-salesforce) and other offsets.
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CreatedDate > 2020-01-01T00:00:00Z").await,
        12
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CreatedDate > 2020-01-01T00:00:00+00:00").await,
        12
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE SystemModstamp < 2020-01-01T00:00:00-05:00").await,
        0
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CreatedDate = TODAY").await,
        12
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CreatedDate = LAST_N_DAYS:3").await,
        12
    );
    assert_eq!(
        count("SELECT Id FROM Opportunity WHERE CreatedDate < YESTERDAY").await,
        0
    );
    let id = &ids[3];
    let short = &id[..15];
    assert_eq!(
        count_dyn(
            &sf,
            &format!("SELECT Id FROM Opportunity WHERE Id = '{short}'")
        )
        .await,
        1
    );
    assert_eq!(
        count_dyn(
            &sf,
            &format!("SELECT Id FROM Opportunity WHERE Id IN ('{id}')")
        )
        .await,
        1
    );

    // ORDER BY, NULLS LAST, LIMIT, OFFSET, canonical field names in results.
    let amounts = sf
        .column(
            "SELECT amount FROM Opportunity ORDER BY Amount DESC NULLS LAST LIMIT 3",
            "Amount",
        )
        .await;
    assert_eq!(amounts, vec![json!(11000.0), json!(10000.0), json!(9000.0)]);
    let amounts = sf
        .column(
            "SELECT Amount FROM Opportunity ORDER BY Amount ASC NULLS FIRST LIMIT 2",
            "Amount",
        )
        .await;
    assert_eq!(amounts, vec![Value::Null, json!(1000.0)]);
    let names = sf
        .column(
            "SELECT Name FROM Opportunity ORDER BY StageName, Name DESC LIMIT 2 OFFSET 1",
            "Name",
        )
        .await;
    assert_eq!(
        names,
        vec![json!("Deal 08 Contoso"), json!("Deal 05 Fabrikam")]
    );
    let count = sf
        .query("SELECT COUNT() FROM Opportunity WHERE IsClosed = true")
        .await;
    assert_eq!(
        count.body,
        json!({"totalSize": 4, "done": true, "records": []})
    );

    // String escapes.
    sf.opportunity("O'Brien \\ Sons", json!({})).await;
    assert_eq!(
        sf.column(
            r"SELECT Name FROM Opportunity WHERE Name = 'O\'Brien \\ Sons'",
            "Name"
        )
        .await
        .len(),
        1
    );
}

async fn count_dyn(sf: &Sf, soql: &str) -> u64 {
    let reply = sf.query(soql).await;
    assert_eq!(reply.status, StatusCode::OK, "{soql}: {}", reply.body);
    reply.body["totalSize"].as_u64().unwrap()
}

#[tokio::test]
async fn soql_relationships_and_record_shape() {
    let sf = Sf::new().await;
    let account = sf
        .create(
            "Account",
            json!({"Name": "Wingtip", "BillingPostalCode": "98052"}),
        )
        .await;
    let opportunity = sf.opportunity("Rel", json!({"AccountId": account})).await;
    sf.opportunity("Orphan", json!({})).await;
    sf.create(
        "Microsoft_Solution__c",
        json!({"Name": "S1", "Solution_Id__c": "SOL-1", "Opportunity__c": opportunity}),
    )
    .await;
    let reply = sf
        .query("SELECT Id, Name, Account.Name, Account.BillingPostalCode FROM Opportunity ORDER BY Name")
        .await;
    let records = reply.body["records"].as_array().unwrap();
    assert_eq!(records[0]["Account"], Value::Null);
    assert_eq!(records[1]["Account"]["Name"], "Wingtip");
    assert_eq!(records[1]["Account"]["attributes"]["type"], "Account");
    assert_eq!(records[1]["Account"]["BillingPostalCode"], "98052");
    let keys: Vec<&String> = records[1].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);
    let solutions = sf
        .column("SELECT Opportunity__r.Account.Name FROM Microsoft_Solution__c WHERE Opportunity__r.Name = 'Rel'", "Opportunity__r")
        .await;
    assert_eq!(solutions[0]["Account"]["Name"], "Wingtip");
    let account_match = sf
        .column(
            "SELECT Id FROM Account WHERE Name = 'wingtip' AND BillingPostalCode = '98052'",
            "Id",
        )
        .await;
    assert_eq!(account_match, vec![json!(account)]);
}

#[tokio::test]
async fn soql_child_subquery_returns_children_with_attributes() {
    let sf = Sf::new().await;
    let opportunity = sf.opportunity("Parent", json!({})).await;
    let lonely = sf.opportunity("Lonely", json!({})).await;
    let mut solutions = Vec::new();
    for (name, solution_id, area) in [
        ("Beta", "SOL-2", "Azure"),
        ("Alpha", "SOL-1", "Security"),
        ("Gamma", "SOL-3", "Azure"),
    ] {
        solutions.push(
            sf.create(
                "Microsoft_Solution__c",
                json!({"Name": name, "Solution_Id__c": solution_id, "Solution_Area__c": area, "Opportunity__c": opportunity}),
            )
            .await,
        );
    }
    // A deleted child and a child of another parent are not among the children.
    let gone = sf
        .create(
            "Microsoft_Solution__c",
            json!({"Name": "Deleted", "Solution_Id__c": "SOL-9", "Opportunity__c": opportunity}),
        )
        .await;
    let reply = sf
        .delete(&format!("{V}/sobjects/Microsoft_Solution__c/{gone}"))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let other = sf.opportunity("Other", json!({})).await;
    sf.create(
        "Microsoft_Solution__c",
        json!({"Name": "Elsewhere", "Solution_Id__c": "SOL-8", "Opportunity__c": other}),
    )
    .await;

    let reply = sf
        .query(&format!(
            "SELECT Id, Name, (SELECT Solution_Id__c, Name FROM Microsoft_Solutions__r) FROM Opportunity WHERE Id = '{opportunity}'"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["totalSize"], 1);
    let record = &reply.body["records"][0];
    // (serde_json's map sorts keys here, so this compares the member set; the raw text
    // below checks the order.)
    let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["Id", "Microsoft_Solutions__r", "Name", "attributes"]);
    let q: String = form_urlencoded::byte_serialize(
        format!("SELECT Name, (SELECT Name, Solution_Id__c FROM Microsoft_Solutions__r LIMIT 1), Id FROM Opportunity WHERE Id = '{opportunity}'").as_bytes(),
    )
    .collect();
    let text = sf
        .client
        .get(sf.url(&format!("{V}/query?q={q}")))
        .bearer_auth(&sf.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected = format!(
        r#""Name":"Parent","Microsoft_Solutions__r":{{"totalSize":1,"done":true,"records":[{{"attributes":{{"type":"Microsoft_Solution__c","url":"{V}/sobjects/Microsoft_Solution__c/{}"}},"Name":"Beta","Solution_Id__c":"SOL-2"}}]}},"Id":"{opportunity}"}}"#,
        solutions[0]
    );
    assert!(text.contains(&expected), "members in select order: {text}");
    let children = &record["Microsoft_Solutions__r"];
    assert_eq!(children["totalSize"], 3);
    assert_eq!(children["done"], true);
    let records = children["records"].as_array().unwrap();
    assert_eq!(
        records[0],
        json!({
            "attributes": {
                "type": "Microsoft_Solution__c",
                "url": format!("{V}/sobjects/Microsoft_Solution__c/{}", solutions[0]),
            },
            "Solution_Id__c": "SOL-2",
            "Name": "Beta",
        })
    );
    let names: Vec<&Value> = records.iter().map(|r| &r["Name"]).collect();
    assert_eq!(
        names,
        ["Beta", "Alpha", "Gamma"],
        "creation order by default"
    );

    // No children: the relationship is null, not an empty result.
    let reply = sf
        .query(&format!(
            "SELECT Id, (SELECT Name FROM Microsoft_Solutions__r) FROM Opportunity WHERE Id = '{lonely}'"
        ))
        .await;
    assert_eq!(
        reply.body["records"][0]["Microsoft_Solutions__r"],
        Value::Null
    );
    assert!(
        reply.body["records"][0]
            .as_object()
            .unwrap()
            .contains_key("Microsoft_Solutions__r")
    );
}

#[tokio::test]
async fn soql_child_subquery_where_order_by_and_limit() {
    let sf = Sf::new().await;
    let account = sf.create("Account", json!({"Name": "Fabrikam"})).await;
    let opportunity = sf
        .opportunity("Parent", json!({"AccountId": account}))
        .await;
    for (name, area, value) in [
        ("Beta", "Azure", 20),
        ("Alpha", "Security", 10),
        ("Gamma", "Azure", 30),
        ("Delta", "Azure", 40),
    ] {
        sf.create(
            "Microsoft_Solution__c",
            json!({"Name": name, "Solution_Id__c": format!("SOL-{name}"), "Solution_Area__c": area, "Deal_Value__c": value, "Opportunity__c": opportunity}),
        )
        .await;
    }
    let names = |body: &Value| -> Vec<String> {
        body["records"][0]["Microsoft_Solutions__r"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["Name"].as_str().unwrap().to_owned())
            .collect()
    };
    let reply = sf
        .query(&format!(
            "select id, (select name from microsoft_solutions__r where solution_area__c = 'azure' and deal_value__c < 40 order by name desc limit 1) from opportunity where id = '{opportunity}'"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(names(&reply.body), ["Gamma"]);
    assert_eq!(
        reply.body["records"][0]["Microsoft_Solutions__r"]["totalSize"], 1,
        "totalSize counts the children returned"
    );
    let reply = sf
        .query(&format!(
            "SELECT Id, (SELECT Name FROM Microsoft_Solutions__r ORDER BY Deal_Value__c DESC LIMIT 3) FROM Opportunity WHERE Id = '{opportunity}'"
        ))
        .await;
    assert_eq!(names(&reply.body), ["Delta", "Gamma", "Beta"]);
    // A filter matching none gives null.
    let reply = sf
        .query(&format!(
            "SELECT Id, (SELECT Name FROM Microsoft_Solutions__r WHERE Solution_Area__c = 'Modern Work') FROM Opportunity WHERE Id = '{opportunity}'"
        ))
        .await;
    assert_eq!(
        reply.body["records"][0]["Microsoft_Solutions__r"],
        Value::Null
    );
    // OFFSET inside a subquery needs LIMIT 1 on the outer query.
    let reply = sf
        .query(&format!(
            "SELECT Id, (SELECT Name FROM Microsoft_Solutions__r ORDER BY Name LIMIT 2 OFFSET 1) FROM Opportunity WHERE Id = '{opportunity}' LIMIT 1"
        ))
        .await;
    assert_eq!(names(&reply.body), ["Beta", "Delta"]);
    let reply = sf
        .query("SELECT Id, (SELECT Name FROM Microsoft_Solutions__r OFFSET 1) FROM Opportunity")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "MALFORMED_QUERY");

    // Standard relationships, several per query, with parent fields of the children and
    // the limit applied per parent.
    let contact = sf
        .create("Contact", json!({"LastName": "Lee", "AccountId": account}))
        .await;
    sf.opportunity(
        "Second",
        json!({"AccountId": account, "ContactId": contact}),
    )
    .await;
    let reply = sf
        .query(
            "SELECT Name, (SELECT LastName, Account.Name FROM Contacts), (SELECT Name FROM Opportunities ORDER BY Name LIMIT 1) FROM Account ORDER BY Name",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let fabrikam = &reply.body["records"][0];
    assert_eq!(fabrikam["Contacts"]["records"][0]["LastName"], "Lee");
    assert_eq!(
        fabrikam["Contacts"]["records"][0]["Account"]["Name"],
        "Fabrikam"
    );
    assert_eq!(fabrikam["Opportunities"]["totalSize"], 1);
    assert_eq!(fabrikam["Opportunities"]["records"][0]["Name"], "Parent");
    let reply = sf
        .query("SELECT Id, (SELECT Name FROM Opportunities) FROM Contact")
        .await;
    assert_eq!(
        reply.body["records"][0]["Opportunities"]["records"][0]["Name"],
        "Second"
    );
}

#[tokio::test]
async fn soql_child_subquery_errors() {
    let sf = Sf::new().await;
    let reply = sf
        .query("SELECT Id, (SELECT Name FROM Solutions__r) FROM Opportunity")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "INVALID_TYPE");
    assert_eq!(
        reply.message(),
        "\nSELECT Id, (SELECT Name FROM Solutions__r) FROM Opportunity\n                             ^\nERROR at Row:1:Column:30\nDidn't understand relationship 'Solutions__r' in FROM part of query call. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
    );
    // A parent relationship is not a child relationship.
    let reply = sf
        .query("SELECT Id, (SELECT Name FROM Opportunity__r) FROM Microsoft_Solution__c")
        .await;
    assert_eq!(reply.code(), "INVALID_TYPE");
    let reply = sf
        .query("SELECT Id, (SELECT Nope__c FROM Microsoft_Solutions__r) FROM Opportunity")
        .await;
    assert_eq!(reply.code(), "INVALID_FIELD");
    assert!(
        reply
            .message()
            .contains("No such column 'Nope__c' on entity 'Microsoft_Solution__c'"),
        "{}",
        reply.message()
    );
    let reply = sf
        .query("SELECT Id, (SELECT Id, (SELECT Id FROM Opportunities) FROM Contacts) FROM Account")
        .await;
    assert_eq!(reply.code(), "MALFORMED_QUERY", "one level of subquery");
}

#[tokio::test]
async fn soql_errors() {
    let sf = Sf::new().await;
    let reply = sf.query("SELECT Foo FROM Account").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "INVALID_FIELD");
    assert_eq!(
        reply.message(),
        "\nSELECT Foo FROM Account\n       ^\nERROR at Row:1:Column:8\nNo such column 'Foo' on entity 'Account'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
    );
    let reply = sf.query("SELECT Id FROM Account WHERE").await;
    assert_eq!(reply.code(), "MALFORMED_QUERY");
    let reply = sf.query("SELECT Id Account").await;
    assert_eq!(reply.code(), "MALFORMED_QUERY");
    assert!(
        reply.message().ends_with("unexpected token: 'Account'"),
        "{}",
        reply.message()
    );
    let reply = sf
        .query("SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'")
        .await;
    assert_eq!(reply.code(), "MALFORMED_QUERY");
    let reply = sf.query("SELECT Id FROM Nope").await;
    assert_eq!(reply.code(), "INVALID_TYPE");
    assert!(
        reply
            .message()
            .contains("sObject type 'Nope' is not supported.")
    );
    let reply = sf
        .query("SELECT Id FROM Opportunity WHERE CloseDate > 2024-01-01T00:00:00Z")
        .await;
    assert_eq!(reply.code(), "INVALID_FIELD");
    assert!(
        reply
            .message()
            .contains("value of filter criterion for field 'CloseDate' must be of type date")
    );
    let reply = sf
        .query("SELECT Id FROM Opportunity WHERE CreatedDate > 2024-01-01")
        .await;
    assert_eq!(reply.code(), "INVALID_FIELD");
    let reply = sf
        .query("SELECT Id FROM Opportunity WHERE Amount = '5'")
        .await;
    assert_eq!(reply.code(), "INVALID_FIELD");
    let reply = sf
        .query("SELECT Id FROM Opportunity WHERE Id = 'xyz'")
        .await;
    assert_eq!(reply.code(), "INVALID_QUERY_FILTER_OPERATOR");
    let reply = sf
        .query("SELECT Id FROM Opportunity WHERE Description = 'x'")
        .await;
    assert_eq!(
        reply.code(),
        "INVALID_FIELD",
        "long text areas cannot be filtered"
    );
    let reply = sf.get(&format!("{V}/query")).await;
    assert_eq!(reply.code(), "MALFORMED_QUERY");
    let reply = sf.get(&format!("{V}/query/01gDn0000000000AAA-2000")).await;
    assert_eq!(reply.code(), "INVALID_QUERY_LOCATOR");
}

#[tokio::test]
async fn query_pages_with_batch_size_and_query_all_sees_deleted() {
    let sf = Sf::new().await;
    // 650 opportunities through sObject Collections, 200 a call.
    let mut all = Vec::new();
    for chunk in 0..4 {
        let n = if chunk == 3 { 50 } else { 200 };
        let records: Vec<Value> = (0..n)
            .map(|i| {
                json!({"attributes": {"type": "Opportunity"}, "Name": format!("Bulk {chunk}-{i}"), "StageName": "Qualification", "CloseDate": "2025-01-31"})
            })
            .collect();
        let reply = sf
            .post(
                &format!("{V}/composite/sobjects"),
                json!({"allOrNone": true, "records": records}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        for result in reply.body.as_array().unwrap() {
            assert_eq!(result["success"], true, "{result}");
            all.push(result["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(all.len(), 650);

    let q: String = form_urlencoded::byte_serialize(b"SELECT Id, Name FROM Opportunity").collect();
    let options = [("Sforce-Query-Options", "batchSize=200")];
    let mut reply = sf
        .send(Method::GET, &format!("{V}/query/?q={q}"), None, &options)
        .await;
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["totalSize"], 650);
        pages += 1;
        let records = reply.body["records"].as_array().unwrap();
        seen.extend(records.iter().map(|r| r["Id"].as_str().unwrap().to_owned()));
        if reply.body["done"] == true {
            assert!(reply.body.get("nextRecordsUrl").is_none());
            break;
        }
        assert_eq!(records.len(), 200);
        let next = reply.body["nextRecordsUrl"].as_str().unwrap().to_owned();
        assert!(
            next.starts_with("/services/data/v59.0/query/01g"),
            "path only: {next}"
        );
        reply = sf.get(&next).await;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "every record once, in creation order");

    // Default batch is 2000: one page.
    let reply = sf.query("SELECT Id FROM Opportunity").await;
    assert_eq!(reply.body["done"], true);
    assert_eq!(reply.body["records"].as_array().unwrap().len(), 650);

    // Deleted rows: gone from query, present in queryAll with IsDeleted.
    assert_eq!(
        sf.delete(&format!("{V}/sobjects/Opportunity/{}", all[0]))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let soql: String = form_urlencoded::byte_serialize(
        format!(
            "SELECT Id, IsDeleted FROM Opportunity WHERE Id = '{}'",
            all[0]
        )
        .as_bytes(),
    )
    .collect();
    let live = sf.get(&format!("{V}/query?q={soql}")).await;
    assert_eq!(live.body["totalSize"], 0);
    let everything = sf.get(&format!("{V}/queryAll?q={soql}")).await;
    assert_eq!(everything.body["totalSize"], 1);
    assert_eq!(everything.body["records"][0]["IsDeleted"], true);

    // Replication resources see the delete once the minute it happened in is covered.
    let window = "start=2020-01-01T00%3A00%3A00%2B00%3A00&end=2100-01-01T00%3A00%3A00%2B00%3A00";
    let clock = sf
        .client
        .post(sf.url("/_sandbox/clock"))
        .json(&json!({"advance_seconds": 120}))
        .send()
        .await
        .unwrap();
    assert!(clock.status().is_success());
    let deleted = sf
        .get(&format!("{V}/sobjects/Opportunity/deleted/?{window}"))
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let gone: Vec<&str> = deleted.body["deletedRecords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(gone, [all[0].as_str()]);
    assert!(
        deleted.body["deletedRecords"][0]["deletedDate"]
            .as_str()
            .unwrap()
            .ends_with("+0000")
    );
    let updated = sf
        .get(&format!("{V}/sobjects/Opportunity/updated/?{window}"))
        .await;
    assert!(
        updated.body["latestDateCovered"]
            .as_str()
            .unwrap()
            .ends_with(":00.000+0000")
    );
    let changed = updated.body["ids"].as_array().unwrap();
    assert_eq!(changed.len(), 649);
    assert!(!changed.contains(&json!(all[0])));
    assert_eq!(
        sf.get(&format!("{V}/sobjects/Opportunity/updated/"))
            .await
            .code(),
        "MISSING_ARGUMENT"
    );
}

#[tokio::test]
async fn collections_all_or_none() {
    let sf = Sf::new().await;
    let good = json!({"attributes": {"type": "Account"}, "Name": "Good"});
    let bad = json!({"attributes": {"type": "Account"}});
    let reply = sf
        .post(
            &format!("{V}/composite/sobjects"),
            json!({"allOrNone": true, "records": [good, bad]}),
        )
        .await;
    assert_eq!(reply.body[0]["success"], false);
    assert_eq!(
        reply.body[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(
        reply.body[1]["errors"][0]["statusCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(
        sf.query("SELECT COUNT() FROM Account").await.body["totalSize"],
        0
    );

    let reply = sf
        .post(
            &format!("{V}/composite/sobjects"),
            json!({"allOrNone": false, "records": [good, bad]}),
        )
        .await;
    assert_eq!(reply.body[0]["success"], true);
    assert_eq!(reply.body[1]["success"], false);
    let id = reply.body[0]["id"].as_str().unwrap().to_owned();
    let reply = sf
        .patch(
            &format!("{V}/composite/sobjects"),
            json!({"records": [{"attributes": {"type": "Account"}, "id": id, "Phone": "123"}]}),
        )
        .await;
    assert_eq!(
        reply.body,
        json!([{"id": id, "success": true, "errors": []}])
    );
    assert_eq!(
        sf.get(&format!("{V}/sobjects/Account/{id}")).await.body["Phone"],
        "123"
    );
    let too_many: Vec<Value> = (0..201).map(|_| good.clone()).collect();
    let reply = sf
        .post(
            &format!("{V}/composite/sobjects"),
            json!({"records": too_many}),
        )
        .await;
    assert_eq!(reply.code(), "EXCEEDED_ID_LIMIT");
}

#[tokio::test]
async fn describe_lists_fields() {
    let sf = Sf::new().await;
    let reply = sf.get(&format!("{V}/sobjects/Opportunity/describe")).await;
    assert_eq!(reply.body["keyPrefix"], "006");
    let fields = reply.body["fields"].as_array().unwrap();
    let stage = fields.iter().find(|f| f["name"] == "StageName").unwrap();
    assert_eq!(stage["restrictedPicklist"], true);
    assert_eq!(stage["nillable"], false);
    assert!(
        stage["picklistValues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["value"] == "On Hold")
    );
    let referral = fields
        .iter()
        .find(|f| f["name"] == "Referral_Id__c")
        .unwrap();
    assert_eq!(referral["externalId"], true);
    let global = sf.get(&format!("{V}/sobjects")).await;
    let names: Vec<&str> = global.body["sobjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Account",
            "Contact",
            "Lead",
            "Opportunity",
            "Microsoft_Solution__c"
        ]
    );
}

#[tokio::test]
async fn describe_lists_child_relationships() {
    let sf = Sf::new().await;
    let reply = sf.get(&format!("{V}/sobjects/Opportunity/describe")).await;
    assert_eq!(
        reply.body["childRelationships"],
        json!([{
            "cascadeDelete": false,
            "childSObject": "Microsoft_Solution__c",
            "deprecatedAndHidden": false,
            "field": "Opportunity__c",
            "junctionIdListNames": [],
            "junctionReferenceTo": [],
            "relationshipName": "Microsoft_Solutions__r",
            "restrictedDelete": false,
        }])
    );
    let reply = sf.get(&format!("{V}/sobjects/Account/describe")).await;
    let relationships: Vec<(&str, &str, &str, bool)> = reply.body["childRelationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relationshipName"].as_str().unwrap(),
                r["childSObject"].as_str().unwrap(),
                r["field"].as_str().unwrap(),
                r["cascadeDelete"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        relationships,
        [
            ("Contacts", "Contact", "AccountId", true),
            ("Opportunities", "Opportunity", "AccountId", true),
        ]
    );
    // The lookup's own describe keeps the parent-side relationship name.
    let reply = sf
        .get(&format!("{V}/sobjects/Microsoft_Solution__c/describe"))
        .await;
    let lookup = reply.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Opportunity__c")
        .unwrap();
    assert_eq!(lookup["relationshipName"], "Opportunity__r");
    assert_eq!(reply.body["childRelationships"], json!([]));
}

#[tokio::test]
async fn microsoft_status_is_a_writable_text_field() {
    let sf = Sf::new().await;
    let reply = sf.get(&format!("{V}/sobjects/Opportunity/describe")).await;
    let status = reply.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Microsoft_Status__c")
        .unwrap();
    assert_eq!(status["label"], "Microsoft Status");
    assert_eq!(status["type"], "string");
    assert_eq!(status["length"], 100);
    assert_eq!(status["custom"], true);
    assert_eq!(status["createable"], true);
    assert_eq!(status["updateable"], true);
    let id = sf
        .opportunity("Status", json!({"Microsoft_Status__c": "New"}))
        .await;
    let reply = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"Microsoft_Status__c": "Accepted"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let got = sf.get(&format!("{V}/sobjects/Opportunity/{id}")).await;
    assert_eq!(got.body["Microsoft_Status__c"], "Accepted");
    let statuses = sf
        .column(
            "SELECT Microsoft_Status__c FROM Opportunity WHERE Microsoft_Status__c = 'accepted'",
            "Microsoft_Status__c",
        )
        .await;
    assert_eq!(statuses, [json!("Accepted")]);
    let reply = sf
        .patch(
            &format!("{V}/sobjects/Opportunity/{id}"),
            json!({"Microsoft_Status__c": "x".repeat(101)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "STRING_TOO_LONG");
}

#[tokio::test]
async fn limits_and_usage_header_count_calls() {
    let sf = Sf::new().await;
    let first = sf.get(&format!("{V}/limits")).await;
    let header = |reply: &Reply| {
        reply.headers["sforce-limit-info"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header(&first), "api-usage=1/100000");
    assert_eq!(
        first.body["DailyApiRequests"],
        json!({"Max": 100000, "Remaining": 99999})
    );
    let second = sf.get(&format!("{V}/limits/")).await;
    assert_eq!(header(&second), "api-usage=2/100000");
    assert_eq!(second.body["DailyApiRequests"]["Remaining"], 99998);
}

#[tokio::test]
async fn daily_allocation_runs_out_with_403() {
    let sf = Sf::new().await;
    let set = sf
        .client
        .post(sf.url("/_sandbox/faults"))
        .json(&json!({"quota": {"salesforce_daily_requests": 5}}))
        .send()
        .await
        .unwrap();
    assert!(set.status().is_success());
    for _ in 0..5 {
        assert_eq!(sf.get(&format!("{V}/limits")).await.status, StatusCode::OK);
    }
    let refused = sf.query("SELECT Id FROM Account").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "REQUEST_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn calls_without_a_token_get_401() {
    let sf = Sf::new().await;
    let reply = sf
        .client
        .get(sf.url(&format!("{V}/sobjects/Account/describe")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
}

#[tokio::test]
async fn seeded_accounts_match_seed_data_and_survive_snapshots() {
    let sf = Sf::new().await;
    let seeded = sf
        .client
        .post(sf.url("/_sandbox/seed"))
        .json(&json!({"count": 30}))
        .send()
        .await
        .unwrap();
    assert!(seeded.status().is_success());
    let company = cosell::sandbox::seed_data::company(7);
    let soql = format!(
        "SELECT Id, BillingPostalCode, BillingCountryCode FROM Account WHERE Name = '{}'",
        company.name
    );
    let reply = sf.query(&soql).await;
    assert_eq!(reply.body["totalSize"], 1, "{}", reply.body);
    assert_eq!(
        reply.body["records"][0]["BillingPostalCode"],
        company.postal_code
    );
    assert_eq!(
        reply.body["records"][0]["BillingCountryCode"],
        company.country_code
    );
    assert_eq!(
        sf.query("SELECT COUNT() FROM Opportunity").await.body["totalSize"],
        30
    );
    assert_eq!(
        sf.query("SELECT COUNT() FROM Contact").await.body["totalSize"],
        30
    );
    // Seeding again does not duplicate the customers.
    sf.client
        .post(sf.url("/_sandbox/seed"))
        .json(&json!({"count": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        sf.query("SELECT COUNT() FROM Account").await.body["totalSize"],
        30
    );

    let state = &sf.handle.state().salesforce;
    let snapshot = state.snapshot();
    state.reset();
    assert_eq!(
        sf.query("SELECT COUNT() FROM Account").await.body["totalSize"],
        0
    );
    state.restore(snapshot).unwrap();
    assert_eq!(sf.query(&soql).await.body["totalSize"], 1);
    let id = sf.create("Account", json!({"Name": "After restore"})).await;
    assert_eq!(
        sf.query("SELECT COUNT() FROM Account").await.body["totalSize"],
        31
    );
    assert!(
        sf.get(&format!("{V}/sobjects/Account/{id}"))
            .await
            .status
            .is_success()
    );
}

/// HTTP date of a Salesforce date-time, shifted by `delta` seconds.
fn http_date(datetime: &str, delta: i64) -> String {
    use cosell::sandbox::salesforce::conditional::{format_http_date, parse_http_date};
    let exact = cosell::connectors::salesforce::http_date(datetime).unwrap();
    format_http_date(parse_http_date(&exact).unwrap() + delta)
}

async fn last_modified(sf: &Sf, object: &str, id: &str) -> String {
    let reply = sf
        .get(&format!(
            "{V}/sobjects/{object}/{id}?fields=LastModifiedDate"
        ))
        .await;
    reply.body["LastModifiedDate"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn if_unmodified_since_guards_patch_and_delete() {
    let sf = Sf::new().await;
    let id = sf.opportunity("Guarded", json!({})).await;
    let path = format!("{V}/sobjects/Opportunity/{id}");
    let modified = last_modified(&sf, "Opportunity", &id).await;
    let patch = |date: String| {
        let path = path.clone();
        let sf = &sf;
        async move {
            sf.send(
                Method::PATCH,
                &path,
                Some(r#"{"Amount": 5}"#),
                &[("If-Unmodified-Since", &date)],
            )
            .await
        }
    };

    // A second before the last change: modified since → 412, nothing written.
    let refused = patch(http_date(&modified, -1)).await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(refused.code(), "PRECONDITION_FAILED");
    assert!(
        refused.message().contains("modified since"),
        "{}",
        refused.message()
    );
    let record = sf.get(&path).await;
    assert_eq!(record.body["Amount"], Value::Null);

    // The very second of the change (HTTP dates drop the milliseconds): not modified since.
    assert_eq!(
        patch(http_date(&modified, 0)).await.status,
        StatusCode::NO_CONTENT
    );
    let modified = last_modified(&sf, "Opportunity", &id).await;
    assert_eq!(
        patch(http_date(&modified, 60)).await.status,
        StatusCode::NO_CONTENT
    );

    // Invalid dates on a write are a 400.
    let invalid = patch("yesterday".to_owned()).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.code(), "INVALID_HEADER_VALUE");

    // DELETE: refused while stale, done once current.
    let modified = last_modified(&sf, "Opportunity", &id).await;
    let stale = http_date(&modified, -5);
    let refused = sf
        .send(
            Method::DELETE,
            &path,
            None,
            &[("If-Unmodified-Since", &stale)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(sf.get(&path).await.status, StatusCode::OK);
    let current = http_date(&modified, 0);
    let deleted = sf
        .send(
            Method::DELETE,
            &path,
            None,
            &[("If-Unmodified-Since", &current)],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn if_modified_since_answers_304_for_unchanged_rows() {
    let sf = Sf::new().await;
    let id = sf.opportunity("Cached", json!({})).await;
    let path = format!("{V}/sobjects/Opportunity/{id}");
    let modified = last_modified(&sf, "Opportunity", &id).await;
    let get = |date: String| {
        let path = path.clone();
        let sf = &sf;
        async move {
            sf.send(Method::GET, &path, None, &[("If-Modified-Since", &date)])
                .await
        }
    };
    let unchanged = get(http_date(&modified, 0)).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.body, Value::Null);
    let changed = get(http_date(&modified, -1)).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["Name"], "Cached");
    // An unreadable date on a read is ignored.
    assert_eq!(get("soon".to_owned()).await.status, StatusCode::OK);
    // Opportunities carry no ETag.
    assert!(changed.headers.get("etag").is_none());
}

#[tokio::test]
async fn account_etags_with_if_match_and_if_none_match() {
    let sf = Sf::new().await;
    let id = sf.create("Account", json!({"Name": "Tagged"})).await;
    let path = format!("{V}/sobjects/Account/{id}");
    let read = sf.get(&path).await;
    let etag = read.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    // Same tag whichever fields were asked for.
    let partial = sf.get(&format!("{path}?fields=Name")).await;
    assert_eq!(partial.headers["etag"].to_str().unwrap(), etag);

    let patch = |headers: Vec<(&'static str, String)>, name: &'static str| {
        let path = path.clone();
        let sf = &sf;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sf.send(
                Method::PATCH,
                &path,
                Some(&json!({ "Name": name }).to_string()),
                &headers,
            )
            .await
        }
    };

    let wrong = patch(vec![("If-Match", "\"bm90LXRoaXM=\"".into())], "Nope").await;
    assert_eq!(wrong.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(wrong.code(), "PRECONDITION_FAILED");
    // Any tag of the list may match; the `-gzip` suffix Salesforce adds is accepted.
    let gzip = format!("{}-gzip\"", etag.trim_end_matches('"'));
    let listed = patch(vec![("If-Match", format!("\"other\", {gzip}"))], "Renamed").await;
    assert_eq!(listed.status, StatusCode::NO_CONTENT);
    // The old tag is stale now.
    let stale = patch(vec![("If-Match", etag.clone())], "Stale").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let current = sf.get(&path).await;
    assert_eq!(current.body["Name"], "Renamed");
    let new_tag = current.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_tag, etag);

    // If-None-Match: 304 on a read when it matches, 412 on a write.
    let cached = sf
        .send(Method::GET, &path, None, &[("If-None-Match", &new_tag)])
        .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cached.headers["etag"].to_str().unwrap(), new_tag);
    let old = sf
        .send(Method::GET, &path, None, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(old.status, StatusCode::OK);
    let star = patch(vec![("If-None-Match", "*".into())], "Never").await;
    assert_eq!(star.status, StatusCode::PRECONDITION_FAILED);

    // Malformed tags on a write are a 400.
    let invalid = patch(vec![("If-Match", "unquoted".into())], "Never").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.code(), "INVALID_HEADER_VALUE");

    // Other objects ignore If-Match, as Salesforce does.
    let opportunity = sf.opportunity("Untagged", json!({})).await;
    let ignored = sf
        .send(
            Method::PATCH,
            &format!("{V}/sobjects/Opportunity/{opportunity}"),
            Some(r#"{"Amount": 1}"#),
            &[("If-Match", "\"anything\"")],
        )
        .await;
    assert_eq!(ignored.status, StatusCode::NO_CONTENT);
}
