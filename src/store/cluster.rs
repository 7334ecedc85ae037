//! Coordination between engine instances that share one PostgreSQL store: who an instance is,
//! who runs the periodic pollers, and who may create a new customer right now.
//!
//! PostgreSQL is the coordination engine: every lock here is a *session advisory lock*
//! (`pg_try_advisory_lock` / `pg_advisory_lock`), held by a database connection and released
//! by the server when that session ends — at once when an instance is killed (the kernel
//! closes its sockets), after TCP keepalive when its host vanishes. Lock keys are
//! `hashtextextended('<schema>:cosell:<what>:<pipeline>:<name>', 0)`, 64 bits. Advisory locks
//! are database-wide, so the key names the store's schema (`current_schema()`): stores in two
//! schemas of one database, and pipelines in one store, never contend by accident.
//!
//! A SQLite store serves one engine process (its file lock, [`Store::lock_single_engine`]), so
//! there every instance is alone and always leads, and in-process locks are enough.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection as _, Postgres, Row as _};

use super::{Backend, Cols as _, EngineLock, Store, StoreError, db, now_ms};

/// How long poller runs are kept in `poller_runs`.
const POLLER_RUNS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// This instance's hold on its name (see [`Store::start_instance`]); released when dropped or
/// when the process ends, however it ends.
#[derive(Debug)]
pub struct InstanceLock {
    _sqlite: Option<EngineLock>,
    _postgres: Option<PgConnection>,
}

/// The poller leadership of one pipeline as seen from one instance ([`Store::leadership`]).
#[derive(Debug)]
pub struct Leadership {
    store: Store,
    key: String,
    /// The session that holds (or tried to take) the lock; `None` after it broke.
    session: Option<PgConnection>,
    leading: bool,
}

/// Locks on names (new customers being found or created) held across instances until
/// [`KeyLocks::release`] or drop.
#[derive(Debug)]
pub struct KeyLocks {
    session: Option<PoolConnection<Postgres>>,
}

/// What [`Store::poller_runs`] returns: one run of a periodic poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerRun {
    /// Row id (increasing with start).
    pub id: i64,
    /// `reconcile` or `crm_poll`.
    pub poller: String,
    /// The instance that ran it.
    pub instance: String,
    /// Unix milliseconds when it started.
    pub started_at: i64,
    /// Unix milliseconds when it finished; `None` while running, or if its instance died.
    pub finished_at: Option<i64>,
    /// `ok` or the error's text.
    pub outcome: Option<String>,
}

impl Store {
    fn pg(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    fn lock_name(&self, what: &str, name: &str) -> String {
        format!("cosell:{what}:{}:{name}", self.pipeline)
    }

    async fn session(
        &self,
        pool: &PgPool,
        doing: &'static str,
    ) -> Result<PgConnection, StoreError> {
        PgConnection::connect_with(&pool.connect_options())
            .await
            .map_err(db(doing))
    }

    /// Registers this engine process as instance `name` of the pipeline and takes back the
    /// jobs a previous process of that name left leased; returns the lock and how many jobs
    /// it released.
    ///
    /// - SQLite: the store's file lock ([`Store::lock_single_engine`]); `name` is not needed,
    ///   there is only one engine.
    /// - PostgreSQL: a session advisory lock on the name, held for the life of the returned
    ///   [`InstanceLock`]. While it is held no other live process uses the name, so every
    ///   lease in the name is a dead predecessor's, and its jobs need not wait for the lease
    ///   to expire. [`StoreError::Conflict`] if a live instance already has the name.
    /// - In-memory SQLite: nothing to lock.
    pub async fn start_instance(&self, name: &str) -> Result<(InstanceLock, u64), StoreError> {
        let Some(pool) = self.pg() else {
            return Ok(match self.lock_single_engine().await? {
                Some((lock, released)) => (
                    InstanceLock {
                        _sqlite: Some(lock),
                        _postgres: None,
                    },
                    released,
                ),
                None => (
                    InstanceLock {
                        _sqlite: None,
                        _postgres: None,
                    },
                    0,
                ),
            });
        };
        const DOING: &str = "registering the engine instance";
        let mut session = self.session(pool, DOING).await?;
        let held: bool =
            sqlx::query("SELECT pg_try_advisory_lock(hashtextextended(coalesce(current_schema(), '') || ':' || $1, 0)) AS held")
                .bind(self.lock_name("instance", name))
                .fetch_one(&mut session)
                .await
                .and_then(|row| row.try_get("held"))
                .map_err(db(DOING))?;
        if !held {
            return Err(StoreError::Conflict {
                message: format!(
                    "another cosell instance named '{name}' is running pipeline '{}' on {}; \
                     give each instance its own name (--instance or COSELL_INSTANCE)",
                    self.pipeline, self.url
                ),
            });
        }
        let released = sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL \
             WHERE pipeline = $1 AND lease_owner = $2",
        )
        .bind(&*self.pipeline)
        .bind(name)
        .execute(pool)
        .await
        .map_err(db("releasing the leases of a stopped instance"))?
        .rows_affected();
        Ok((
            InstanceLock {
                _sqlite: None,
                _postgres: Some(session),
            },
            released,
        ))
    }

    /// The leadership of the pipeline's pollers, not yet taken: [`Leadership::check`] takes it
    /// when free.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            store: self.clone(),
            key: self.lock_name("pollers", "leader"),
            session: None,
            leading: false,
        }
    }

    /// Locks every name in `names` (e.g. a new customer's lookup key), waiting for other
    /// instances that hold any of them, in sorted order so no two holders wait on each other.
    /// Released by [`KeyLocks::release`], or by dropping the guard (its session is then
    /// closed, which releases the locks too). A no-op on SQLite (one engine process; the
    /// engine's own locks serialize it).
    pub async fn lock_names(&self, scope: &str, names: &[String]) -> Result<KeyLocks, StoreError> {
        let Some(pool) = &self.lock_pool else {
            return Ok(KeyLocks { session: None });
        };
        if names.is_empty() {
            return Ok(KeyLocks { session: None });
        }
        const DOING: &str = "locking a new customer";
        let mut keys: Vec<String> = names.iter().map(|n| self.lock_name(scope, n)).collect();
        keys.sort_unstable();
        keys.dedup();
        let session = pool.acquire().await.map_err(db(DOING))?;
        // The guard owns the session from here on: dropped half-way (an error, a cancelled
        // job), it closes the session and the server releases whatever was taken.
        let mut guard = KeyLocks {
            session: Some(session),
        };
        for key in keys {
            let Some(session) = guard.session.as_mut() else {
                break;
            };
            sqlx::query("SELECT pg_advisory_lock(hashtextextended(coalesce(current_schema(), '') || ':' || $1, 0))")
                .bind(key)
                .execute(&mut **session)
                .await
                .map_err(db(DOING))?;
        }
        Ok(guard)
    }

    /// Records that this instance starts poller `poller` (`reconcile`, `crm_poll`); returns
    /// the run's id for [`Store::poller_finished`]. Prunes runs older than a week.
    pub async fn poller_started(&self, poller: &str, instance: &str) -> Result<i64, StoreError> {
        let now = now_ms();
        let horizon = now.saturating_sub(i64::try_from(POLLER_RUNS_KEPT.as_millis()).unwrap_or(0));
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM poller_runs WHERE pipeline = $1 AND started_at < $2")
                .bind(&*self.pipeline)
                .bind(horizon)
                .execute(pool)
                .await
                .map_err(db("recording a poller run"))?;
            let row = sqlx::query(
                "INSERT INTO poller_runs (pipeline, poller, instance, started_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(&*self.pipeline)
            .bind(poller)
            .bind(instance)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(db("recording a poller run"))?;
            row.int("id").map_err(db("recording a poller run"))
        })
    }

    /// Records that poller run `id` finished with `outcome` (`ok` or an error's text).
    pub async fn poller_finished(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE poller_runs SET finished_at = $1, outcome = $2 \
                 WHERE pipeline = $3 AND id = $4",
            )
            .bind(now_ms())
            .bind(outcome)
            .bind(&*self.pipeline)
            .bind(id)
            .execute(pool)
            .await
            .map_err(db("recording a poller run"))?;
        });
        Ok(())
    }

    /// The pipeline's newest `limit` poller runs, oldest first.
    pub async fn poller_runs(&self, limit: usize) -> Result<Vec<PollerRun>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, poller, instance, started_at, finished_at, outcome FROM poller_runs \
                 WHERE pipeline = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(&*self.pipeline)
            .bind(super::limit(limit))
            .fetch_all(pool)
            .await
            .map_err(db("reading poller runs"))?;
            let mut runs = rows
                .iter()
                .map(|row| {
                    Ok(PollerRun {
                        id: row.int("id")?,
                        poller: row.text("poller")?,
                        instance: row.text("instance")?,
                        started_at: row.int("started_at")?,
                        finished_at: row.opt_int("finished_at")?,
                        outcome: row.opt_text("outcome")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db("reading poller runs"))?;
            runs.reverse();
            Ok(runs)
        })
    }
}

impl Leadership {
    /// Whether this instance leads the pipeline's pollers now. A leader checks its session is
    /// alive (one round trip); a follower tries to take the lock, which succeeds once the
    /// leader's session has ended. Database errors count as "not leading": an instance that
    /// cannot reach the store must not poll, and its lock is gone with its session anyway.
    /// Always `true` on SQLite.
    pub async fn check(&mut self) -> bool {
        let Some(pool) = self.store.pg().cloned() else {
            return true;
        };
        if self.session.is_none() {
            match self
                .store
                .session(&pool, "taking the poller leadership")
                .await
            {
                Ok(session) => self.session = Some(session),
                Err(error) => {
                    self.lose(&error.to_string());
                    return false;
                }
            }
        }
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let answer = if self.leading {
            // A session advisory lock lasts as long as its session: a live session still
            // holds it.
            sqlx::query("SELECT TRUE AS held")
                .fetch_one(&mut *session)
                .await
        } else {
            sqlx::query("SELECT pg_try_advisory_lock(hashtextextended(coalesce(current_schema(), '') || ':' || $1, 0)) AS held")
                .bind(&self.key)
                .fetch_one(&mut *session)
                .await
        };
        match answer.and_then(|row| row.try_get::<bool, _>("held")) {
            Ok(held) => {
                if held && !self.leading {
                    tracing::info!(
                        "this instance now runs the pollers of pipeline '{}'",
                        self.store.pipeline
                    );
                }
                self.leading = held;
                held
            }
            Err(error) => {
                self.lose(&error.to_string());
                false
            }
        }
    }

    /// Whether the last [`Leadership::check`] found this instance leading.
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    fn lose(&mut self, why: &str) {
        if self.leading {
            tracing::warn!(
                "poller leadership of pipeline '{}' lost: {why}",
                self.store.pipeline
            );
        }
        self.leading = false;
        self.session = None;
    }
}

impl KeyLocks {
    /// Releases the locks and returns the session to the pool.
    pub async fn release(mut self) {
        if let Some(mut session) = self.session.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *session)
                .await;
            if unlocked.is_err() {
                // Unknown state: never hand a session that may hold locks to someone else.
                session.close_on_drop();
            }
        }
    }
}

impl Drop for KeyLocks {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            // Not released cleanly: close the session rather than return it to the pool
            // holding locks; closing it releases them.
            session.close_on_drop();
        }
    }
}
