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
//! - [`execute`] takes a claimed run through its phases as a straight line
//!   and records how it ended; [`outcome`] types that end ([`outcome::Failure`]
//!   carries the reason text and the stored [`crate::store::FailureKind`]).
//! - [`job`] prepares a run's working copy, runner and job specs; [`guard`]
//!   holds the checks before an apply and the locks after one that did not
//!   finish.
//! - [`heartbeat`] keeps the worker's lease on its run, and stops the run
//!   (fencing) when the lease cannot be kept.

pub mod artifacts;
pub mod command;
pub mod dispatch;
pub mod execute;
pub mod guard;
pub mod heartbeat;
pub mod job;
pub mod outcome;
pub mod running;

/// The run record is the store's: re-exported where runs are orchestrated.
pub use crate::store::{PlanSummary, Run, RunKind, RunSource, RunState};
