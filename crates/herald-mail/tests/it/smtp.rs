//! The SMTP transport against a real SMTP server: aiosmtpd, started per test
//! on a free port by `tests/smtp_capture.py`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use herald_mail::transport::{SmtpConfig, SmtpSecurity, SmtpTransport};
use herald_mail::{OutgoingEmail, SendError, Transport};
use secrecy::SecretString;

use crate::support::{assert_mime_matches, email};

/// A running capture server; stopped (stdin closed, then killed) on drop.
struct CaptureServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: tempfile::TempDir,
}

impl CaptureServer {
    fn start(extra_args: &[&str]) -> Self {
        let probe = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "the SMTP tests need Python's aiosmtpd: run `python3 -m pip install aiosmtpd` ({})",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ),
            Err(err) => panic!("the SMTP tests need python3 with aiosmtpd installed: {err}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_capture.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the capture server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("capture server did not start: {line:?}"));
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            port,
            dir,
        }
    }

    /// Messages received so far, in order: (envelope, raw bytes).
    fn messages(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut emls: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        emls.sort();
        emls.into_iter()
            .map(|eml| {
                let meta = std::fs::read(eml.with_extension("json")).unwrap();
                (
                    serde_json::from_slice(&meta).unwrap(),
                    std::fs::read(&eml).unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16, security: SmtpSecurity) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        security,
        username: None,
        password: None,
        ca_file: None,
        pool_size: 2,
        rate_limit_per_second: None,
        timeout: std::time::Duration::from_secs(20),
    }
}

#[tokio::test]
async fn delivers_multipart_mail_with_all_headers_over_a_pooled_connection() {
    let server = CaptureServer::start(&[]);
    let transport: Arc<dyn Transport> =
        Arc::new(SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap());
    assert_eq!(transport.kind(), "smtp");
    let emails: Vec<_> = (1..=5)
        .map(|i| {
            email(
                &format!("member{i}@example.net"),
                "alert-9",
                &format!("m{i}"),
            )
        })
        .collect();
    // Concurrent sends share the pool.
    let sends = emails.iter().map(|e| {
        let transport = transport.clone();
        async move { transport.send(e).await }
    });
    let receipts = futures::future::join_all(sends).await;
    for receipt in &receipts {
        let id = receipt
            .as_ref()
            .unwrap()
            .provider_message_id
            .clone()
            .unwrap();
        assert!(
            id.starts_with("250 ") && id.contains("queued as herald-test-"),
            "{id}"
        );
    }

    let mut received = server.messages();
    assert_eq!(received.len(), 5);
    received.sort_by_key(|(meta, _)| meta["rcpt_tos"][0].as_str().unwrap().to_owned());
    for (email, (meta, raw)) in emails.iter().zip(&received) {
        assert_eq!(meta["mail_from"], "alerts@shop.example.com");
        assert_eq!(
            meta["rcpt_tos"],
            serde_json::json!([email.to.email.to_string()])
        );
        assert_mime_matches(raw, email);
    }
}

#[tokio::test]
async fn recipient_rejections_are_permanent_and_busy_mailboxes_transient() {
    let server = CaptureServer::start(&[]);
    let transport = SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap();

    let err = transport
        .send(&email("reject-me@example.net", "a1", "m1"))
        .await
        .unwrap_err();
    match &err {
        SendError::Permanent {
            reason,
            suppress_address,
        } => {
            assert!(*suppress_address, "{err}");
            assert!(reason.contains("no such user"), "{reason}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }

    let err = transport
        .send(&email("busy@example.net", "a1", "m2"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("Mailbox busy"), "{err}");

    // The pool still works after both failures.
    transport
        .send(&email("fine@example.net", "a1", "m3"))
        .await
        .unwrap();
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_failure() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let transport = SmtpTransport::new(&config(port, SmtpSecurity::None)).unwrap();
    let err = transport
        .send(&email("a@example.net", "a1", "m1"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_server_that_stops_answering_is_a_transient_failure() {
    // Accepts connections and never sends the greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let transport = SmtpTransport::new(&SmtpConfig {
        timeout: std::time::Duration::from_millis(300),
        ..config(port, SmtpSecurity::None)
    })
    .unwrap();
    for _ in 0..2 {
        let err = transport
            .send(&email("a@example.net", "a1", "m1"))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
    held.abort();
}

#[tokio::test]
async fn invalid_messages_fail_permanently_before_connecting() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let transport = SmtpTransport::new(&config(port, SmtpSecurity::None)).unwrap();
    let mut bad = email("a@example.net", "a1", "m1");
    bad.custom_args.insert("Bad-Key".into(), "x".into());
    let err = transport.send(&bad).await.unwrap_err();
    assert_eq!(
        err,
        SendError::Permanent {
            reason: "invalid message: custom arg key \"Bad-Key\" must be 1-64 characters of a-z, 0-9 and '_', starting with a letter".into(),
            suppress_address: false,
        }
    );
}

/// A private CA and a certificate for `localhost` signed by it, as PEM files.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn tls_config(port: u16, security: SmtpSecurity, pki: &TestPki) -> SmtpConfig {
    SmtpConfig {
        host: "localhost".into(),
        ca_file: Some(pki.path("ca.pem").into()),
        ..config(port, security)
    }
}

#[tokio::test]
async fn starttls_with_auth_delivers_and_wrong_password_is_refused() {
    let pki = TestPki::new();
    let server = CaptureServer::start(&[
        "--starttls",
        &pki.path("cert.pem"),
        &pki.path("key.pem"),
        "--auth",
        "herald",
        "s3cret",
    ]);
    let mut good = tls_config(server.port, SmtpSecurity::Starttls, &pki);
    good.username = Some("herald".into());
    good.password = Some(SecretString::from("s3cret"));
    let message = email("tls@example.net", "a1", "m1");
    SmtpTransport::new(&good)
        .unwrap()
        .send(&message)
        .await
        .unwrap();
    let received = server.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0["auth_user"], "herald");
    assert_eq!(received[0].0["tls"], true);
    assert_mime_matches(&received[0].1, &message);

    let mut wrong = good.clone();
    wrong.password = Some(SecretString::from("guess"));
    let err = SmtpTransport::new(&wrong)
        .unwrap()
        .send(&message)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Permanent {
                suppress_address: false,
                ..
            }
        ),
        "bad credentials must not suppress the member: {err:?}"
    );

    // Without the private CA the server's certificate is not trusted.
    let untrusted = SmtpConfig {
        ca_file: None,
        ..good.clone()
    };
    let err = SmtpTransport::new(&untrusted)
        .unwrap()
        .send(&message)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let pki = TestPki::new();
    let server = CaptureServer::start(&[
        "--implicit-tls",
        &pki.path("cert.pem"),
        &pki.path("key.pem"),
    ]);
    let message = email("wrapped@example.net", "a1", "m1");
    SmtpTransport::new(&tls_config(server.port, SmtpSecurity::Tls, &pki))
        .unwrap()
        .send(&message)
        .await
        .unwrap();
    let received = server.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0["tls"], true);
    assert_mime_matches(&received[0].1, &message);
}

/// A bare SMTP server that counts the connections it accepts and the
/// messages it takes; with `close_after_message` it ends each session
/// right after accepting a message, without telling the client, as a
/// server does when an idle session times out.
struct CountingServer {
    port: u16,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    messages: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    async fn start(close_after_message: bool) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let messages = Arc::new(AtomicUsize::new(0));
        let (conns, msgs) = (connections.clone(), messages.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let msgs = msgs.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 counting ESMTP\r\n").await.unwrap();
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            msgs.fetch_add(1, Ordering::SeqCst);
                            b"250 2.0.0 Ok: queued\r\n"
                        } else {
                            match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                                Some("EHLO") => b"250-counting\r\n250 8BITMIME\r\n",
                                Some("DATA") => {
                                    in_data = true;
                                    b"354 End data with <CR><LF>.<CR><LF>\r\n"
                                }
                                Some("QUIT") => {
                                    let _ = write.write_all(b"221 Bye\r\n").await;
                                    return;
                                }
                                _ => b"250 Ok\r\n",
                            }
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                        if close_after_message && reply.starts_with(b"250 2.0.0") {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            connections,
            messages,
            task,
        }
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.connections.load(Ordering::SeqCst),
            self.messages.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn idle_connections_are_reused_for_the_next_sends() {
    let server = CountingServer::start(false).await;
    let transport = SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap();
    for i in 1..=3 {
        transport
            .send(&email(
                &format!("member{i}@example.net"),
                "a1",
                &format!("m{i}"),
            ))
            .await
            .unwrap();
    }
    assert_eq!(server.counts(), (1, 3), "(connections, messages)");
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_without_failing_the_send() {
    let server = CountingServer::start(true).await;
    let transport = SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap();
    for i in 1..=3 {
        transport
            .send(&email(
                &format!("member{i}@example.net"),
                "a1",
                &format!("m{i}"),
            ))
            .await
            .unwrap();
    }
    assert_eq!(server.counts(), (3, 3), "(connections, messages)");
}

/// What a pipelining test server saw.
#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    /// Each client write, as read (a pipelined group arrives as one).
    reads: Vec<String>,
    /// The bodies of accepted messages, as sent after DATA (dot-stuffed).
    bodies: Vec<String>,
}

/// A minimal SMTP server offering PIPELINING, answering each command of a
/// group in turn; it refuses recipients whose address starts with `bad`.
async fn pipelining_server() -> (u16, Arc<std::sync::Mutex<Seen>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            shared.lock().unwrap().connections += 1;
            let seen = shared.clone();
            tokio::spawn(async move {
                socket.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut pending = String::new();
                let mut in_data = false;
                let mut recipients = 0;
                let mut buf = vec![0; 65536];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen.lock().unwrap().reads.push(chunk.clone());
                    pending.push_str(&chunk);
                    let mut out = String::new();
                    loop {
                        if in_data {
                            let Some(end) = pending.find("\r\n.\r\n") else {
                                break;
                            };
                            let body: String = pending.drain(..end + 5).collect();
                            seen.lock().unwrap().bodies.push(body);
                            out.push_str("250 2.0.0 queued\r\n");
                            in_data = false;
                            continue;
                        }
                        let Some(end) = pending.find("\r\n") else {
                            break;
                        };
                        let line: String = pending.drain(..end + 2).collect();
                        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                        out.push_str(match verb.as_str() {
                            "EHLO" => "250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                            "MAIL" => {
                                recipients = 0;
                                "250 2.1.0 ok\r\n"
                            }
                            "RCPT" if line.contains("<bad") => "550 5.1.1 no such user\r\n",
                            "RCPT" => {
                                recipients += 1;
                                "250 2.1.5 ok\r\n"
                            }
                            "DATA" if recipients == 0 => "554 5.5.1 no valid recipients\r\n",
                            "DATA" => {
                                in_data = true;
                                "354 go ahead\r\n"
                            }
                            "RSET" => "250 2.0.0 ok\r\n",
                            "QUIT" => "221 bye\r\n",
                            _ => "502 5.5.2 what\r\n",
                        });
                    }
                    if !out.is_empty() && socket.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_pipelining_server_gets_each_message_in_two_writes() {
    let (port, seen) = pipelining_server().await;
    let transport = SmtpTransport::new(&config(port, SmtpSecurity::None)).unwrap();
    let first = email("ann@example.net", "a1", "m1");
    transport.send(&first).await.unwrap();
    let refused = transport
        .send(&email("bad@example.net", "a1", "m2"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            SendError::Permanent {
                suppress_address: true,
                ..
            }
        ),
        "{refused:?}"
    );
    // The refusal left the session usable: the next message goes out on it.
    let last = email("bob@example.net", "a1", "m3");
    transport.send(&last).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.connections, 1, "{seen:?}");
    assert_eq!(seen.bodies.len(), 2, "{seen:?}");
    let groups: Vec<&String> = seen
        .reads
        .iter()
        .filter(|r| r.starts_with("MAIL FROM:"))
        .collect();
    assert_eq!(groups.len(), 3, "{seen:?}");
    for group in groups {
        assert!(group.contains("\r\nRCPT TO:<"), "{group:?}");
        assert!(group.ends_with("\r\nDATA\r\n"), "{group:?}");
    }
    for (body, email) in seen.bodies.iter().zip([&first, &last]) {
        let raw = body
            .strip_suffix("\r\n.\r\n")
            .unwrap()
            .replace("\r\n..", "\r\n.");
        assert_mime_matches(raw.as_bytes(), email);
        assert!(
            seen.reads.iter().any(|r| r == body),
            "the message and its closing dot came in one write"
        );
    }
}

#[tokio::test]
async fn a_batch_on_a_pipelining_server_sends_each_message_with_the_next_envelope() {
    let (port, seen) = pipelining_server().await;
    let transport = SmtpTransport::new(&config(port, SmtpSecurity::None)).unwrap();
    let emails = vec![
        email("ann@example.net", "a1", "m1"),
        email("bad@example.net", "a1", "m2"),
        email("bob@example.net", "a1", "m3"),
        email("cy@example.net", "a1", "m4"),
    ];
    let results = transport.send_batch(&emails).await;

    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(
            results[1],
            Err(SendError::Permanent {
                suppress_address: true,
                ..
            })
        ),
        "{results:?}"
    );
    assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.connections, 1, "{seen:?}");
    assert_eq!(seen.bodies.len(), 3, "{seen:?}");
    for (body, email) in seen.bodies.iter().zip([&emails[0], &emails[2], &emails[3]]) {
        let raw = body
            .strip_suffix("\r\n.\r\n")
            .unwrap()
            .replace("\r\n..", "\r\n.");
        assert_mime_matches(raw.as_bytes(), email);
    }
    let writes_of = |body: &String| -> Vec<&String> {
        seen.reads
            .iter()
            .filter(|r| r.starts_with(body.as_str()))
            .collect()
    };
    // The first message's content went out with the refused message's
    // envelope, the third's with the fourth's, the last on its own.
    for body in &seen.bodies[..2] {
        let writes = writes_of(body);
        assert_eq!(writes.len(), 1, "{seen:?}");
        let rest = &writes[0][body.len()..];
        assert!(
            rest.starts_with("MAIL FROM:") && rest.ends_with("\r\nDATA\r\n"),
            "{rest:?}"
        );
    }
    assert_eq!(writes_of(&seen.bodies[2]), vec![&seen.bodies[2]]);
    // The refusal was reset before the next envelope.
    assert!(seen.reads.iter().any(|r| r == "RSET\r\n"), "{seen:?}");
}

/// Sends alert a1 to member1..=count@example.net as one batch and checks
/// that every email was taken; returns the emails.
async fn send_batch_to_members(transport: &SmtpTransport, count: usize) -> Vec<OutgoingEmail> {
    let emails: Vec<_> = (1..=count)
        .map(|i| email(&format!("member{i}@example.net"), "a1", &format!("m{i}")))
        .collect();
    let results = transport.send_batch(&emails).await;
    assert_eq!(results.len(), count);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    emails
}

#[tokio::test]
async fn a_batch_goes_on_on_a_new_connection_when_the_server_drops_one() {
    // The server ends each session right after accepting a message, so the
    // envelope sent with each message's content is lost every time.
    let server = CountingServer::start(true).await;
    let transport = SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap();
    send_batch_to_members(&transport, 3).await;
    assert_eq!(server.counts(), (3, 3), "(connections, messages)");
}

#[tokio::test]
async fn a_batch_to_a_server_without_pipelining_goes_message_by_message() {
    let server = CaptureServer::start(&[]);
    let transport = SmtpTransport::new(&config(server.port, SmtpSecurity::None)).unwrap();
    let emails = send_batch_to_members(&transport, 3).await;
    let mut captured = server.messages();
    captured.sort_by_key(|(meta, _)| meta["rcpt_tos"][0].as_str().unwrap().to_owned());
    assert_eq!(captured.len(), 3);
    for (email, (envelope, raw)) in emails.iter().zip(&captured) {
        assert_eq!(envelope["rcpt_tos"][0], email.to.email.to_string());
        assert_mime_matches(raw, email);
    }
}

#[test]
fn batches_share_the_sends_in_flight_among_the_pooled_connections() {
    let transport = SmtpTransport::new(&config(25, SmtpSecurity::None)).unwrap();
    // config() pools 2 connections.
    assert_eq!(transport.batch_size(1), 1);
    assert_eq!(transport.batch_size(2), 1);
    assert_eq!(transport.batch_size(16), 8);
    assert_eq!(transport.batch_size(17), 9);
    assert_eq!(transport.batch_size(1000), 32, "capped");
}
