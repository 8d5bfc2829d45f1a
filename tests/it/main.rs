//! The integration tests: one binary, so the private PostgreSQL cluster and the helpers are
//! shared. Every test owns its database; tests run in parallel.

mod adversarial;
mod auth;
mod cli;
mod dashboard;
mod dba;
mod delivery;
mod demo;
mod exhaustion;
mod helpers;
mod hostile;
mod limits;
mod pooler;
mod properties;
mod protocol;
mod records;
mod reliability;
mod resilience;
mod security;
mod sql;
mod stats;
mod tls;
