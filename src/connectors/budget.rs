//! The per-upstream call budget: rate windows (per second, minute, 5 minutes, day) and a
//! concurrency cap, shared by every caller of one upstream. Running out slows callers down;
//! it never fails them.
//!
//! [`Limiter::pause_for`] stops every caller at once, for signals that concern the whole
//! app rather than one request (a spent allocation that resets at a known time).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::model::Budget;

/// Slack added to every window: the service sees calls after network and scheduling
/// delays that vary from call to call, so a window kept exactly nominal on our side can
/// look over budget on theirs.
const WINDOW_MARGIN: Duration = Duration::from_millis(100);

/// One sliding window: at most `limit` calls per `length`.
#[derive(Debug)]
struct Window {
    length: Duration,
    limit: usize,
    calls: VecDeque<Instant>,
}

#[derive(Debug)]
struct State {
    windows: Vec<Window>,
    paused_until: Option<Instant>,
}

/// A rate limiter plus concurrency cap for one upstream.
#[derive(Debug, Clone)]
pub struct Limiter {
    state: Arc<Mutex<State>>,
    concurrency: Option<Arc<Semaphore>>,
    daily_limit: Option<u32>,
}

/// Held while a call is in flight.
#[derive(Debug)]
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limiter {
    /// A limiter enforcing `budget`; an empty budget limits nothing.
    pub fn new(budget: &Budget) -> Limiter {
        let mut windows = Vec::new();
        for (limit, seconds) in [
            (budget.per_second, 1),
            (budget.per_minute, 60),
            (budget.per_5_minutes, 300),
            (budget.per_day, 86_400),
        ] {
            if let Some(limit) = limit {
                windows.push(Window {
                    length: Duration::from_secs(seconds) + WINDOW_MARGIN,
                    limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
                    calls: VecDeque::new(),
                });
            }
        }
        Limiter {
            state: Arc::new(Mutex::new(State {
                windows,
                paused_until: None,
            })),
            concurrency: budget
                .concurrent
                .map(|n| Arc::new(Semaphore::new(usize::try_from(n.max(1)).unwrap_or(1)))),
            daily_limit: budget.per_day,
        }
    }

    /// Waits for a concurrency slot and for room in every window, then counts the call.
    pub async fn acquire(&self) -> Permit {
        let slot = match &self.concurrency {
            // The semaphore is never closed, so acquiring cannot fail.
            Some(semaphore) => Arc::clone(semaphore).acquire_owned().await.ok(),
            None => None,
        };
        loop {
            let wait = {
                let mut state = lock(&self.state);
                let now = Instant::now();
                let mut wait = state
                    .paused_until
                    .filter(|until| *until > now)
                    .map(|until| until - now);
                if wait.is_none() {
                    state.paused_until = None;
                    for window in &mut state.windows {
                        while window
                            .calls
                            .front()
                            .is_some_and(|t| now.duration_since(*t) >= window.length)
                        {
                            window.calls.pop_front();
                        }
                        if window.calls.len() >= window.limit
                            && let Some(oldest) = window.calls.front()
                        {
                            let free_at = *oldest + window.length;
                            let this = free_at.saturating_duration_since(now);
                            wait = Some(wait.map_or(this, |w: Duration| w.max(this)));
                        }
                    }
                }
                if wait.is_none() {
                    for window in &mut state.windows {
                        window.calls.push_back(now);
                    }
                }
                wait
            };
            match wait {
                None => return Permit { _slot: slot },
                // A zero wait means the slot frees this very instant; yield once.
                Some(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }

    /// Stops every caller until `duration` has passed (the service said `Retry-After`).
    pub fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut state = lock(&self.state);
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }

    /// Calls left in the daily allocation, when one is configured.
    pub fn daily_remaining(&self) -> Option<u32> {
        let limit = self.daily_limit?;
        let state = lock(&self.state);
        let now = Instant::now();
        let used = state
            .windows
            .iter()
            .find(|w| w.length == Duration::from_secs(86_400) + WINDOW_MARGIN)
            .map_or(0, |w| {
                w.calls
                    .iter()
                    .filter(|t| now.duration_since(**t) < w.length)
                    .count()
            });
        Some(limit.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, not tokio's paused clock: the paused clock needs tokio's `test-util` feature,
    // which, as a dev-dependency feature, would make every benchmark build recompile tokio and
    // everything above it instead of reusing the release build. Hence ranges, not equalities.

    #[tokio::test]
    async fn a_full_window_makes_callers_wait_for_the_oldest_call_to_leave() {
        let limiter = Limiter::new(&Budget {
            per_second: Some(2),
            ..Budget::default()
        });
        let start = Instant::now();
        for _ in 0..5 {
            drop(limiter.acquire().await);
        }
        // Calls 1–2 at t=0, 3–4 at t=1.1 s, 5 at t=2.2 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(2200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(3000), "{elapsed:?}");
    }

    #[tokio::test]
    async fn the_concurrency_cap_holds_callers_until_a_permit_drops() {
        let limiter = Limiter::new(&Budget {
            concurrent: Some(1),
            ..Budget::default()
        });
        let first = limiter.acquire().await;
        let second = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                drop(limiter.acquire().await);
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        drop(first);
        assert!(second.await.unwrap() >= released);
    }

    #[tokio::test]
    async fn a_pause_stops_everyone_and_daily_remaining_counts_down() {
        let limiter = Limiter::new(&Budget {
            per_day: Some(10),
            ..Budget::default()
        });
        drop(limiter.acquire().await);
        assert_eq!(limiter.daily_remaining(), Some(9));
        limiter.pause_for(Duration::from_secs(1));
        let start = Instant::now();
        drop(limiter.acquire().await);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(990), "{waited:?}");
        assert!(waited < Duration::from_millis(1900), "{waited:?}");
        assert_eq!(limiter.daily_remaining(), Some(8));
    }
}
