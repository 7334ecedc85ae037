//! API calls per upstream, persisted for `cosell status`.
//!
//! Every [`Upstream`] counts its requests in memory; a [`UsageRecorder`] adds what was
//! counted since its last flush to the state store's per-UTC-day rows
//! ([`Store::add_api_usage`]), every [`FLUSH_EVERY`] and once more at shutdown. One batched
//! transaction per flush (and none while nothing was called), never a write per API call.
//! Calls counted between two flushes land on the day of the flush, so a few seconds'
//! worth may be attributed to the next day around midnight UTC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use super::sync::Engine;
use crate::connectors::http::Upstream;
use crate::store::{ApiCalls, Store, StoreError, utc_day};

/// How often a running engine writes its call counts.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// What has been written so far.
#[derive(Debug, Default)]
struct Flushed {
    /// Requests already written, per API.
    requests: HashMap<&'static str, u64>,
    /// The day rows were last written for every upstream (so each day has a row per
    /// upstream, with its limit, even before its first call).
    day: Option<String>,
}

/// Writes the upstreams' call counts to the store.
#[derive(Debug)]
pub struct UsageRecorder {
    store: Store,
    upstreams: Vec<Upstream>,
    /// Held for a whole flush: a tick and the final flush never count the same calls twice.
    flushed: Mutex<Flushed>,
}

impl UsageRecorder {
    /// A recorder of `upstreams` into `store`. Calls already made count too.
    pub fn new(store: Store, upstreams: Vec<Upstream>) -> UsageRecorder {
        UsageRecorder {
            store,
            upstreams,
            flushed: Mutex::new(Flushed::default()),
        }
    }

    /// A recorder of the engine's upstreams: the Partner Center referrals and webhook
    /// registration APIs and the CRM.
    pub fn for_engine(engine: &Engine) -> UsageRecorder {
        let pc = engine.partner_center();
        UsageRecorder::new(
            engine.store().clone(),
            vec![
                pc.referrals_upstream().clone(),
                pc.webhooks_upstream().clone(),
                engine.crm().upstream().clone(),
            ],
        )
    }

    /// Adds the calls made since the last flush to today's rows (UTC); returns how many.
    /// Nothing is written when no call was made, except once a day to record each
    /// upstream and its limit. On error nothing is marked written: the next flush retries.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        let mut flushed = self.flushed.lock().await;
        let day = utc_day(SystemTime::now());
        let new_day = flushed.day.as_deref() != Some(day.as_str());
        let mut batch = Vec::new();
        let mut seen = Vec::new();
        for upstream in &self.upstreams {
            upstream.publish_budget_metrics();
            let api = upstream.api();
            let requests = upstream.requests();
            let before = flushed.requests.get(api).copied().unwrap_or(0);
            let calls = requests.saturating_sub(before);
            if calls > 0 || new_day {
                batch.push(ApiCalls {
                    api: api.to_owned(),
                    calls,
                    daily_limit: upstream.daily_limit().map(u64::from),
                });
            }
            seen.push((api, requests));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.store.add_api_usage(&day, &batch).await?;
        for (api, requests) in seen {
            flushed.requests.insert(api, requests);
        }
        flushed.day = Some(day);
        Ok(batch.iter().map(|entry| entry.calls).sum())
    }

    /// Flushes every `every` until [`UsageTask::stop`], which flushes a last time.
    pub fn spawn(self, every: Duration) -> UsageTask {
        let recorder = Arc::new(self);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = {
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move {
                loop {
                    // Only the wait is cancelled, never a flush: a flush cut short after
                    // its commit would count the same calls again.
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    if let Err(error) = recorder.flush().await {
                        // The counts stay in memory and go with the next flush.
                        tracing::warn!("recording API usage: {error}");
                    }
                }
            })
        };
        UsageTask {
            recorder,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A running [`UsageRecorder`]. Dropping it ends the periodic flushes without a last one.
#[derive(Debug)]
pub struct UsageTask {
    recorder: Arc<UsageRecorder>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl UsageTask {
    /// Stops the periodic flushes and writes what is left; returns how many calls that was.
    pub async fn stop(mut self) -> Result<u64, StoreError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.recorder.flush().await
    }
}

impl Drop for UsageTask {
    fn drop(&mut self) {
        // A dropped sender ends the loop at its next wait.
        self.stop.take();
    }
}
