//! Per-app quota on stored bytes (`app_quota_bytes`; 0 = unlimited).
//!
//! An app's stored bytes are what the store reports for its shuffles (bytes buffered in memory plus
//! bytes written to segment files), read from [`Store::status`] at most every [`REFRESH`], plus what
//! was accepted since that snapshot and what is being pushed right now. A push batch is refused with
//! RESOURCE_EXHAUSTED when it would take the app over its quota; other apps are unaffected.
//!
//! The count errs on the safe side and is exact again after the next snapshot:
//! - a batch is reserved before it reaches the store, so concurrent streams of one app cannot overshoot;
//! - blocks a client resends (reported back as `duplicate_blocks`) are not stored twice, but count
//!   twice until the next snapshot;
//! - data deleted by UnregisterShuffle / UnregisterApp (which drop the snapshot) or by lease expiry
//!   (seen at the next snapshot) stops counting.
//!
//! It lives in the service layer and reads the store only through its public status.

use crate::error::StoreError;
use crate::ids::AppId;
use crate::store::{StatusSnapshot, Store};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest age of the store snapshot a quota check uses.
pub const REFRESH: Duration = Duration::from_millis(250);

pub struct Quota {
    /// Bytes per app; 0 = unlimited.
    pub limit_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    taken_at: Option<Instant>,
    /// Per app: stored bytes at `taken_at`.
    stored: HashMap<String, u64>,
    /// Per app: bytes accepted by the store since `taken_at`.
    accepted: HashMap<String, u64>,
    /// Per app: bytes of batches on their way into the store.
    in_flight: HashMap<String, u64>,
}

impl State {
    fn held(&self, app: &str) -> u64 {
        [&self.stored, &self.accepted, &self.in_flight]
            .iter()
            .map(|m| m.get(app).copied().unwrap_or(0))
            .sum()
    }
}

/// Stored bytes per app (buffered plus on disk) in a status snapshot.
pub fn stored_by_app(status: &StatusSnapshot) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for s in &status.shuffles {
        *out.entry(s.app_id.clone()).or_default() += s.buffered_bytes + s.disk_bytes;
    }
    out
}

impl Quota {
    pub fn new(limit_bytes: u64) -> Arc<Quota> {
        Arc::new(Quota {
            limit_bytes,
            state: Mutex::new(State::default()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.limit_bytes > 0
    }

    /// Reserves `bytes` for a push of `app`, or refuses it with `QuotaExceeded`. `Ok(None)` when
    /// quotas are off. Drop the reservation when the push failed; [`Reservation::accepted`] when the
    /// store took it.
    pub fn reserve(
        self: &Arc<Self>,
        store: &Store,
        app: &AppId,
        bytes: u64,
    ) -> Result<Option<Reservation>, StoreError> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut st = self.state.lock();
        if st.taken_at.is_none_or(|t| t.elapsed() >= REFRESH) {
            // Taken under the lock: a push that reached the store but has not called `accepted` yet
            // counts twice until the next snapshot, never zero times.
            st.stored = stored_by_app(&store.status());
            st.accepted.clear();
            st.taken_at = Some(Instant::now());
        }
        let held = st.held(app.as_str());
        if held.saturating_add(bytes) > self.limit_bytes {
            metrics::counter!("croupier_quota_exceeded_total").increment(1);
            return Err(StoreError::QuotaExceeded(format!(
                "app {app} holds {held} bytes, quota {} bytes; a batch of {bytes} bytes was refused",
                self.limit_bytes
            )));
        }
        *st.in_flight.entry(app.to_string()).or_default() += bytes;
        Ok(Some(Reservation {
            quota: self.clone(),
            app: app.to_string(),
            bytes,
            accepted: false,
        }))
    }

    /// Forgets the snapshot (after an unregistration): the next check reads the store again.
    pub fn invalidate(&self) {
        self.state.lock().taken_at = None;
    }

    fn finish(&self, app: &str, bytes: u64, accepted: bool) {
        let mut st = self.state.lock();
        if let Some(v) = st.in_flight.get_mut(app) {
            *v = v.saturating_sub(bytes);
            if *v == 0 {
                st.in_flight.remove(app);
            }
        }
        if accepted {
            *st.accepted.entry(app.to_string()).or_default() += bytes;
        }
    }
}

/// Bytes of one batch on its way into the store.
pub struct Reservation {
    quota: Arc<Quota>,
    app: String,
    bytes: u64,
    accepted: bool,
}

impl Reservation {
    /// The store accepted the batch: its bytes count as stored.
    pub fn accepted(mut self) {
        self.accepted = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.quota.finish(&self.app, self.bytes, self.accepted);
    }
}
