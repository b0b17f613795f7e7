//! The store a fleet of gateways shares (`shared:`): one Redis, reached over one multiplexed
//! connection per gateway, that holds limits, budgets, leases and the response cache's
//! shared tier. Requests never wait on a connection attempt: while the store is down they
//! get `shared.on_error` at once, and a supervisor reconnects with backoff in the
//! background. `switchyard_shared_store_up` says which it is.

pub mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::sync::Notify;

use crate::config::shared::SharedSettings;
use crate::lock;
use crate::metrics::FleetMetrics;

pub static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ADMIT));
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::SETTLE));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RENEW));

/// Longest a background call (settlement, renewal, health check) waits: it delays no request.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connected store is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a connection is made: connecting and each answer within [`BACKGROUND_TIMEOUT`] (a
/// request's own wait is bounded by `shared.timeout` around the call).
fn connection_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
        .set_response_timeout(Some(BACKGROUND_TIMEOUT))
}

/// A lease to renew: a sorted set and the member in it.
pub type Lease = (Arc<str>, String);

/// The shared store of this gateway. Built at start; a reload does not change it.
pub struct SharedStore {
    pub settings: SharedSettings,
    client: redis::Client,
    /// The supervisor's connection: whether the store is up, health checks.
    conn: ArcSwapOption<MultiplexedConnection>,
    /// The connection requests use, made from the request path's own runtime so that its
    /// driver task runs beside the requests (a call on the supervisor's connection crosses
    /// to the supervisor's thread and back: about 0.3 ms on this 2-core machine).
    fast: Arc<ArcSwapOption<MultiplexedConnection>>,
    connecting: Arc<std::sync::atomic::AtomicBool>,
    up: prometheus::IntGauge,
    admission_seconds: prometheus::Histogram,
    /// This process's id in lease members, unique across the fleet and restarts.
    instance: String,
    seq: AtomicU64,
    /// Leases held by requests in flight, renewed until released: id → (set, member).
    leases: Mutex<HashMap<u64, Vec<Lease>>>,
    /// Wakes the supervisor when a call failed, to check the connection now.
    suspect: Notify,
}

impl SharedStore {
    pub fn new(settings: SharedSettings, metrics: &FleetMetrics) -> Result<Self, String> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.redis.as_str())
            .map_err(|e| format!("shared.redis: {e}"))?;
        if let Some(p) = &settings.password {
            let redis = info.redis_settings().clone().set_password(&p.0);
            info = info.set_redis_settings(redis);
        }
        let client = redis::Client::open(info).map_err(|e| format!("shared.redis: {e}"))?;
        let instance = format!(
            "{:x}{:x}",
            std::process::id(),
            fastrand::u64(..) ^ crate::upstream::now_ms()
        );
        metrics.up.set(0);
        Ok(Self {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            fast: Arc::default(),
            connecting: Arc::default(),
            up: metrics.up.clone(),
            admission_seconds: metrics.admission_seconds.clone(),
            instance,
            seq: AtomicU64::new(0),
            leases: Mutex::default(),
            suspect: Notify::new(),
        })
    }

    /// `key_prefix` + `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.settings.key_prefix)
    }

    pub fn is_up(&self) -> bool {
        self.conn.load().is_some()
    }

    /// A new lease member: unique in the fleet.
    pub fn member(&self) -> (u64, String) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        (n, format!("{}:{n}", self.instance))
    }

    /// Runs a script within `shared.timeout`; `None` when the store is down, slow or failed
    /// (the caller applies `on_error`).
    pub async fn admit<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Option<T> {
        let started = Instant::now();
        let answer = self.call(call, self.settings.timeout).await;
        if answer.is_some() {
            self.admission_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        answer
    }

    /// A connection for a call: the request path's own once made, else the supervisor's
    /// (and the request path's is made in the background); `None` while the store is down.
    fn connection(&self) -> Option<MultiplexedConnection> {
        if let Some(c) = self.fast.load().as_deref() {
            return Some(c.clone());
        }
        let c = MultiplexedConnection::clone(self.conn.load().as_deref()?);
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let (client, fast, connecting) = (
                self.client.clone(),
                self.fast.clone(),
                self.connecting.clone(),
            );
            let config = connection_config();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        if let Ok(c) = client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await
                        {
                            fast.store(Some(Arc::new(c)));
                        }
                        connecting.store(false, Ordering::Release);
                    });
                }
                Err(_) => self.connecting.store(false, Ordering::Release),
            }
        }
        Some(c)
    }

    /// Forgets every connection (the store was lost); the supervisor reconnects.
    fn lost(&self) {
        self.conn.store(None);
        self.fast.store(None);
        self.up.set(0);
    }

    async fn call<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Option<T> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(timeout, call.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!("shared store: {e}");
                // This connection is made again on the next call.
                self.fast.store(None);
                self.suspect.notify_one();
                None
            }
            Err(_) => {
                self.suspect.notify_one();
                None
            }
        }
    }

    /// Runs a script off the request path (settlement, release).
    pub fn spawn(self: &Arc<Self>, call: ScriptInvocation<'static>) {
        let store = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if store
                .call::<redis::Value>(&call, BACKGROUND_TIMEOUT)
                .await
                .is_none()
            {
                tracing::warn!(
                    "shared store: a settlement was lost (its leases expire on their own)"
                );
            }
        });
    }

    /// A value and its remaining life in ms, within `shared.timeout`; `None` when absent or
    /// the store did not answer.
    pub async fn get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        let mut conn = self.connection()?;
        let mut pipe = redis::pipe();
        pipe.get(key).pttl(key);
        let answer = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((Some(v), ttl))) if ttl > 0 => Some((v, ttl as u64)),
            Ok(Ok(_)) => None,
            Ok(Err(_)) | Err(_) => {
                self.suspect.notify_one();
                None
            }
        }
    }

    /// Sets `key` to `value` for `ttl_ms`, off the request path.
    pub fn spawn_set(self: &Arc<Self>, key: String, value: Vec<u8>, ttl_ms: u64) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(value).arg("PX").arg(ttl_ms.max(1));
            let set = cmd.query_async::<()>(&mut conn);
            if !matches!(
                tokio::time::timeout(BACKGROUND_TIMEOUT, set).await,
                Ok(Ok(()))
            ) {
                tracing::debug!("shared store: a cache entry was not stored");
            }
        });
    }

    /// Keeps `entries` renewed until [`Self::release`].
    pub fn hold(&self, id: u64, entries: Vec<Lease>) {
        if !entries.is_empty() {
            lock(&self.leases).insert(id, entries);
        }
    }

    pub fn release(&self, id: u64) {
        lock(&self.leases).remove(&id);
    }

    /// Connects, reconnects with backoff, checks the connection every second and renews the
    /// leases of requests in flight every third of `shared.lease`, until `shutdown`.
    pub async fn supervise(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        let mut renewed = Instant::now();
        let mut lost_logged = false;
        loop {
            if self.conn.load().is_none() {
                let config = connection_config();
                match self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => {
                        self.conn.store(Some(Arc::new(c)));
                        self.up.set(1);
                        backoff = BACKOFF_MIN;
                        lost_logged = false;
                        tracing::info!("shared store connected ({})", self.settings.redis);
                    }
                    Err(e) => {
                        if !lost_logged {
                            tracing::warn!(
                                "shared store {} unreachable: {e}; requests get on_error: {} until it is back",
                                self.settings.redis,
                                self.settings.on_error.name()
                            );
                            lost_logged = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.suspect.notified() => {}
                _ = shutdown.changed() => return,
            }
            let mut ok = self.ping().await;
            if ok && renewed.elapsed() >= self.settings.lease / 3 {
                ok = self.renew().await;
                renewed = Instant::now();
            }
            if !ok {
                self.lost();
                tracing::warn!("shared store {} lost; reconnecting", self.settings.redis);
                lost_logged = true;
            }
        }
    }

    async fn ping(&self) -> bool {
        let Some(conn) = self.conn.load_full() else {
            return false;
        };
        let mut conn = MultiplexedConnection::clone(&conn);
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(BACKGROUND_TIMEOUT, ping).await,
            Ok(Ok(_))
        )
    }

    async fn renew(&self) -> bool {
        let entries: Vec<Lease> = lock(&self.leases).values().flatten().cloned().collect();
        if entries.is_empty() {
            return true;
        }
        let mut call = RENEW.prepare_invoke();
        call.arg(self.settings.lease.as_millis() as u64);
        for (key, member) in &entries {
            call.key(key.as_ref()).arg(member.as_str());
        }
        self.call::<i64>(&call, BACKGROUND_TIMEOUT).await.is_some()
    }
}
