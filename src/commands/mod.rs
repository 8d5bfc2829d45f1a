//! The commands of the binary: `serve` (the composition root), `demo`, `check`, `token`, `sql`.

pub mod admin;
pub mod check;
pub mod demo;
pub mod serve;
