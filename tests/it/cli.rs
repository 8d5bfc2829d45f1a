//! The binary's contract with operators: bad configuration is one line naming the variable.

use std::process::Command;

fn run(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with(envs, args);
    (code, stderr)
}

#[test]
fn missing_or_invalid_config_names_the_variable_in_one_line() {
    let url = (
        "DATABASE_URL",
        "postgres://u@127.0.0.1:1/db?sslmode=disable",
    );
    let secret = ("JWT_SECRET", "s3cret-s3cret-s3cret");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![secret], "DATABASE_URL"),
        (vec![url], "JWT_SECRET"),
        (vec![url, secret, ("BIND_ADDR", "nowhere")], "BIND_ADDR"),
        (
            vec![("DATABASE_URL", "postgres://h/db?sslmode=maybe"), secret],
            "DATABASE_URL",
        ),
        (
            vec![url, secret, ("CLIENT_QUEUE_CAPACITY", "lots")],
            "CLIENT_QUEUE_CAPACITY",
        ),
    ];
    for (envs, var) in cases {
        for args in [&[][..], &["serve"][..]] {
            let (code, stderr) = run(&envs, args);
            assert!(code.is_some_and(|c| c != 0), "{var}: exit {code:?}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{var}: {stderr}");
            assert!(lines[0].contains(var), "{var}: {stderr}");
        }
    }
}

#[test]
fn help_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_citas-realtime"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    for sub in ["serve", "demo", "token", "sql", "check"] {
        let out = Command::new(env!("CARGO_BIN_EXE_citas-realtime"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example"));
    }
}

fn run_with(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_citas-realtime"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .env_remove("BIND_ADDR")
        .current_dir(std::env::temp_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn token_signs_what_it_is_asked() {
    let secret = "cli-secret-cli-secret-cli-secret-0";
    let (code, stdout, _) = run_with(
        &[("JWT_SECRET", secret)],
        &["token", "--negocio", "a", "--negocio", "b", "--ttl", "2h"],
    );
    assert_eq!(code, Some(0));
    let config = crate::helpers::config_with("postgres://u@localhost/db", |a| {
        a.jwt_secret = Some(secret.to_string())
    });
    let verifier = citas_realtime::auth::jwt::Verifier::with_checks(
        config.jwt_secret.as_ref(),
        None,
        &config.token_checks,
    )
    .unwrap();
    let principal = verifier.verify(stdout.trim()).await.expect("a valid token");
    assert!(principal.grants.allows("a") && principal.grants.allows("b"));
    assert!(!principal.grants.allows("c"));
    let lifetime = principal.expires_at - citas_realtime::auth::jwt::now_secs();
    assert!(
        (7000..=7200).contains(&lifetime),
        "ttl 2h, got {lifetime} s"
    );
    let (code, _, stderr) = run_with(&[], &["token", "--negocio", "a"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
}

#[tokio::test]
async fn sql_install_then_check_then_uninstall() {
    let db = crate::helpers::TestDb::empty().await;
    let url = db.url.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_with(
            &[("DATABASE_URL", &url)],
            &["sql", "install", "--with-example-schema"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "version {} installed",
            citas_realtime::log::sql::SQL_VERSION
        )),
        "{stdout}"
    );
    db.execute("insert into citas (negocio_id) values ('cli')")
        .await;
    assert_eq!(db.logged("cli").await.len(), 1);

    let url = db.url.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        run_with(
            &[
                ("DATABASE_URL", &url),
                ("JWT_SECRET", "a-secret-of-more-than-32-bytes-0123456789"),
            ],
            &["check"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    for name in [
        "config",
        "jwt",
        "reachable",
        "tls",
        "listen",
        "sql",
        "triggers",
        "privileges",
        "records",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!("{name}:"))),
            "no ok line for {name}:\n{stdout}"
        );
    }
    assert!(stdout.contains(&format!(
        "version {} installed",
        citas_realtime::log::sql::SQL_VERSION
    )));

    let url = db.url.clone();
    let (code, _, _) = tokio::task::spawn_blocking(move || {
        run_with(&[("DATABASE_URL", &url)], &["sql", "uninstall"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(db.execute("select * from citas").await, 1, "rows kept");

    let url = db.url.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        run_with(&[("DATABASE_URL", &url), ("JWT_SECRET", "x")], &["check"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL sql:") && l.contains("sql install")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("warn jwt:")),
        "{stdout}"
    );
    // Every line is one check.
    assert!(stdout
        .lines()
        .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))));
}

#[test]
fn check_names_an_unreachable_database() {
    let (code, stdout, _) = run_with(
        &[(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/db?sslmode=disable",
        )],
        &["check"],
    );
    assert_eq!(code, Some(1));
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL reachable:")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL jwt:")),
        "{stdout}"
    );
}

/// `check` with JWKS keys and the SQL access hook: the keys are loaded and counted, and a hook
/// function that is missing is a failure that says what to do.
#[tokio::test]
async fn check_reports_jwks_keys_and_the_access_hook() {
    let db = crate::helpers::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    // A P-256 public key (RFC 7515's example), published without alg: ES256 by its curve.
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
    )
    .unwrap();
    let check = || {
        let (url, path) = (db.url.clone(), jwks.display().to_string());
        async move {
            let (code, stdout, _) = tokio::task::spawn_blocking(move || {
                run_with(
                    &[
                        ("DATABASE_URL", &url),
                        ("JWT_JWKS_URL", &path),
                        ("CAN_SUBSCRIBE_FUNCTION", "citas_realtime.can_subscribe"),
                    ],
                    &["check"],
                )
            })
            .await
            .unwrap();
            (code, stdout)
        }
    };
    let (code, stdout) = check().await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   jwks:") && l.contains("1 signing key")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("ok   jwt:")),
        "JWKS alone is a valid setup: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL access:") && l.contains("does not exist")),
        "{stdout}"
    );

    db.client
        .batch_execute(
            "create function citas_realtime.can_subscribe(claims jsonb, negocio_id text)
             returns boolean language sql as $$ select false $$",
        )
        .await
        .unwrap();
    let (code, stdout) = check().await;
    assert!(
        stdout.lines().any(|l| l.starts_with("ok   access:")),
        "{stdout}"
    );
    assert_eq!(code, Some(0), "{stdout}");
}

/// `check` names the record columns events carry, and FAILs when one of them was renamed
/// away (every write fails until they are chosen again).
#[tokio::test]
async fn check_reports_the_record_columns_and_a_renamed_one() {
    let db = crate::helpers::TestDb::new().await;
    let check = || {
        let url = db.url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                run_with(
                    &[
                        ("DATABASE_URL", &url),
                        ("JWT_SECRET", "a-secret-of-more-than-32-bytes-0123456789"),
                    ],
                    &["check"],
                )
            })
            .await
            .unwrap()
        }
    };
    db.execute("select citas_realtime.set_record_columns(array['fecha', 'hora_inicio'])")
        .await;
    let (code, stdout, _) = check().await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("ok")
            && l.contains("records:")
            && l.contains("fecha, hora_inicio")),
        "{stdout}"
    );
    db.execute("alter table citas rename column hora_inicio to hora")
        .await;
    let (code, stdout, _) = check().await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("records:") && l.contains("hora_inicio")),
        "{stdout}"
    );
}
