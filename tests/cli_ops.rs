//! `cosell status`, `audit`, `failures` and `replay` as a user runs them, over a real
//! SQLite state store filled the way the engine fills it.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use cosell::store::{ApiCalls, Link, NewAudit, NewJob, Store, utc_day};
use serde_json::{Value, json};

fn cosell(state: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(args)
        .args(["--state", state])
        .env_remove("COSELL_STATE")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn filled(state: &str) {
    let store = Store::open(state).await.unwrap();
    let mut synced = Link::new("ref-1", "opportunity", "synced");
    synced.crm_id = Some("opp-1".into());
    store.save_link(&synced).await.unwrap();
    store
        .save_link(&Link::new("ref-2", "opportunity", "failed"))
        .await
        .unwrap();
    for (outcome, message) in [
        ("created", "opportunity created in the on-hold stage"),
        ("updated", "estimatedvalue 50000 → 60000"),
    ] {
        store
            .audit(&NewAudit {
                referral_id: Some("ref-1".into()),
                crm_entity: Some("opportunity".into()),
                crm_id: Some("opp-1".into()),
                flow: "referral_to_opportunity".into(),
                outcome: outcome.into(),
                message: message.into(),
                details: json!({}),
            })
            .await
            .unwrap();
    }
    store
        .audit(&NewAudit {
            referral_id: Some("ref-2".into()),
            crm_entity: None,
            crm_id: None,
            flow: "opportunity_to_referral".into(),
            outcome: "failed".into(),
            message: "Two letter country code is required".into(),
            details: json!({}),
        })
        .await
        .unwrap();
    for referral in ["ref-3", "ref-4"] {
        store
            .enqueue(&NewJob::new(
                format!("referral:{referral}"),
                "pc_event",
                json!({"referral_id": referral}),
            ))
            .await
            .unwrap();
    }
    let jobs = store
        .claim("test", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        store
            .dead_letter(job, "HTTP 500 after 8 attempts")
            .await
            .unwrap();
    }
    store
        .enqueue(&NewJob::new(
            "referral:ref-5",
            "pc_event",
            json!({"referral_id": "ref-5"}),
        ))
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_commands_read_and_requeue_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    filled(&state).await;

    let status = cosell(&state, &["status"]);
    let text = stdout(&status);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("synced") && text.contains("failed"), "{text}");
    assert!(
        text.contains("1 pending") && text.contains("dead       2"),
        "{text}"
    );

    let json_status = cosell(&state, &["status", "--format", "json"]);
    let value: Value = serde_json::from_slice(&json_status.stdout).unwrap();
    assert_eq!(value["links"], json!({"failed": 1, "synced": 1}));
    assert_eq!(value["inbox"]["pending"], 1);
    assert_eq!(value["dead_letters"], 2);

    let audit = cosell(&state, &["audit", "ref-1"]);
    let text = stdout(&audit);
    assert!(audit.status.success(), "{text}");
    assert!(text.contains("opportunity opp-1 (synced)"), "{text}");
    let updated = text.find("estimatedvalue").unwrap();
    let created = text.find("on-hold stage").unwrap();
    assert!(updated < created, "newest first: {text}");
    assert_eq!(cosell(&state, &["audit", "unknown"]).status.code(), Some(1));

    let failures = cosell(&state, &["failures"]);
    let text = stdout(&failures);
    assert!(
        text.contains("Two letter country code is required"),
        "{text}"
    );
    assert!(text.contains("HTTP 500 after 8 attempts"), "{text}");

    let failures: Value =
        serde_json::from_slice(&cosell(&state, &["failures", "--format", "json"]).stdout).unwrap();
    let first = failures["dead_letters"][0]["id"].as_i64().unwrap();
    let replay = cosell(&state, &["replay", &first.to_string()]);
    assert!(replay.status.success(), "{}", stdout(&replay));
    assert_eq!(cosell(&state, &["replay", "999999"]).status.code(), Some(1));
    let replay = cosell(&state, &["replay", "--all"]);
    assert!(
        stdout(&replay).contains("re-queued 1"),
        "{}",
        stdout(&replay)
    );

    let value: Value =
        serde_json::from_slice(&cosell(&state, &["status", "--format", "json"]).stdout).unwrap();
    assert_eq!(value["inbox"]["pending"], 3, "{value}");
    assert_eq!(value["dead_letters"], 0);
}

#[test]
fn an_unreachable_state_store_is_a_clear_usage_error() {
    let output = cosell("postgres://nobody@127.0.0.1:1/none", &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    let output = cosell("mysql://x", &["status"]);
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_api_calls_today_against_the_daily_budget() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = Store::open(&state).await.unwrap();
    // Nothing recorded yet.
    let text = stdout(&cosell(&state, &["status"]));
    assert!(text.contains("api calls  none recorded on"), "{text}");

    let today = utc_day(SystemTime::now());
    let calls = |api: &str, calls: u64, daily_limit: Option<u64>| ApiCalls {
        api: api.into(),
        calls,
        daily_limit,
    };
    store
        .add_api_usage(
            &today,
            &[
                calls("partner_center", 250, Some(1000)),
                calls("dataverse", 12, None),
            ],
        )
        .await
        .unwrap();
    store
        .add_api_usage("2001-01-01", &[calls("partner_center", 99_999, Some(1000))])
        .await
        .unwrap();
    store.close().await;

    let status = cosell(&state, &["status"]);
    let text = stdout(&status);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("api calls  {today} (UTC)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("partner_center")
                && l.ends_with("250 of 1000 (25.0 %)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("dataverse") && l.ends_with(" 12")),
        "{text}"
    );
    assert!(!text.contains("99999"), "only today counts: {text}");

    let value: Value =
        serde_json::from_slice(&cosell(&state, &["status", "--format", "json"]).stdout).unwrap();
    let usage = &value["api_usage"];
    assert_eq!(usage["day"], today.as_str());
    assert_eq!(usage["upstreams"]["partner_center"]["calls"], 250);
    assert_eq!(usage["upstreams"]["partner_center"]["daily_limit"], 1000);
    assert_eq!(usage["upstreams"]["partner_center"]["used_percent"], 25.0);
    assert_eq!(usage["upstreams"]["dataverse"]["calls"], 12);
    assert_eq!(usage["upstreams"]["dataverse"]["daily_limit"], Value::Null);
    assert_eq!(usage["upstreams"]["dataverse"]["used_percent"], Value::Null);
}
