//! The binary as an operator uses it.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::herald_bin;

/// Runs `herald` with a fresh data folder and no stray HERALD_* settings.
fn herald(data: &std::path::Path, args: &[&str]) -> Output {
    herald_cmd(data).args(args).output().expect("herald runs")
}

fn herald_cmd(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(herald_bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(data)
        .env("HERALD_STORE__DATA_DIR", data.join("data"));
    cmd
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path(), &["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("herald "), "{}", stdout(&out));
    for args in [
        &["--help"][..],
        &["queues", "--help"],
        &["serve", "--help"],
        &["bench", "bus", "--help"],
    ] {
        let out = herald(dir.path(), args);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn invalid_configuration_exits_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald_cmd(dir.path())
        .env("HERALD_SERVER__LISTEN", "not-an-address")
        .args(["config", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("server.listen"), "{err}");

    let out = herald_cmd(dir.path())
        .env("HERALD_BUS__BACKEND", "postgres")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("needs the PostgreSQL store") && err.contains("HERALD_BUS__BACKEND=embedded"),
        "{err}"
    );

    std::fs::write(dir.path().join("herald.toml"), "[bus]\nmax_recieves = 3\n").unwrap();
    let out = herald(dir.path(), &["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_recieves"), "{}", stderr(&out));
}

#[test]
fn config_show_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald_cmd(dir.path())
        .env(
            "HERALD_STORE__URL",
            "postgres://herald:hunter2@db.internal/herald",
        )
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("postgres://herald:***@db.internal/herald"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"));
}

#[test]
fn queue_commands_work_on_the_embedded_bus() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path(), &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = herald(dir.path(), &["migrate"]);
    assert!(
        out.status.success(),
        "migrating twice is a no-op: {}",
        stderr(&out)
    );

    let out = herald(
        dir.path(),
        &["queues", "create", "jobs", "--max-receives", "1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for body in ["first", "second"] {
        let out = herald(
            dir.path(),
            &["queues", "send", "jobs", body, "-a", "kind=test"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let out = herald(dir.path(), &["queues", "list"]);
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with("jobs "))
        .expect("jobs listed");
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{table}");

    let out = herald(dir.path(), &["queues", "peek", "jobs", "--max", "1"]);
    let peeked: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(peeked["body"], "first");
    assert_eq!(peeked["attributes"]["kind"], "test");

    let out = herald(dir.path(), &["queues", "purge", "jobs"]);
    assert!(!out.status.success(), "purge needs --yes");
    assert!(stderr(&out).contains("--yes"));
    let out = herald(dir.path(), &["queues", "purge", "jobs", "--yes"]);
    assert!(stdout(&out).contains("purged 2"), "{}", stdout(&out));

    let out = herald(dir.path(), &["queues", "stats", "no-such-queue"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-queue"), "{}", stderr(&out));

    let out = herald(dir.path(), &["queues", "send", "bad name!", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only letters"), "{}", stderr(&out));
}

#[test]
fn api_keys_are_shown_once_and_can_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(
        dir.path(),
        &[
            "keys",
            "create",
            "--name",
            "shard-3",
            "--scope",
            "queues:shard-3.,read-only",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("hk_"), "{token}");
    assert!(stderr(&out).contains("only time"), "{}", stderr(&out));

    let out = herald(dir.path(), &["keys", "list"]);
    let listing = stdout(&out);
    assert!(
        listing.contains("shard-3") && listing.contains("active"),
        "{listing}"
    );
    assert!(!listing.contains(&token), "the secret is never listed");
    let id = listing
        .lines()
        .find(|l| l.contains("shard-3"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let out = herald(dir.path(), &["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = herald(dir.path(), &["keys", "list"]);
    assert!(stdout(&out).contains("revoked"), "{}", stdout(&out));

    let out = herald(
        dir.path(),
        &["keys", "create", "--name", "x", "--scope", "superuser"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("superuser"), "{}", stderr(&out));
}

#[test]
fn redrive_without_a_destination_needs_a_dlq_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path(), &["queues", "redrive", "jobs"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--to"), "{}", stderr(&out));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut child = herald_cmd(dir.path())
        .args(["serve", "--listen", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(&address).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "herald serve never listened");
        assert!(
            child.try_wait().unwrap().is_none(),
            "herald serve exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.path().join("data/herald.db").exists(),
        "the embedded database is created"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {:?}: {log}",
        output.status
    );
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
}

/// The members in the data folder's database, read after the process ended.
fn stored_member_ids(data: &std::path::Path) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", data.join("data/herald.db").display());
        let store = herald_store::Store::connect(&url).await.unwrap();
        let page = store
            .members()
            .list(&herald_store::members::MemberFilter::default())
            .await
            .unwrap();
        store.close().await;
        page.items.into_iter().map(|m| m.id).collect()
    })
}

#[test]
fn import_reports_bad_lines_and_stores_nothing_unless_told_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("members.csv");
    std::fs::write(
        &csv,
        "id,email,name\nm1,a@example.com,Ann\nm2,not-an-address,Bob\nm3,c@example.com,\n",
    )
    .unwrap();

    let out = herald(dir.path(), &["import", "members", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("line 3: email:"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(stored_member_ids(dir.path()).is_empty());

    let out = herald(
        dir.path(),
        &["import", "members", csv.to_str().unwrap(), "--skip-invalid"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 3: email:"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 2 members") && stdout(&out).contains("1 invalid"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stored_member_ids(dir.path()), ["m1", "m3"]);
}

#[test]
fn import_takes_the_format_from_the_extension_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("members.ndjson");
    std::fs::write(&ndjson, "{\"id\":\"m1\",\"email\":\"a@example.com\"}\n").unwrap();
    let out = herald(dir.path(), &["import", "members", ndjson.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 1 members"),
        "{}",
        stdout(&out)
    );

    let subs = dir.path().join("subscriptions.txt");
    std::fs::write(&subs, "member_id,subscribed\nm1,false\n").unwrap();
    let out = herald(
        dir.path(),
        &["import", "subscriptions", subs.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--format"), "{}", stderr(&out));
    let out = herald(
        dir.path(),
        &[
            "import",
            "subscriptions",
            subs.to_str().unwrap(),
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = herald(dir.path(), &["import", "members", "missing.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot open missing.csv"),
        "{}",
        stderr(&out)
    );
    let out = herald(dir.path(), &["import", "brands", "x.csv"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown kind");
}
