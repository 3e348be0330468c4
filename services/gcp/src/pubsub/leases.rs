//! The deliveries handed out and not yet settled, by this bus's own ack-id tokens, with
//! the deadline each was leased until (what the server enforces too: an expired lease
//! is refused here with `InvalidAckId` instead of an opaque server error).

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use reel_runtime::bus::BusError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often expired leases are looked for.
const REAPER_PERIOD: Duration = Duration::from_millis(250);

/// One delivery handed out by `receive`, until it is settled.
pub(crate) struct Lease {
    pub(crate) subscription: String,
    /// The server's ack id.
    pub(crate) ack_id: String,
    pub(crate) deadline: Instant,
}

/// The lease table.
#[derive(Default)]
pub(crate) struct Leases {
    by_token: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    pub(crate) fn insert(&self, token: String, lease: Lease) {
        self.by_token.lock().unwrap().insert(token, lease);
    }

    /// Take the lease of `ack_id` on `subscription` out of the table.
    pub(crate) fn take(&self, subscription: &str, ack_id: &str) -> Result<Lease, BusError> {
        let mut leases = self.by_token.lock().unwrap();
        let lease = leases
            .remove(ack_id)
            .ok_or_else(|| BusError::InvalidAckId(format!("{subscription}: unknown or settled ack id {ack_id:?}")))?;
        if lease.subscription != subscription {
            let owner = lease.subscription.clone();
            leases.insert(ack_id.to_string(), lease);
            return Err(BusError::InvalidAckId(format!("{ack_id:?} belongs to {owner}, not {subscription}")));
        }
        if lease.deadline <= Instant::now() {
            return Err(BusError::InvalidAckId(format!("{subscription}: the lease of {ack_id:?} expired")));
        }
        Ok(lease)
    }

    /// Move the deadline of a live lease to `seconds` from now and return its server ack
    /// id; an expired one is forgotten and refused.
    pub(crate) fn extend(&self, subscription: &str, ack_id: &str, seconds: u32) -> Result<String, BusError> {
        let mut leases = self.by_token.lock().unwrap();
        let now = Instant::now();
        match leases.get_mut(ack_id) {
            Some(lease) if lease.subscription == subscription && lease.deadline > now => {
                lease.deadline = now + Duration::from_secs(seconds as u64);
                Ok(lease.ack_id.clone())
            }
            Some(lease) if lease.subscription == subscription => {
                leases.remove(ack_id);
                Err(BusError::InvalidAckId(format!("{subscription}: the lease of {ack_id:?} expired")))
            }
            _ => Err(BusError::InvalidAckId(format!("{subscription}: unknown or settled ack id {ack_id:?}"))),
        }
    }

    /// Every lease, removed from the table.
    pub(crate) fn drain(&self) -> Vec<Lease> {
        self.by_token.lock().unwrap().drain().map(|(_, l)| l).collect()
    }

    /// The leases whose deadline passed, removed from the table.
    fn expired(&self) -> Vec<(String, Lease)> {
        let now = Instant::now();
        let mut leases = self.by_token.lock().unwrap();
        let ids: Vec<String> = leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| id.clone()).collect();
        ids.into_iter().filter_map(|id| leases.remove(&id).map(|l| (id, l))).collect()
    }
}

/// Forget deliveries whose deadline passed (the server redelivers them), until
/// `shutdown` or until the table is dropped.
pub(crate) fn spawn_reaper(leases: Weak<Leases>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAPER_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(leases) = leases.upgrade() else { return };
            for (id, lease) in leases.expired() {
                debug!(subscription = %lease.subscription, ack_id = %id, "ack deadline passed; it will be redelivered");
            }
        }
    });
}

/// Per-process count of deliveries by message, for subscriptions on which Pub/Sub does
/// not report the delivery attempt.
#[derive(Default)]
pub(crate) struct AttemptCounter {
    seen: HashMap<(String, String), (u32, Instant)>,
}

impl AttemptCounter {
    const PRUNE_ABOVE: usize = 10_000;
    const FORGET_AFTER: Duration = Duration::from_secs(3600);

    pub(crate) fn next(&mut self, subscription: &str, message_id: &str) -> u32 {
        let now = Instant::now();
        if self.seen.len() > Self::PRUNE_ABOVE {
            self.seen.retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET_AFTER);
        }
        let entry = self.seen.entry((subscription.to_string(), message_id.to_string())).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_attempts_count_up_per_message() {
        let mut a = AttemptCounter::default();
        assert_eq!(a.next("s", "m1"), 1);
        assert_eq!(a.next("s", "m1"), 2);
        assert_eq!(a.next("s", "m2"), 1);
        assert_eq!(a.next("t", "m1"), 1);
    }
}
