//! The SQL of `sql/`, embedded so the binary (demo, tests, later `citas-realtime sql`) carries
//! exactly the files a DBA reads.

/// Creates `public.citas` as the REST API uses it, when missing (demo and tests only).
pub const EXAMPLE_SCHEMA: &str = include_str!("../../sql/example_schema.sql");
/// Installs or upgrades the event log and the triggers. Idempotent, one transaction.
pub const INSTALL: &str = include_str!("../../sql/install.sql");
/// Removes everything `INSTALL` created; never touches a row of `public.citas`.
pub const UNINSTALL: &str = include_str!("../../sql/uninstall.sql");

/// What `citas_realtime.version()` answers once [`INSTALL`] ran.
pub const SQL_VERSION: i32 = 6;

/// Applies one of our SQL files. They hold their own BEGIN/COMMIT; after a failure the session
/// is left in an aborted transaction, which is rolled back here.
pub(crate) async fn apply(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = client.batch_execute("rollback").await;
            Err(error)
        }
    }
}

/// The channel the triggers notify on and the listener listens to.
pub const NOTIFY_CHANNEL: &str = "citas_realtime";
