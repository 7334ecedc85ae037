//! Partner Center → signed webhook → verified by the server → a job in the durable inbox,
//! keyed by referral, before the webhook is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cosell::engine::inbox::{InboxSink, PC_EVENT, referral_key};
use cosell::sandbox::{self, SandboxOptions};
use cosell::server::verify::{WebhookTrust, WebhookVerifier, parse_certificates};
use cosell::server::{EventSink, ServerOptions};
use cosell::store::Store;
use serde_json::json;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_events_become_inbox_jobs_one_key_per_referral() {
    let sandbox = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = sandbox.base_url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();

    let anchors = parse_certificates(sandbox.ca_pem().as_bytes()).unwrap();
    let mut trust = WebhookTrust::new(anchors, vec![base.trim_start_matches("http://").to_owned()]);
    trust.allow_insecure_certificate_url = true;
    let verifier = Arc::new(WebhookVerifier::new(trust).unwrap());
    let options = ServerOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), verifier);
    let path = options.webhook_path.clone();
    let sink: Arc<dyn EventSink> = Arc::new(InboxSink::new(store.clone()));
    let server = cosell::server::serve(options, sink).await.unwrap();

    let token =
        common::entra_token(&base, "https://api.partnercenter.microsoft.com/.default").await;
    let response = reqwest::Client::new()
        .post(format!("{base}/webhooks/v1/registration"))
        .bearer_auth(&token)
        .json(&json!({
            "WebhookUrl": format!("http://{}{path}", server.local_addr()),
            "WebhookEvents": ["referral-created", "referral-updated"],
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let mut incoming = common::cosell_referral("From Microsoft");
    incoming.as_object_mut().unwrap().remove("status");
    incoming.as_object_mut().unwrap().remove("substatus");
    let (_, first) = common::control(
        &base,
        "/_sandbox/partner-center/referrals/incoming",
        &incoming,
    )
    .await;
    let (_, second) = common::control(
        &base,
        "/_sandbox/partner-center/referrals/incoming",
        &incoming,
    )
    .await;
    let first = first["id"].as_str().unwrap().to_owned();
    let second = second["id"].as_str().unwrap().to_owned();
    // A Microsoft-side change to the first referral: a second event for the same key.
    common::control(
        &base,
        &format!("/_sandbox/partner-center/referrals/{first}/microsoft"),
        &json!({"dealValue": 75000}),
    )
    .await;

    let mut pending = 0;
    for _ in 0..100 {
        pending = store.inbox_stats().await.unwrap().pending;
        if pending == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(pending, 3, "three events stored");

    // One job per referral at a time, oldest first.
    let jobs = store
        .claim("worker", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    assert!(keys.contains(&referral_key(&first).as_str()), "{keys:?}");
    assert!(keys.contains(&referral_key(&second).as_str()), "{keys:?}");
    for job in &jobs {
        assert_eq!(job.kind, PC_EVENT);
        assert_eq!(job.payload["event"], "referral-created");
        store.complete(job).await.unwrap();
    }
    let jobs = store
        .claim("worker", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload["event"], "referral-updated");
    assert_eq!(jobs[0].payload["referral_id"], first.as_str());
    server.shutdown().await.unwrap();
}
