//! The HTTP side: the accept loop and its limits, the endpoints, the dashboard page.

pub mod dashboard;
pub mod metrics;
pub mod serve;
