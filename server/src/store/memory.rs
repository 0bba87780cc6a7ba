//! The memory budget: one counter of pushed bytes held by the server, from the moment a batch is
//! accepted until its chunk has been written to disk.
//!
//! Two thresholds act on it. Above the high watermark the flusher writes the largest partition buffers
//! early. At the limit a push waits (bounded by `push_wait_ms_max`) for memory to be released and is then
//! refused with RETRY_LATER: the server slows or refuses pushes instead of growing. A batch is charged its
//! payload plus [`BLOCK_OVERHEAD_BYTES`] per block, so a stream of tiny blocks cannot hide its real size.
//!
//! A second, separate counter holds the **metadata** the server keeps for stored data: the in-memory block
//! index (one [`BlockLoc`](super::shuffle::BlockLoc) per stored block) and commit records. It grows with
//! what is stored, not with what is buffered, and only goes down when shuffles are deleted; at
//! `metadata_bytes_max` pushes are refused with RESOURCE_EXHAUSTED until some are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct MemoryBudget {
    used_bytes: AtomicU64,
    /// Bytes handed to disk writers and not yet written (a part of `used_bytes`).
    queued_bytes: AtomicU64,
    pub limit_bytes: u64,
    pub high_watermark_bytes: u64,
    /// Signalled whenever bytes are released.
    released: Notify,
    /// Signalled when the flusher should look for work.
    pub flush_wanted: Notify,
    /// Highest `used_bytes` seen, for status and tests.
    peak_bytes: AtomicU64,
    /// Bytes of block index entries and commit records held in memory (see the module doc).
    metadata_bytes: AtomicU64,
    pub metadata_limit_bytes: u64,
}

/// Memory a buffered block costs beyond its payload: its entry in a partition buffer and its share of
/// the push message's framing (which stays allocated with the payload).
pub const BLOCK_OVERHEAD_BYTES: u64 =
    std::mem::size_of::<super::files::BufferedBlock>() as u64 + 24;

pub enum Acquire {
    Granted,
    /// Still over the limit after waiting.
    Refused,
}

impl MemoryBudget {
    pub fn new(limit_bytes: u64, high_watermark_bytes: u64) -> Self {
        assert!(high_watermark_bytes <= limit_bytes);
        MemoryBudget {
            used_bytes: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            limit_bytes,
            high_watermark_bytes,
            released: Notify::new(),
            flush_wanted: Notify::new(),
            peak_bytes: AtomicU64::new(0),
            metadata_bytes: AtomicU64::new(0),
            metadata_limit_bytes: u64::MAX,
        }
    }

    /// Sets the metadata limit (before the budget is shared).
    pub fn with_metadata_limit(mut self, bytes: u64) -> Self {
        self.metadata_limit_bytes = bytes;
        self
    }

    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_bytes.load(Ordering::Acquire)
    }

    /// True when stored metadata has reached its limit: pushes are refused.
    pub fn metadata_full(&self) -> bool {
        self.metadata_bytes() >= self.metadata_limit_bytes
    }

    /// Metadata grew by `bytes` (positive) or shrank (negative).
    pub fn metadata_changed(&self, delta: i64) {
        if delta >= 0 {
            self.metadata_bytes
                .fetch_add(delta as u64, Ordering::AcqRel);
        } else {
            let before = self
                .metadata_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            assert!(
                before >= delta.unsigned_abs(),
                "metadata released more than it held"
            );
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire)
    }

    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Acquire)
    }

    pub fn over_high_watermark(&self) -> bool {
        self.used_bytes() > self.high_watermark_bytes
    }

    fn try_acquire(&self, bytes: u64) -> bool {
        let mut used = self.used_bytes.load(Ordering::Acquire);
        loop {
            let next = used + bytes;
            if next > self.limit_bytes {
                return false;
            }
            match self.used_bytes.compare_exchange_weak(
                used,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.peak_bytes.fetch_max(next, Ordering::AcqRel);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes` from the budget, waiting up to `wait` for other data to be written out.
    pub async fn acquire(&self, bytes: u64, wait: Duration) -> Acquire {
        assert!(
            bytes <= self.limit_bytes,
            "a single batch larger than the memory limit"
        );
        let granted = wait_until(&self.released, Instant::now() + wait, || {
            if self.try_acquire(bytes) {
                if self.over_high_watermark() {
                    self.flush_wanted.notify_one();
                }
                return true;
            }
            self.flush_wanted.notify_one();
            false
        })
        .await;
        if granted {
            Acquire::Granted
        } else {
            Acquire::Refused
        }
    }

    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let before = self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
        assert!(before >= bytes, "memory budget released more than it held");
        self.released.notify_waiters();
    }

    pub fn queue(&self, bytes: u64) {
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes a disk writer is done with: no longer queued. (They are released when their batch's
    /// [`Charge`] drops.)
    pub fn written(&self, bytes: u64) {
        let before = self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        assert!(
            before >= bytes,
            "memory budget unqueued more than it queued"
        );
    }
}

/// Waits on `signal` until `ready()` holds (true) or `deadline` passes (false). `ready` is checked after
/// registering for the next signal, so one sent in between is not missed, and at least every 50 ms, so
/// a waiter that lost a race, or a signal that never comes (a failed disk writer), costs at most that.
pub async fn wait_until(
    signal: &Notify,
    deadline: Instant,
    mut ready: impl FnMut() -> bool,
) -> bool {
    loop {
        let signalled = signal.notified();
        tokio::pin!(signalled);
        signalled.as_mut().enable();
        if ready() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let nap = (deadline - now).min(Duration::from_millis(50));
        let _ = tokio::time::timeout(nap, signalled).await;
    }
}

/// The budget held by one accepted push batch. Every buffered block of the batch holds the charge:
/// a block's bytes are a slice of the batch's receive buffer, which stays allocated until the last of
/// them is gone, so the whole batch stays charged until its last block is written or dropped.
pub struct Charge {
    memory: std::sync::Arc<MemoryBudget>,
    bytes: u64,
}

impl Charge {
    /// Wraps bytes already acquired from `memory`.
    pub fn new(memory: std::sync::Arc<MemoryBudget>, bytes: u64) -> std::sync::Arc<Charge> {
        std::sync::Arc::new(Charge { memory, bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_refuses_after_waiting_and_grants_after_release() {
        let m = MemoryBudget::new(100, 80);
        assert!(matches!(
            m.acquire(90, Duration::ZERO).await,
            Acquire::Granted
        ));
        assert!(matches!(
            m.acquire(20, Duration::from_millis(10)).await,
            Acquire::Refused
        ));
        m.release(50);
        assert!(matches!(
            m.acquire(20, Duration::ZERO).await,
            Acquire::Granted
        ));
        assert_eq!(m.used_bytes(), 60);
        assert_eq!(m.peak_bytes(), 90);
    }
}
