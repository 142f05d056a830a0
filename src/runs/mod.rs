//! Runs: one execution for one workspace at one commit, its persisted state
//! machine, and the orchestration of its phases.
//!
//! ```text
//! queued ─▶ fetching ─▶ planning ─▶ planned                      (plan runs)
//!    │          │           └──────▶ needs_confirmation ─┐        (apply runs)
//!    │          │           └──────▶ applying ─▶ applied  │
//!    │          │                        ▲               │ confirm
//!    │          └─────── (confirmed) ────┘◀── queued ◀───┘
//!    ├─▶ superseded (a newer commit on the PR)   errored (with a reason) from any active state
//!    └─▶ canceled
//! ```
//!
//! A plan interrupted by a crash is queued again once; an apply never is: it is
//! marked `errored: interrupted during apply` and its workspace is locked.
//!
//! - [`dispatch`] turns a stored webhook event into runs (git diff → planner).
//! - [`execute`] takes a claimed run through fetch, plan and report.
//! - [`heartbeat`] keeps the worker's lease on its run, and stops the run
//!   (fencing) when the lease cannot be kept.

pub mod artifacts;
pub mod command;
pub mod dispatch;
pub mod execute;
pub mod heartbeat;

/// The run record is the store's: re-exported where runs are orchestrated.
pub use crate::store::{PlanSummary, Run, RunKind, RunSource, RunState};
