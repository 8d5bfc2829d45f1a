//! The binary's contract with operators: bad configuration is one line naming the variable.

use std::process::Command;

fn run(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
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
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
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
    for sub in ["serve", "demo"] {
        let out = Command::new(env!("CARGO_BIN_EXE_citas-realtime"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example"));
    }
}
