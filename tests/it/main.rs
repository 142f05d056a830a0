//! Integration tests, one binary (see CONVENTIONS.md): real app, real git,
//! real terraform, fake GitHub API, SQLite and PostgreSQL.

mod support;

mod agent_client;
mod agent_e2e;
mod agents;
mod apply;
mod artifacts;
mod burst;
mod cli;
mod commands;
mod drain;
mod drift;
mod github_app;
mod ingest;
mod leases;
mod outbox;
mod policy;
mod policy_sets;
mod pr_checks;
mod providers;
mod redact;
mod reload;
mod restart;
mod runner;
mod sandbox;
mod state_backend;
