//! The HTTP side: the accept loop and what it bounds ([`serve`]), one file per endpoint, and
//! how they answer ([`reply`]) and read tokens ([`token`]).

pub mod counters;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod notify;
pub(crate) mod pending;
pub mod reply;
pub mod serve;
pub mod token;
