//! The engine's observability over real HTTP against the sandbox, with a real SQLite state
//! file: `/readyz` asking the store and the connectors' token caches (never the APIs), API
//! calls per upstream persisted for `cosell status`, and the budget in `/metrics`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cosell::config::model::{Budget, CrmKind};
use cosell::connectors::Secret;
use cosell::connectors::dataverse::{DataverseClient, DataverseSettings};
use cosell::connectors::partner_center::{
    PartnerCenterClient, PartnerCenterSettings, ReferralQuery,
};
use cosell::connectors::salesforce::{SalesforceAuth, SalesforceClient, SalesforceSettings};
use cosell::engine::connect;
use cosell::engine::crm::Crm;
use cosell::engine::health::Readiness;
use cosell::engine::inbox::InboxSink;
use cosell::engine::runner::{RunOptions, Runner};
use cosell::engine::sync::Engine;
use cosell::engine::usage::UsageRecorder;
use cosell::sandbox::auth::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN};
use cosell::sandbox::{self, SandboxHandle, SandboxOptions};
use cosell::server::{self, ServerHandle, ServerOptions};
use cosell::store::{ApiUsage, Store, utc_day};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

mod common;

/// A client secret the sandbox refuses (and that must never be echoed).
const WRONG_SECRET: &str = "not-the-secret-7Qx2";

struct Setup {
    pc_secret: &'static str,
    crm_secret: &'static str,
    crm: CrmKind,
    pc_per_day: Option<u32>,
    cache_for: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            pc_secret: CLIENT_SECRET,
            crm_secret: CLIENT_SECRET,
            crm: CrmKind::Dynamics365,
            pc_per_day: None,
            cache_for: Duration::ZERO,
        }
    }
}

struct World {
    sandbox: SandboxHandle,
    engine: Arc<Engine>,
    server: Option<ServerHandle>,
    server_base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn world(setup: Setup) -> World {
    let mapping = match setup.crm {
        CrmKind::Dynamics365 => "mappings/dynamics365.yaml",
        CrmKind::Salesforce => "mappings/salesforce.yaml",
    };
    let checked = cosell::load::check_file(Path::new(mapping), &[]).expect("mapping readable");
    let plan = checked.plan.expect("plan");
    let sandbox = sandbox::start(SandboxOptions::default()).await.unwrap();
    let base = sandbox.base_url().to_owned();
    let pc = PartnerCenterClient::new(PartnerCenterSettings {
        base_url: base.clone(),
        webhook_base_url: base.clone(),
        authority: base.clone(),
        tenant_id: "contoso.onmicrosoft.com".to_owned(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Some(Secret::new(setup.pc_secret)),
        refresh_token: Some(Secret::new(REFRESH_TOKEN)),
        budget: Budget {
            per_day: setup.pc_per_day,
            ..Budget::default()
        },
        allow_insecure_http: true,
        trusted_certificates: Vec::new(),
        request_timeout: cosell::connectors::http::DEFAULT_REQUEST_TIMEOUT,
    })
    .unwrap();
    let crm = match setup.crm {
        CrmKind::Dynamics365 => {
            let mut settings =
                DataverseSettings::new(&base, "contoso", CLIENT_ID, Secret::new(setup.crm_secret));
            settings.authority = base.clone();
            settings.allow_insecure_http = true;
            Crm::Dataverse(DataverseClient::new(settings).unwrap())
        }
        CrmKind::Salesforce => {
            let mut settings = SalesforceSettings::new(
                &base,
                SalesforceAuth::ClientCredentials {
                    client_id: CLIENT_ID.into(),
                    client_secret: Secret::new(setup.crm_secret),
                },
            );
            settings.allow_insecure_http = true;
            Crm::Salesforce(SalesforceClient::new(settings).unwrap())
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();
    let engine = Arc::new(Engine::new(Arc::new(plan), pc, crm, store));
    let verifier = connect::sandbox_verifier(&base, &sandbox.ca_pem()).unwrap();
    let mut options = ServerOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), verifier);
    options.readiness = Readiness::new(engine.clone(), setup.cache_for).into_check();
    let sink = Arc::new(InboxSink::new(engine.store().clone()));
    let server = server::serve(options, sink).await.unwrap();
    World {
        server_base: format!("http://{}", server.local_addr()),
        server: Some(server),
        sandbox,
        engine,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        _dir: dir,
    }
}

impl World {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.server_base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The sandbox's call counter of `api` (`entra_id`, `partner_center`, `dataverse`, …).
    async fn calls(&self, api: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.sandbox.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["apis"][api]["calls"].as_u64().unwrap_or(0)
    }

    async fn faults(&self, patch: &Value) {
        let (status, body) =
            common::control(self.sandbox.base_url(), "/_sandbox/faults", patch).await;
        assert!(status.is_success(), "{status} {body}");
    }

    async fn usage_today(&self) -> Vec<ApiUsage> {
        self.engine
            .store()
            .api_usage(&utc_day(SystemTime::now()))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        self.engine.store().close().await;
    }
}

fn calls_of(usage: &[ApiUsage], api: &str) -> Option<(u64, Option<u64>)> {
    usage
        .iter()
        .find(|u| u.api == api)
        .map(|u| (u.calls, u.daily_limit))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_holds_tokens_without_calling_the_apis() {
    // No verdict cache: every probe asks again, and only the token caches keep it cheap.
    let w = world(Setup::default()).await;
    for _ in 0..5 {
        assert_eq!(w.get("/readyz").await, (200, "ready".to_owned()));
    }
    assert_eq!(
        w.calls("entra_id").await,
        2,
        "one token for Partner Center, one for Dataverse, then the caches"
    );
    assert_eq!(w.calls("partner_center").await, 0, "no API call per probe");
    assert_eq!(w.calls("dataverse").await, 0, "no API call per probe");
    assert_eq!(w.get("/healthz").await, (200, "ok".to_owned()));

    // The store going away makes the engine unready, and says so.
    w.engine.store().close().await;
    let (status, body) = w.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: state store"), "{body}");
    assert!(!body.contains("partner_center"), "{body}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_upstream_whose_credentials_are_refused() {
    let w = world(Setup {
        pc_secret: WRONG_SECRET,
        cache_for: Duration::from_secs(60),
        ..Setup::default()
    })
    .await;
    let (status, body) = w.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("partner_center: authentication failed")
            && body.contains("invalid_client")
            && body.contains("Invalid client secret"),
        "{body}"
    );
    assert!(!body.contains("dataverse"), "Dataverse is fine: {body}");
    assert!(
        !body.contains(WRONG_SECRET),
        "no secret in the answer: {body}"
    );
    // The refused token request is not retried, and the verdict is reused: more probes do
    // not go back to the token endpoint.
    let token_calls = w.calls("entra_id").await;
    assert_eq!(token_calls, 2, "one refused, one for Dataverse");
    for _ in 0..5 {
        assert_eq!(w.get("/readyz").await, (503, body.clone()));
    }
    assert_eq!(w.calls("entra_id").await, token_calls);
    w.stop().await;

    let w = world(Setup {
        crm: CrmKind::Salesforce,
        crm_secret: WRONG_SECRET,
        ..Setup::default()
    })
    .await;
    let (status, body) = w.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("salesforce: authentication failed") && body.contains("invalid_client"),
        "{body}"
    );
    assert!(!body.contains("partner_center"), "{body}");
    assert!(!body.contains(WRONG_SECRET), "{body}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_failing_token_endpoint_and_recovers() {
    let w = world(Setup::default()).await;
    w.faults(&json!({"entra_id": {"fail_next": 1000, "status": 503, "retry_after_seconds": 0}}))
        .await;
    let started = Instant::now();
    let (status, body) = w.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("partner_center: authentication failed: token endpoint answered 503")
            && body.contains("dataverse: authentication failed: token endpoint answered 503"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the probe's own time"
    );
    let cleared = w
        .http
        .delete(format!("{}/_sandbox/faults", w.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    assert_eq!(w.get("/readyz").await, (200, "ready".to_owned()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_are_recorded_per_upstream_and_day_and_exported() {
    let w = world(Setup {
        pc_per_day: Some(5000),
        ..Setup::default()
    })
    .await;
    let (status, body) = common::control(
        w.sandbox.base_url(),
        "/_sandbox/seed",
        &json!({ "referrals": 6 }),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    let usage = UsageRecorder::for_engine(&w.engine).spawn(Duration::from_millis(200));
    let runner = Runner::new(w.engine.clone(), RunOptions::default());
    let drained = runner.run_once().await.expect("sync");
    assert!(drained.done >= 6, "{drained:?}");

    // Within a few flush periods the store holds exactly what the sandbox counted.
    let (pc, dataverse) = (w.calls("partner_center").await, w.calls("dataverse").await);
    assert!(pc > 0 && dataverse > 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let today = w.usage_today().await;
        if calls_of(&today, "partner_center") == Some((pc, Some(5000)))
            && calls_of(&today, "dataverse") == Some((dataverse, None))
        {
            // Every upstream has its row, calls or not.
            assert_eq!(
                calls_of(&today, "partner_center_webhooks"),
                Some((0, None)),
                "{today:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flushed: {today:?}; sandbox: {pc} {dataverse}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The last calls are written at shutdown.
    let mut referrals = Box::pin(w.engine.partner_center().list_referrals(ReferralQuery {
        top: Some(1),
        ..ReferralQuery::default()
    }));
    assert!(referrals.next().await.is_some());
    drop(referrals);
    let pc = w.calls("partner_center").await;
    usage.stop().await.expect("final flush");
    assert_eq!(
        calls_of(&w.usage_today().await, "partner_center"),
        Some((pc, Some(5000)))
    );

    // /metrics: calls per upstream, the daily budget and what is left of it.
    let (status, text) = w.get("/metrics").await;
    assert_eq!(status, 200);
    let sample = |prefix: &str| {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    assert_eq!(
        sample(r#"cosell_upstream_budget_daily_limit{api="partner_center"}"#),
        Some(5000.0),
        "{text}"
    );
    assert_eq!(
        sample(r#"cosell_upstream_budget_remaining{api="partner_center"}"#),
        Some(5000.0 - pc as f64),
        "{text}"
    );
    let counted = |api: &str| {
        text.lines().any(|line| {
            line.starts_with("cosell_upstream_calls_total{")
                && line.contains(&format!(r#"api="{api}""#))
                && line.contains(r#"status="200""#)
        })
    };
    assert!(counted("partner_center") && counted("dataverse"), "{text}");
    w.stop().await;
}
