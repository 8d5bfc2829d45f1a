//! `citas-realtime demo`, as a person runs it: it prints working tokens and a database URL,
//! delivers changes, simulates some, and Ctrl-C removes everything.

use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{connect, Ws, DEADLINE};

#[tokio::test]
async fn the_demo_serves_prints_tokens_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_citas-realtime"))
        .args(["demo", "--bind-addr", "127.0.0.1:0", "--simulate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut health, mut database, mut token, mut websocat) = (None, None, None, None);
    let deadline = Instant::now() + DEADLINE * 4;
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline.into(), lines.next_line())
        .await
        .expect("demo output in time")
    {
        let line = line.trim().to_string();
        if let Some(rest) = line.strip_prefix("health:") {
            health = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("database:") {
            database = Some(rest.trim().to_string());
        } else if line.starts_with("token for negocio_123") {
            token = lines
                .next_line()
                .await
                .ok()
                .flatten()
                .map(|t| t.trim().to_string());
        } else if line.starts_with("websocat") && websocat.is_none() {
            websocat = Some(line.clone());
        } else if line.starts_with("Ctrl-C stops") {
            break;
        }
    }
    let (health, database, token) = (
        health.expect("health URL printed"),
        database.expect("database URL printed"),
        token.expect("token printed"),
    );
    assert!(
        websocat.is_some_and(|w| w.contains(&token)),
        "a snippet to connect"
    );

    let ws_url = health.replace("http://", "ws://").replace("/health", "/ws");
    let (socket, _) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}"))
        .await
        .expect("the printed token connects");
    let mut ws = Ws::new(socket);
    ws.subscribe("negocio_123").await;
    let db = connect(&database).await;
    db.batch_execute("update citas set estado = 'completada' where id = (select id from citas where negocio_id = 'negocio_123' and estado <> 'completada' limit 1)")
        .await
        .unwrap();
    loop {
        // --simulate may slip its own changes in first.
        let event = ws.next().await;
        if event["type"] == "cita_status_changed" && event["data"]["estado"] == "completada" {
            break;
        }
    }
    // --simulate keeps writing: the log grows without us.
    let first = last_seq(&health).await;
    let deadline = Instant::now() + DEADLINE;
    while last_seq(&health).await <= first {
        assert!(Instant::now() < deadline, "--simulate wrote nothing");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(db);

    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the demo stops within the deadline")
        .unwrap();
    assert!(status.success(), "demo exit status {status}");
    assert_eq!(ws.closed().await.map(u16::from), Some(1001));
    assert!(
        tokio_postgres::connect(&database, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the demo database is gone"
    );
}

async fn last_seq(health: &str) -> i64 {
    let body: Value = reqwest::get(health).await.unwrap().json().await.unwrap();
    body["last_seq"].as_i64().unwrap_or_default()
}
