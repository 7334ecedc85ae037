//! The initial backfill's progress bar for `cosell run`: jobs done of the backlog the first
//! reconcile and CRM poll put in the inbox, with rate and ETA, on stderr when it is a
//! terminal and the logs are text.
//!
//! The bar follows the runner's [`Activity`] (jobs settled, first reconcile and poll
//! finished) and the inbox depth, read every [`TICK`]. It disappears once the first round's
//! backlog is drained (a log line then says how long it took); later work is the steady
//! state, which the logs and `/metrics` describe. Log lines go through [`LogWriter`], which
//! suspends the bar while a line is written, so lines never land in the middle of the bar.

use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::run::LogFormat;
use crate::engine::runner::{Activity, Runner};
use crate::store::{InboxStats, Store};

/// How often the inbox depth is read while the bar is up (one cheap count query).
pub const TICK: Duration = Duration::from_millis(250);

/// The bar on screen, if any, for [`LogWriter`].
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `cosell run` shows the bar: text logs on a terminal. JSON logs are for
/// machines, and a bar on a pipe or file would be noise.
pub fn enabled(format: LogFormat) -> bool {
    format == LogFormat::Text && std::io::stderr().is_terminal()
}

/// The tracing writer of `cosell run`: stderr, with the progress bar (when one is up)
/// cleared while a line is written and redrawn under it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Cloned so the slot is not locked while writing (the bar task updates it).
        let bar = active().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().lock().write_all(buf))?,
            None => std::io::stderr().lock().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// What the tracker says to do after one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing to show yet: the first round is still looking.
    Wait,
    /// Show `done` of `total` jobs.
    Show { done: u64, total: u64 },
    /// The backlog is drained (`waiting` retries scheduled for later).
    Finished { done: u64, total: u64, waiting: u64 },
    /// The first round found nothing to do: no bar at all.
    Nothing,
}

/// The backfill's arithmetic, apart from the screen and the clock.
#[derive(Debug)]
struct Tracker {
    /// Jobs the runner had settled before the backfill began.
    baseline: u64,
    /// The largest total shown so far (never shrinks: the depth and the settled count are
    /// read at slightly different moments).
    total: u64,
    shown: bool,
}

impl Tracker {
    fn new(baseline: u64) -> Tracker {
        Tracker {
            baseline,
            total: 0,
            shown: false,
        }
    }

    fn step(&mut self, activity: Activity, inbox: &InboxStats) -> Step {
        // The backlog is known once the first reconcile and the first poll are done; until
        // then more may come (the reconcile enqueues page by page while workers drain).
        let first_round_done = activity.reconciles > 0 && activity.polls > 0;
        let running = inbox.pending + inbox.leased;
        let outstanding = running + inbox.scheduled;
        let done = activity.settled.saturating_sub(self.baseline);
        if !self.shown {
            if outstanding == 0 && done == 0 {
                return if first_round_done {
                    Step::Nothing
                } else {
                    Step::Wait
                };
            }
            self.shown = true;
        }
        self.total = self.total.max(done + outstanding);
        if first_round_done && running == 0 {
            Step::Finished {
                done,
                total: self.total,
                waiting: inbox.scheduled,
            }
        } else {
            Step::Show {
                done,
                total: self.total,
            }
        }
    }
}

/// How the backfill went, when there was one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Jobs settled during the backfill.
    pub done: u64,
    /// Jobs in the backlog (settled plus still waiting).
    pub total: u64,
    /// From the start of the run (the first reconcile included) to the last job seen.
    pub elapsed: Duration,
}

/// A running backfill bar.
#[derive(Debug)]
pub struct BackfillBar {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Option<Summary>>>,
}

impl BackfillBar {
    /// Follows `runner`'s first round on a bar drawn to `target` (stderr; hidden in tests).
    pub fn spawn(runner: &Runner, target: fn() -> ProgressDrawTarget) -> BackfillBar {
        let activity = runner.activity();
        let store = runner.engine().store().clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(follow(activity, store, target, stopped));
        BackfillBar {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Takes the bar off the screen (if still there) and says how the backfill went.
    pub async fn stop(mut self) -> Option<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.ok().flatten(),
            None => None,
        }
    }
}

impl Drop for BackfillBar {
    fn drop(&mut self) {
        // The task clears the bar when the sender goes away.
        self.stop.take();
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} backfill [{bar:32}] {pos}/{len} jobs  {rate}  ETA {eta}  {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
    .with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1} jobs/s", state.per_sec());
        },
    )
}

async fn follow(
    activity: watch::Receiver<Activity>,
    store: Store,
    target: fn() -> ProgressDrawTarget,
    mut stopped: oneshot::Receiver<()>,
) -> Option<Summary> {
    let started = std::time::Instant::now();
    let mut tracker = Tracker::new(activity.borrow().settled);
    let mut bar: Option<ProgressBar> = None;
    let mut summary = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        // A failing read skips a frame; the engine reports store trouble itself.
        let Ok(inbox) = store.inbox_stats().await else {
            continue;
        };
        let now = *activity.borrow();
        let step = tracker.step(now, &inbox);
        let (done, total) = match step {
            Step::Wait => continue,
            Step::Nothing => break,
            Step::Show { done, total } | Step::Finished { done, total, .. } => (done, total),
        };
        let shown = bar.get_or_insert_with(|| {
            let new = ProgressBar::with_draw_target(Some(total), target());
            new.set_style(style());
            new.enable_steady_tick(Duration::from_millis(120));
            *active() = Some(new.clone());
            new
        });
        shown.set_length(total);
        shown.set_position(done);
        summary = Some(Summary {
            done,
            total,
            elapsed: started.elapsed(),
        });
        if let Step::Finished { waiting, .. } = step {
            clear(&mut bar);
            let rate = done as f64 / shown_secs(summary);
            let retries = if waiting > 0 {
                format!("; {waiting} waiting for a retry")
            } else {
                String::new()
            };
            tracing::info!(
                "backfill done: {done} job(s) in {:.1} s ({rate:.1}/s){retries}",
                shown_secs(summary)
            );
            break;
        }
    }
    clear(&mut bar);
    summary
}

fn shown_secs(summary: Option<Summary>) -> f64 {
    summary.map_or(0.0, |s| s.elapsed.as_secs_f64()).max(0.001)
}

fn clear(bar: &mut Option<ProgressBar>) {
    if let Some(bar) = bar.take() {
        *active() = None;
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::model::CrmKind;
    use crate::engine::connect;
    use crate::engine::runner::RunOptions;
    use crate::engine::sync::Engine;
    use crate::sandbox::{self, SandboxOptions};

    fn inbox(pending: u64, leased: u64, scheduled: u64) -> InboxStats {
        InboxStats {
            pending,
            leased,
            scheduled,
            ..InboxStats::default()
        }
    }

    fn activity(settled: u64, reconciles: u64, polls: u64) -> Activity {
        Activity {
            settled,
            reconciles,
            polls,
        }
    }

    #[test]
    fn the_bar_follows_the_first_rounds_backlog() {
        let mut tracker = Tracker::new(0);
        assert_eq!(tracker.step(activity(0, 0, 0), &inbox(0, 0, 0)), Step::Wait);
        // The reconcile enqueues while workers drain: the total grows.
        assert_eq!(
            tracker.step(activity(0, 0, 0), &inbox(90, 8, 0)),
            Step::Show { done: 0, total: 98 }
        );
        assert_eq!(
            tracker.step(activity(10, 1, 0), &inbox(150, 8, 2)),
            Step::Show {
                done: 10,
                total: 170
            }
        );
        // Counts read a moment apart never shrink the total.
        assert_eq!(
            tracker.step(activity(20, 1, 1), &inbox(100, 8, 2)),
            Step::Show {
                done: 20,
                total: 170
            }
        );
        // Drained but for retries waiting: finished.
        assert_eq!(
            tracker.step(activity(168, 1, 1), &inbox(0, 0, 2)),
            Step::Finished {
                done: 168,
                total: 170,
                waiting: 2
            }
        );
    }

    #[test]
    fn no_backlog_means_no_bar_and_an_empty_moment_is_not_the_end() {
        let mut tracker = Tracker::new(5);
        assert_eq!(tracker.step(activity(5, 1, 0), &inbox(0, 0, 0)), Step::Wait);
        assert_eq!(
            tracker.step(activity(5, 1, 1), &inbox(0, 0, 0)),
            Step::Nothing
        );

        // Drained between two pages of the first reconcile: not finished yet.
        let mut tracker = Tracker::new(0);
        assert_eq!(
            tracker.step(activity(0, 0, 1), &inbox(3, 0, 0)),
            Step::Show { done: 0, total: 3 }
        );
        assert_eq!(
            tracker.step(activity(3, 0, 1), &inbox(0, 0, 0)),
            Step::Show { done: 3, total: 3 }
        );
        assert_eq!(
            tracker.step(activity(3, 1, 1), &inbox(0, 0, 0)),
            Step::Finished {
                done: 3,
                total: 3,
                waiting: 0
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sandbox_backfill_is_followed_to_the_end() {
        let checked =
            crate::load::check_file(std::path::Path::new("mappings/dynamics365.yaml"), &[])
                .expect("mapping readable");
        let plan = checked.plan.expect("plan");
        let sandbox = sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox");
        reqwest::Client::new()
            .post(format!("{}/_sandbox/seed", sandbox.base_url()))
            .json(&serde_json::json!({ "referrals": 12 }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("seed");
        let (pc, crm) = connect::sandbox_clients(CrmKind::Dynamics365, sandbox.base_url(), None)
            .expect("clients");
        let dir = tempfile::tempdir().expect("dir");
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = Store::open(&state).await.expect("store");
        let engine = Arc::new(Engine::new(Arc::new(plan), pc, crm, store));
        let runner = Runner::new(engine.clone(), RunOptions::default());

        let bar = BackfillBar::spawn(&runner, ProgressDrawTarget::hidden);
        let drained = runner.run_once().await.expect("sync");
        let summary = bar.stop().await.expect("a backfill was shown");
        assert_eq!(drained.dead, 0);
        assert!(summary.done >= 12, "{summary:?}");
        assert_eq!(summary.done, summary.total, "{summary:?}");
        assert!(
            summary.done <= drained.done + drained.retried,
            "{summary:?}"
        );
        assert!(active().is_none(), "the bar is off the screen");
        engine.store().close().await;
    }
}
