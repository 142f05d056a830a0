//! In-process wake-ups for the durable queues: whoever queues work wakes the
//! loop that takes it at once. The loops also poll, which is how they find
//! work another replica queued; a wake-up is only a shortcut.

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes the workers when runs were queued (or a queued run may have become
/// claimable: a confirmation, an unlock, a reload).
#[derive(Clone, Default)]
pub struct RunsQueued(Arc<Notify>);

/// Wakes the dispatcher when a webhook event was stored.
#[derive(Clone, Default)]
pub struct EventsStored(Arc<Notify>);

macro_rules! wake_up {
    ($name:ident) => {
        impl $name {
            pub fn notify(&self) {
                self.0.notify_one();
            }

            /// Resolves at the next [`notify`](Self::notify) (or at once if
            /// one came since the last wait).
            pub async fn notified(&self) {
                self.0.notified().await
            }
        }
    };
}

wake_up!(RunsQueued);
wake_up!(EventsStored);
