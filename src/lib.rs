//! gantry: a self-hosted GitOps daemon for Terraform and OpenTofu.
//!
//! A webhook arrives at [`ingest`], is verified by its [`vcs`] provider and
//! stored in the [`store`]; the dispatcher in [`queue`] fetches the change with
//! [`git`], asks the [`planner`] which workspaces it affects and queues [`runs`];
//! workers claim them and the [`runner`] runs terraform; [`report`] renders the
//! commit statuses and the one PR comment the provider posts. [`config`] holds the
//! workspace catalog (hot reloaded), [`api`] the REST API, [`app`] wires it all.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | config file: load, validate, hot reload; the pricing catalog and drift settings it names |
//! | [`settings`] | the live config, its providers and redactor, swapped together on reload |
//! | [`vcs`] | `VcsProvider`; GitHub, GitLab, Bitbucket Cloud and Azure DevOps webhooks, statuses, comments |
//! | [`commands`] | `/gantry …` comment commands |
//! | [`ingest`] | `POST /webhooks/{provider}` |
//! | [`git`] | mirror cache, diffs, checkouts |
//! | [`planner`] | affected workspaces (paths, globs, local module graph) |
//! | [`queue`] | dispatcher, worker pool, reaper |
//! | [`runs`] | run state machine, dispatch and execution |
//! | [`runner`] | `Runner`; terraform as a local subprocess, or on an agent of a pool (`RemoteRunner`); the agent wire protocol |
//! | [`agent`] | `gantry agent`: claims its pool's jobs and runs them with the local runner |
//! | [`policy`] | OPA evaluation, policy groups, the `tfrun` input, impact analysis |
//! | [`cost`] | cost estimates of plans |
//! | [`drift`] | drift reports |
//! | [`report`] | status texts, the PR comment and its size limit |
//! | [`outbox`] | reports as rows: delivered in order, by any replica, with backoff |
//! | [`state`] | gantry-kept state and Terraform's `http` backend |
//! | [`redact`] | keeping secrets out of logs and comments |
//! | [`telemetry`] | logging setup |
//! | [`store`] | SQLite/PostgreSQL: migrations, queries, and the records it keeps (runs, cost estimates, policy checks) |
//! | [`retention`] | deleting old plans, logs, state versions, deliveries |
//! | [`api`] | REST API, health |
//!
//! The modules form layers, each importing only from layers below it and never
//! in a circle: `cli` → `app` → `api`/`queue` → `ingest` → `runs` → `policy` →
//! `outbox` → `report` → `agent` → `git`/`runner`/`state` → `settings` →
//! `vcs`/`cost`/`drift`/`planner`/`retention`/`telemetry` →
//! `store`/`config`/`commands` → `redact`. `tests/layers.rs` checks it; the
//! store imports no domain module, so the types it persists are its own
//! (`runs`, `cost` and `policy` re-export them).

pub mod agent;
pub mod api;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cost;
pub mod drift;
pub mod git;
pub mod ingest;
pub mod outbox;
pub mod planner;
pub mod policy;
pub mod queue;
pub mod redact;
pub mod report;
pub mod retention;
pub mod runner;
pub mod runs;
pub mod settings;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod vcs;

pub use app::App;
pub use config::Config;
