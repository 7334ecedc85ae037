//! `/readyz` for the sync engine: ready when the state store answers and every upstream the
//! sync needs (the Partner Center referrals API, the CRM) holds a valid access token or can
//! obtain one.
//!
//! A probe never calls an API: it asks each connector's token cache, which goes to the
//! token endpoint only when no token is cached or the cached one is about to expire. The
//! verdict is kept for [`CACHE_FOR`], so kubelet probes (every 10 s, often from several
//! places) and a refused credential do not hammer the token endpoint; concurrent probes wait
//! for the one in progress instead of starting their own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::sync::Engine;
use crate::server::ReadinessCheck;

/// How long a verdict is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// Time each check gets, under the server's own
/// [`READINESS_TIMEOUT`](crate::server::READINESS_TIMEOUT), so a hanging token endpoint is
/// reported by name rather than as a timed-out probe.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

/// The engine's readiness, cached.
#[derive(Debug)]
pub struct Readiness {
    engine: Arc<Engine>,
    cache_for: Duration,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Readiness of `engine`, each verdict reused for `cache_for`.
    pub fn new(engine: Arc<Engine>, cache_for: Duration) -> Readiness {
        Readiness {
            engine,
            cache_for,
            last: Mutex::new(None),
        }
    }

    /// `Ok` when ready, else every failing part and why, e.g. `partner_center: authentication
    /// failed: token endpoint answered 401 Unauthorized: invalid_client …` (the token
    /// endpoint's OAuth error, never a credential).
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && at.elapsed() < self.cache_for
        {
            return verdict.clone();
        }
        let verdict = self.probe().await;
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }

    async fn probe(&self) -> Result<(), String> {
        let engine = &self.engine;
        let store = bounded("state store", async {
            engine
                .store()
                .inbox_stats()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let pc = bounded("partner_center", async {
            engine
                .partner_center()
                .ensure_token()
                .await
                .map_err(|e| e.to_string())
        });
        let crm_name = engine.crm().upstream().api();
        let crm = bounded(crm_name, async {
            engine.crm().ensure_token().await.map_err(|e| e.to_string())
        });
        let (store, pc, crm) = tokio::join!(store, pc, crm);
        let problems: Vec<String> = [store, pc, crm]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The check as the server takes it.
    pub fn into_check(self) -> ReadinessCheck {
        let readiness = Arc::new(self);
        Arc::new(move || {
            let readiness = Arc::clone(&readiness);
            Box::pin(async move { readiness.check().await })
        })
    }
}

/// `check` within [`CHECK_TIMEOUT`]; its error starting with `name` (connector and store
/// errors usually do already).
async fn bounded(
    name: &str,
    check: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let named = |message: String| {
        if message.starts_with(name) {
            message
        } else {
            format!("{name}: {message}")
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result.map_err(named),
        Err(_) => Err(named(format!(
            "no answer within {} s",
            CHECK_TIMEOUT.as_secs()
        ))),
    }
}
