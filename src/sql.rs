//! The SQL of `sql/`, embedded so the binary (demo, tests, later `citas-realtime sql`) carries
//! exactly the files a DBA reads.

/// Creates `public.citas` as the REST API uses it, when missing (demo and tests only).
pub const EXAMPLE_SCHEMA: &str = include_str!("../sql/example_schema.sql");
/// Installs or upgrades the event log and the triggers. Idempotent, one transaction.
pub const INSTALL: &str = include_str!("../sql/install.sql");
/// Removes everything `INSTALL` created; never touches a row of `public.citas`.
pub const UNINSTALL: &str = include_str!("../sql/uninstall.sql");

/// The channel the triggers notify on and the listener listens to.
pub const NOTIFY_CHANNEL: &str = "citas_realtime";
