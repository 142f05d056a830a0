//! Leases on claimed work (events being dispatched, runs being worked).
//!
//! A claim stores a random token with the lease's expiry. The holder renews the
//! lease with heartbeats, and every write it makes as the holder (transitions,
//! completions) names the token: `WHERE id = ? AND lease_token = ?`. Once a lease
//! expired and the work was reaped or claimed again, the old holder's token no
//! longer matches, so its late writes change nothing (they fail with
//! [`super::StoreError::LeaseLost`], which callers log).

/// A claim on one event or run: its id and the token this claim was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub token: String,
}

/// A fresh token for one claim: random, never reused.
pub(super) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
