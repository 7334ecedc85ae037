//! The Partner Center client against the in-process sandbox over real HTTP: tokens (both
//! audiences, refresh after expiry mid-stream), listing with OData filters and paging,
//! get/create/patch with eTags, the two-step co-sell create, related referrals, webhook
//! registration and validation, configuration errors, secrets, lossless round trips,
//! the concurrency budget and non-repeated creates.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cosell::config::model::{Budget, EntraAuth, PartnerCenterConnection, SecretRef};
use cosell::connectors::ConnectorError;
use cosell::connectors::Secret;
use cosell::connectors::partner_center::{
    DealRegistration, MICROSOFT_ORGANIZATION_ID, ODataFilter, PartnerCenterClient,
    PartnerCenterSettings, PatchOp, Referral, ReferralQuery, ReferralStatus, ReferralSubstatus,
    ReferralType, TargetType, WebhookEvent, diff_to_patch,
};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use futures_util::StreamExt as _;
use futures_util::stream::TryStreamExt as _;
use serde_json::{Value, json};

async fn start() -> SandboxHandle {
    sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts")
}

/// Sandbox settings: both credentials (referrals use the refresh token, webhooks client
/// credentials) and a concurrency cap of 4.
fn settings(base: &str) -> PartnerCenterSettings {
    PartnerCenterSettings {
        base_url: base.to_owned(),
        webhook_base_url: base.to_owned(),
        authority: base.to_owned(),
        tenant_id: "contoso.onmicrosoft.com".to_owned(),
        client_id: "cosell-sandbox".to_owned(),
        client_secret: Some(Secret::new("sandbox-secret")),
        refresh_token: Some(Secret::new("sandbox-refresh-token")),
        budget: Budget {
            concurrent: Some(4),
            ..Budget::default()
        },
        allow_insecure_http: true,
        trusted_certificates: Vec::new(),
        request_timeout: cosell::connectors::http::DEFAULT_REQUEST_TIMEOUT,
    }
}

fn client(handle: &SandboxHandle) -> PartnerCenterClient {
    PartnerCenterClient::new(settings(handle.base_url())).expect("client")
}

async fn control(handle: &SandboxHandle, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", handle.base_url()))
        .json(&body)
        .send()
        .await
        .expect("control call");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

async fn sandbox_stats(handle: &SandboxHandle) -> Value {
    reqwest::Client::new()
        .get(format!("{}/_sandbox/stats", handle.base_url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

/// An outbound co-sell referral as a CRM would create it.
fn outbound(name: &str) -> Referral {
    serde_json::from_value(common::cosell_referral(name)).expect("valid referral")
}

#[tokio::test]
async fn lists_across_pages_and_refreshes_an_expired_token_mid_stream() {
    let handle = start().await;
    let seeded = control(
        &handle,
        "/_sandbox/seed",
        json!({ "referrals": 250, "accounts": 0 }),
    )
    .await;
    assert_eq!(seeded["referrals"], 250);
    let pc = client(&handle);

    let stream = pc.list_referrals(ReferralQuery {
        top: Some(100),
        orderby: Some("createdDateTime desc".into()),
        ..ReferralQuery::default()
    });
    let mut stream = Box::pin(stream);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let referral = stream.next().await.expect("an item").expect("a referral");
        ids.push(referral.id.expect("id"));
    }
    // The first page is consumed; every token dies before the second page is fetched.
    control(&handle, "/_sandbox/tokens/expire", json!({})).await;
    while let Some(referral) = stream.next().await {
        ids.push(referral.expect("a referral").id.expect("id"));
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250, "no repeats");

    let stats = pc.referrals_upstream().stats();
    assert!(stats.token_refreshes >= 1, "{stats:?}");
    assert_eq!(
        stats.by_outcome.get("list_referrals 200"),
        Some(&3),
        "{stats:?}"
    );
    assert_eq!(
        stats.by_outcome.get("list_referrals 401"),
        Some(&1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn filters_escape_literals_and_related_referrals_follow_microsoft() {
    let handle = start().await;
    let pc = client(&handle);
    control(
        &handle,
        "/_sandbox/seed",
        json!({ "referrals": 30, "accounts": 0 }),
    )
    .await;

    // A quote in a value is doubled, so the filter finds exactly this referral.
    let tricky = "O'Brien's ' or name ne 'x";
    let created = pc.create_referral(&outbound(tricky)).await.expect("create");
    let found: Vec<Referral> = pc
        .list_referrals(ReferralQuery {
            filter: Some(ODataFilter::eq("name", tricky).into()),
            ..ReferralQuery::default()
        })
        .try_collect()
        .await
        .expect("list");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, created.id);

    let incoming_new: Vec<Referral> = pc
        .list_referrals(ReferralQuery {
            filter: Some(
                ODataFilter::eq("status", "New")
                    .and(ODataFilter::eq("direction", "Incoming"))
                    .into(),
            ),
            orderby: Some("createdDateTime desc".into()),
            top: Some(7),
        })
        .try_collect()
        .await
        .expect("list");
    assert!(!incoming_new.is_empty());
    assert!(
        incoming_new
            .iter()
            .all(|r| r.status == Some(ReferralStatus::New))
    );

    // Co-sell: two referrals on one engagement, the second for Microsoft.
    let (partner, microsoft) = pc
        .create_cosell_referral(&outbound("Co-sell deal"), None)
        .await
        .expect("co-sell create");
    let engagement = partner.engagement_id.clone().expect("engagement");
    assert_eq!(
        microsoft.engagement_id.as_deref(),
        Some(engagement.as_str())
    );
    assert_ne!(partner.id, microsoft.id);
    assert_eq!(
        partner.target.as_ref().unwrap()[0].target_type,
        Some(TargetType::SolutionProfile)
    );
    let target = &microsoft.target.as_ref().expect("target")[0];
    assert_eq!(
        target.target_type,
        Some(TargetType::BusinessProfileLocation)
    );
    assert_eq!(target.id.as_deref(), Some(MICROSOFT_ORGANIZATION_ID));
    assert_eq!(microsoft.referral_type, Some(ReferralType::Shared));

    let related = pc.related_referrals(&engagement).await.expect("related");
    let related_ids: HashSet<_> = related.iter().filter_map(|r| r.id.clone()).collect();
    assert_eq!(related.len(), 2);
    assert!(related_ids.contains(partner.id.as_ref().unwrap()));
    assert!(related_ids.contains(microsoft.id.as_ref().unwrap()));

    // A Microsoft seller accepts: Microsoft's own referral appears in the engagement.
    control(
        &handle,
        &format!(
            "/_sandbox/partner-center/referrals/{}/microsoft",
            partner.id.as_ref().unwrap()
        ),
        json!({ "status": "Active", "substatus": "Accepted", "microsoftMsxId": "7-X" }),
    )
    .await;
    let related = pc.related_referrals(&engagement).await.expect("related");
    assert_eq!(related.len(), 3);
    let msft = related
        .iter()
        .find(|r| r.organization_id.as_deref() == Some(MICROSOFT_ORGANIZATION_ID))
        .expect("Microsoft's referral");
    assert_eq!(msft.status, Some(ReferralStatus::Active));
    assert_eq!(msft.substatus, Some(ReferralSubstatus::Accepted));
    assert_eq!(
        msft.tracking_info
            .as_ref()
            .and_then(|t| t.microsoft_msx_id.as_deref()),
        Some("7-X")
    );
}

#[tokio::test]
async fn a_failed_second_step_names_the_first_referral() {
    let handle = start().await;
    let pc = client(&handle);
    let mut broken = outbound("Microsoft side");
    // No customer country: the service refuses step 2 with 400.
    broken
        .customer_profile
        .as_mut()
        .unwrap()
        .address
        .as_mut()
        .unwrap()
        .country = None;
    let error = pc
        .create_cosell_referral(&outbound("Half co-sell"), Some(&broken))
        .await
        .expect_err("step 2 fails");
    let ConnectorError::Status { status, code, .. } = &error else {
        panic!("expected a status error, got {error:?}");
    };
    assert_eq!(*status, 400);
    assert_eq!(code.as_deref(), Some("invalidRequest"));
    let created: Vec<Referral> = pc
        .list_referrals(ReferralQuery {
            filter: Some(ODataFilter::eq("name", "Half co-sell").into()),
            ..ReferralQuery::default()
        })
        .try_collect()
        .await
        .expect("list");
    assert_eq!(created.len(), 1, "step 1 happened");
    let message = error.to_string();
    assert!(
        message.contains(created[0].id.as_deref().unwrap()),
        "{message}"
    );
    assert!(
        message.contains("country"),
        "the service's message is kept: {message}"
    );
}

#[tokio::test]
async fn get_create_patch_with_etags() {
    let handle = start().await;
    let pc = client(&handle);
    let created = pc
        .create_referral(&outbound("Patch me"))
        .await
        .expect("create");
    let id = created.id.clone().expect("id");
    // Outbound creates land Active/Accepted.
    assert_eq!(created.status, Some(ReferralStatus::Active));
    assert_eq!(
        created
            .details
            .as_ref()
            .unwrap()
            .deal_value
            .as_ref()
            .unwrap()
            .as_f64(),
        50000.0
    );

    let read = pc.get_referral(&id).await.expect("get");
    assert_eq!(read.e_tag(), created.e_tag());
    let stale = read.e_tag().expect("etag").to_owned();

    // A typed edit, diffed into only the changed leaves.
    let mut edited = read.clone();
    edited.details.as_mut().unwrap().notes = Some("Budget confirmed".into());
    edited.external_reference_id = Some("opp-42".into());
    edited.team.get_or_insert_with(Vec::new).push(
        serde_json::from_value(json!({ "email": "jane@contoso.com", "firstName": "Jane" }))
            .unwrap(),
    );
    let ops = diff_to_patch(
        &serde_json::to_value(&read).unwrap(),
        &serde_json::to_value(&edited).unwrap(),
    );
    assert_eq!(ops.len(), 3, "{ops:?}");
    pc.patch_referral(&id, &ops, Some(&stale))
        .await
        .expect("patch");
    let after = pc.get_referral(&id).await.expect("get");
    assert_eq!(
        after.details.as_ref().unwrap().notes.as_deref(),
        Some("Budget confirmed")
    );
    assert_eq!(after.external_reference_id.as_deref(), Some("opp-42"));
    assert_eq!(after.team.as_ref().map(Vec::len), Some(1));
    assert_ne!(after.e_tag(), Some(stale.as_str()));

    // The old eTag no longer matches.
    let error = pc
        .patch_referral(
            &id,
            &[PatchOp::replace("/details/notes", "late")],
            Some(&stale),
        )
        .await
        .expect_err("stale eTag");
    assert!(
        matches!(error, ConnectorError::PreconditionFailed { .. }),
        "{error:?}"
    );

    // With the representation: the documented string deal value, the new eTag.
    let updated = pc
        .patch_referral_returning(
            &id,
            &[
                PatchOp::replace("/details/dealValue", "10000"),
                PatchOp::replace("/status", "Closed"),
                PatchOp::replace("/substatus", "Won"),
            ],
            after.e_tag(),
        )
        .await
        .expect("patch with representation");
    assert_eq!(updated.status, Some(ReferralStatus::Closed));
    assert_eq!(updated.substatus, Some(ReferralSubstatus::Won));
    assert_eq!(
        updated
            .details
            .as_ref()
            .unwrap()
            .deal_value
            .as_ref()
            .unwrap()
            .as_f64(),
        10000.0
    );
    assert_ne!(updated.e_tag(), after.e_tag());

    // No operations, no call.
    let before = pc.referrals_upstream().stats().requests;
    pc.patch_referral(&id, &[], None).await.expect("no-op");
    assert_eq!(pc.referrals_upstream().stats().requests, before);

    // 404 and 400 keep the service's code and message.
    let error = pc
        .get_referral("00000000-0000-0000-0000-000000000000")
        .await
        .expect_err("404");
    assert!(
        matches!(error, ConnectorError::NotFound { .. }),
        "{error:?}"
    );
    let mut invalid = outbound("No profile");
    invalid.customer_profile = None;
    let error = pc.create_referral(&invalid).await.expect_err("400");
    match &error {
        ConnectorError::Status {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code.as_deref(), Some("invalidRequest"));
            assert!(message.contains("customerProfile"), "{message}");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    // Closed is terminal: the service's refusal arrives as a 400 too.
    let error = pc
        .patch_referral(&id, &[PatchOp::replace("/details/notes", "x")], None)
        .await
        .expect_err("terminal");
    assert_eq!(error.status(), Some(400));
}

#[tokio::test]
async fn unknown_fields_survive_a_read_modify_write() {
    let handle = start().await;
    let pc = client(&handle);
    let created = control(
        &handle,
        "/_sandbox/partner-center/referrals/incoming",
        json!({
            "name": "From the future",
            "customerProfile": {
                "name": "Fabrikam",
                "address": { "country": "NL", "geo": { "lat": 52.1 } },
                "loyaltyTier": "gold"
            },
            "details": {
                "notes": "first", "dealValue": 1200, "currency": "EUR",
                "requirements": { "solutions": [{ "id": "SOL-1234-PQRS", "name": "Modern Workplace", "tier": 3 }] }
            },
            "futureField": { "x": 1 },
            "registrations": [{ "type": "AzureIPCoSell", "futureRegistrationField": true }]
        }),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_owned();

    let read = pc.get_referral(&id).await.expect("get");
    assert_eq!(read.extra.get("futureField"), Some(&json!({ "x": 1 })));
    let profile = read.customer_profile.as_ref().unwrap();
    assert_eq!(profile.extra.get("loyaltyTier"), Some(&json!("gold")));
    assert_eq!(
        profile.address.as_ref().unwrap().extra.get("geo"),
        Some(&json!({ "lat": 52.1 }))
    );
    let registrations: &Vec<DealRegistration> = read.registrations.as_ref().unwrap();
    assert_eq!(
        registrations[0].extra.get("futureRegistrationField"),
        Some(&json!(true))
    );
    // Typed reading loses nothing: the model writes back exactly what the service sent.
    assert_eq!(serde_json::to_value(&read).unwrap(), created);

    let mut edited = read.clone();
    edited.details.as_mut().unwrap().notes = Some("second".into());
    let ops = diff_to_patch(
        &serde_json::to_value(&read).unwrap(),
        &serde_json::to_value(&edited).unwrap(),
    );
    assert_eq!(ops, vec![PatchOp::replace("/details/notes", "second")]);
    let updated = pc
        .patch_referral_returning(&id, &ops, read.e_tag())
        .await
        .expect("patch");
    assert_eq!(updated.extra.get("futureField"), Some(&json!({ "x": 1 })));
    let again = pc.get_referral(&id).await.expect("get");
    assert_eq!(again.extra.get("futureField"), Some(&json!({ "x": 1 })));
    assert_eq!(
        again
            .customer_profile
            .as_ref()
            .unwrap()
            .extra
            .get("loyaltyTier"),
        Some(&json!("gold"))
    );
    assert_eq!(
        again.details.as_ref().unwrap().notes.as_deref(),
        Some("second")
    );
}

#[tokio::test]
async fn webhook_registration_validation_and_event_ids() {
    let handle = start().await;
    let pc = client(&handle);
    let receiver = Receiver::start().await;

    let events = pc.webhook_events().await.expect("events");
    for name in [
        "referral-created",
        "referral-updated",
        "related-referral-updated",
        "test-created",
    ] {
        assert!(events.iter().any(|e| e == name), "{name} in {events:?}");
    }
    assert!(pc.get_registration().await.expect("view").is_none());

    let wanted = ["referral-created", "referral-updated", "test-created"];
    let first = pc
        .register("https://old.example/hook", &wanted, false, false)
        .await
        .expect("register");
    let subscriber = first.subscriber_id.clone().expect("subscriber id");
    assert_eq!(
        first.webhook_url.as_deref(),
        Some("https://old.example/hook")
    );

    // A second POST is a conflict unless overwriting is allowed.
    let error = pc
        .register(&receiver.url, &wanted, true, false)
        .await
        .expect_err("409");
    assert_eq!(error.status(), Some(409), "{error:?}");
    let replaced = pc
        .register(&receiver.url, &wanted, true, true)
        .await
        .expect("overwrite");
    assert_eq!(replaced.webhook_url.as_deref(), Some(receiver.url.as_str()));
    assert_eq!(replaced.subscriber_id.as_deref(), Some(subscriber.as_str()));
    assert_eq!(replaced.signature_token_to_ms_signature_header, Some(true));
    let stats = pc.webhooks_upstream().stats();
    assert_eq!(
        stats.by_outcome.get("register_webhook 409"),
        Some(&2),
        "{stats:?}"
    );
    assert_eq!(
        stats.by_outcome.get("update_webhook_registration 200"),
        Some(&1),
        "{stats:?}"
    );

    let view = pc
        .get_registration()
        .await
        .expect("view")
        .expect("registered");
    assert_eq!(view.webhook_url.as_deref(), Some(receiver.url.as_str()));
    let mut events = view.webhook_events.clone().unwrap_or_default();
    events.sort();
    assert_eq!(
        events,
        vec!["referral-created", "referral-updated", "test-created"]
    );

    let updated = pc
        .update_registration(&receiver.url, &["referral-created", "test-created"], true)
        .await
        .expect("put");
    assert_eq!(updated.webhook_events.as_ref().map(Vec::len), Some(2));

    // Validation: POST, then GET until the test event was delivered.
    let correlation = pc.send_validation_event().await.expect("validation");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = pc.validation_status(&correlation).await.expect("status");
        if status.status.as_deref() == Some("completed") || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.correlation_id.as_deref(), Some(correlation.as_str()));
    assert_eq!(status.status.as_deref(), Some("completed"), "{status:?}");
    assert_eq!(
        status
            .results
            .as_ref()
            .and_then(|r| r.first())
            .and_then(|r| r.response_code.as_deref()),
        Some("OK")
    );
    let error = pc
        .validation_status("no-such-correlation")
        .await
        .expect_err("404");
    assert!(
        matches!(error, ConnectorError::NotFound { .. }),
        "{error:?}"
    );

    // A referral-created event names the referral by its ResourceUri's last segment.
    let created = pc
        .create_referral(&outbound("Webhooked"))
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let found = receiver.bodies().into_iter().find_map(|body| {
            let event: WebhookEvent = serde_json::from_slice(&body).ok()?;
            (event.event_name.as_deref() == Some("referral-created")).then_some(event)
        });
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no referral-created event arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event.referral_id(), created.id);
    let fetched = pc
        .get_referral_for_event(&event)
        .await
        .expect("get by event");
    assert_eq!(fetched.id, created.id);
    // The test event is not about a referral.
    let test_event = receiver
        .bodies()
        .into_iter()
        .filter_map(|body| serde_json::from_slice::<WebhookEvent>(&body).ok())
        .find(|e| e.event_name.as_deref() == Some("test-created"))
        .expect("test event delivered");
    assert_eq!(test_event.referral_id(), None);

    // The webhook API was called with its own (client-credentials) token; the referrals
    // API with the user's.
    assert!(pc.webhooks_upstream().stats().requests >= 8);
}

#[tokio::test]
async fn insecure_urls_wrong_secrets_and_missing_references_are_refused() {
    let handle = start().await;
    let base = handle.base_url().to_owned();

    let mut insecure = settings(&base);
    insecure.allow_insecure_http = false;
    let error = PartnerCenterClient::new(insecure).expect_err("http refused");
    assert!(matches!(error, ConnectorError::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("allow_insecure_http"), "{error}");

    // A wrong secret, with and without the refresh token: Auth, and never the secret.
    for refresh in [None, Some(Secret::new("sandbox-refresh-token"))] {
        let mut wrong = settings(&base);
        wrong.client_secret = Some(Secret::new("canary-wrong-secret-4711"));
        wrong.refresh_token = refresh;
        let pc = PartnerCenterClient::new(wrong).expect("client");
        let error = pc.get_referral("anything").await.expect_err("auth fails");
        assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
        let shown = format!("{error} {error:?} {pc:?}");
        assert!(!shown.contains("canary-wrong-secret-4711"), "{shown}");
        assert!(error.to_string().contains("invalid_client"), "{error}");
        let error = pc.webhook_events().await.expect_err("auth fails");
        assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
    }

    // From configuration: references resolved through the given environment.
    let connection = PartnerCenterConnection {
        base_url: Some(base.clone()),
        webhook_base_url: Some("${PC_WEBHOOKS:-".to_owned() + &base + "}"),
        auth: EntraAuth {
            tenant_id: "${PC_TENANT}".into(),
            client_id: "cosell-sandbox".into(),
            client_secret: Some(SecretRef("${PC_SECRET}".into())),
            refresh_token: Some(SecretRef("${PC_REFRESH}".into())),
            authority: Some(base.clone()),
        },
        budget: Budget {
            per_minute: Some(600),
            ..Budget::default()
        },
        allow_insecure_http: true,
        timeout_seconds: None,
    };
    let env = |name: &str| match name {
        "PC_TENANT" => Some("contoso.onmicrosoft.com".to_owned()),
        "PC_SECRET" => Some("sandbox-secret".to_owned()),
        "PC_REFRESH" => Some("sandbox-refresh-token".to_owned()),
        _ => None,
    };
    let pc = PartnerCenterClient::from_config(&connection, &env, &[]).expect("from config");
    let created = pc
        .create_referral(&outbound("Configured"))
        .await
        .expect("create");
    assert!(created.id.is_some());
    assert!(
        pc.get_registration()
            .await
            .expect("webhooks reachable")
            .is_none()
    );

    let missing = |name: &str| (name == "PC_TENANT").then(|| "t".to_owned());
    let error = PartnerCenterClient::from_config(&connection, &missing, &[]).expect_err("missing");
    assert!(matches!(error, ConnectorError::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("client_secret"), "{error}");
    assert!(error.to_string().contains("PC_SECRET"), "{error}");
}

#[tokio::test]
async fn concurrency_is_capped_and_creates_are_not_repeated() {
    let handle = start().await;
    let pc = client(&handle);
    control(
        &handle,
        "/_sandbox/seed",
        json!({ "referrals": 12, "accounts": 0 }),
    )
    .await;
    let ids: Vec<String> = pc
        .list_referrals(ReferralQuery::default())
        .map_ok(|r| r.id.unwrap_or_default())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(ids.len(), 12);
    control(
        &handle,
        "/_sandbox/faults",
        json!({ "partner_center": { "latency_ms": 60 } }),
    )
    .await;
    let started = Instant::now();
    let reads = futures_util::future::join_all(ids.iter().map(|id| pc.get_referral(id))).await;
    assert!(reads.iter().all(Result::is_ok));
    let stats = sandbox_stats(&handle).await;
    let in_flight = stats["apis"]["partner_center"]["max_in_flight"]
        .as_u64()
        .expect("max_in_flight");
    assert!(
        (1..=4).contains(&in_flight),
        "at most 4 at once, saw {in_flight}"
    );
    // 12 calls of 60 ms, 4 at a time: at least three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(170),
        "{:?}",
        started.elapsed()
    );
    control(
        &handle,
        "/_sandbox/faults",
        json!({ "partner_center": { "latency_ms": 0 } }),
    )
    .await;

    // A dropped connection on a create is not retried (it may have been applied) …
    control(
        &handle,
        "/_sandbox/faults",
        json!({ "partner_center": { "reset_next": 1 } }),
    )
    .await;
    let error = pc
        .create_referral(&outbound("Maybe created"))
        .await
        .expect_err("not retried");
    assert!(
        matches!(error, ConnectorError::Transport { .. }),
        "{error:?}"
    );
    assert_eq!(
        pc.referrals_upstream()
            .stats()
            .by_outcome
            .get("create_referral transport_error"),
        Some(&1)
    );

    // … while a PATCH with If-Match is.
    let created = pc
        .create_referral(&outbound("Retry my patch"))
        .await
        .expect("create");
    control(
        &handle,
        "/_sandbox/faults",
        json!({ "partner_center": { "reset_next": 1 } }),
    )
    .await;
    pc.patch_referral(
        created.id.as_deref().unwrap(),
        &[PatchOp::replace("/details/notes", "retried")],
        created.e_tag(),
    )
    .await
    .expect("patch retried");
    let stats = pc.referrals_upstream().stats();
    assert_eq!(
        stats.by_outcome.get("patch_referral transport_error"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(
        stats.by_outcome.get("patch_referral 204"),
        Some(&1),
        "{stats:?}"
    );
}

/// A webhook receiver on an ephemeral port that records bodies.
#[derive(Clone)]
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(bodies): axum::extract::State<
                        Arc<Mutex<Vec<Vec<u8>>>>,
                    >,
                     body: axum::body::Bytes| async move {
                        bodies.lock().expect("lock").push(body.to_vec());
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(Arc::clone(&bodies));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().expect("lock").clone()
    }
}

#[tokio::test]
async fn a_refresh_token_alone_reaches_both_apis_and_a_bad_one_is_an_auth_error() {
    let handle = start().await;
    let mut public = settings(handle.base_url());
    public.client_secret = None;
    let pc = PartnerCenterClient::new(public.clone()).expect("client");
    let created = pc
        .create_referral(&outbound("Public client"))
        .await
        .expect("referrals with the user's token");
    assert!(created.id.is_some());
    assert!(!pc.webhook_events().await.expect("webhooks").is_empty());

    public.refresh_token = Some(Secret::new("canary-revoked-refresh-token"));
    let pc = PartnerCenterClient::new(public).expect("client");
    let error = pc.get_referral("x").await.expect_err("bad refresh token");
    assert!(matches!(error, ConnectorError::Auth { .. }), "{error:?}");
    assert!(error.to_string().contains("invalid_grant"), "{error}");
    assert!(
        !format!("{error} {error:?}").contains("canary"),
        "{error:?}"
    );
}
