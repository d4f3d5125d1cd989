//! Configuration errors are clear messages at start, never panics.

use std::process::Command;

fn abacus(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_abacus"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run abacus")
}

/// Arguments, environment, and a word the error message must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_config_is_a_clear_error_and_exit_code_2() {
    let cases: [Case; 4] = [
        (&["serve"], &[("ABACUS_SERVER__BIND", "nowhere")], "bind"),
        (
            &["serve"],
            &[("ABACUS_INGEST__MAILBOX_CAPACITY", "0")],
            "ingest.mailbox_capacity",
        ),
        (&["serve"], &[("ABACUS_SERVER__PORTT", "1")], "portt"),
        (
            &["serve", "--config", "/nonexistent/abacus.toml"],
            &[],
            "/nonexistent/abacus.toml",
        ),
    ];
    for (args, env, mentions) in cases {
        let out = abacus(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(mentions),
            "{mentions} not in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_config_file_overrides_the_defaults_and_keys_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("abacus.toml");
    std::fs::write(
        &file,
        "[server]\nworkers = 3\n[auth]\nadmin_keys = [\"very-secret-admin-key\"]\n",
    )
    .unwrap();
    let out = abacus(&["check-config", "--config", file.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("workers: 3"), "{stdout}");
    assert!(!stdout.contains("very-secret"), "{stdout}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = abacus(
        &["serve"],
        &[
            ("ABACUS_SERVER__BIND", &addr),
            ("ABACUS_STORAGE__PATH", dir.path().to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn version_and_probe_answer_for_installs_and_health_checks() {
    let out = abacus(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("abacus {}", env!("CARGO_PKG_VERSION"))
    );

    let server = crate::common::TestServer::start();
    let port = server.url("").rsplit(':').next().expect("port").to_owned();
    // An unspecified bind address (a container's) is probed on loopback.
    let bind = format!("0.0.0.0:{port}");
    let env = [
        ("ABACUS_SERVER__BIND", bind.as_str()),
        ("ABACUS_AUTH__ALLOW_OPEN", "true"),
    ];
    let ready = abacus(&["probe"], &env);
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    drop(server);
    let gone = abacus(&["probe"], &env);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not ready"));
}
