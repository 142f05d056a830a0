//! The runs this process is executing, by id, with their cancel tokens: how a
//! cancel request reaches a run's terraform, and how a phase finds its run's
//! token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<i64, CancellationToken>>>);

impl Running {
    pub fn register_run(&self, run_id: i64, cancel: CancellationToken) {
        self.0
            .lock()
            .expect("running map poisoned")
            .insert(run_id, cancel);
    }

    pub fn unregister_run(&self, run_id: i64) {
        self.0.lock().expect("running map poisoned").remove(&run_id);
    }

    /// The cancel token of a run this process is executing: a cancel
    /// request, a lost lease or the end of the shutdown grace, but not the
    /// start of a drain (which stops plans only).
    pub fn run_token(&self, run_id: i64) -> Option<CancellationToken> {
        self.0
            .lock()
            .expect("running map poisoned")
            .get(&run_id)
            .cloned()
    }

    /// Stops a run this process is executing (its terraform gets SIGINT, then
    /// SIGKILL). Runs held by other replicas stop at their next heartbeat.
    pub fn cancel_local_run(&self, run_id: i64) -> bool {
        match self.run_token(run_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}
