//! The CPU the SMTP transport spends per message, alone (no store, no
//! rendering), against a local sink: to compare with Postfix's own client,
//! which sets the pace the mailer is held to.
//!
//! ```sh
//! smtp-sink -u nobody -c 127.0.0.1:2525 1024 >/dev/null &
//! cargo build --release -p herald-mail --example smtp_only
//! target/release/examples/smtp_only 2525 20000 16 page.html
//! # Postfix's client, same count, concurrency and message size:
//! time smtp-source -d -s 16 -m 20000 -l 3436 -f a@b.c -t m@example.com 127.0.0.1:2525
//! ```
//!
//! Arguments: the sink's port on 127.0.0.1, how many messages, how many
//! sent at once (also the pool size), and an HTML file for the body. It
//! sends every message and prints the rate and the process's CPU time per
//! message (Linux: `/proc/self/stat`), then times formatting alone: lettre's
//! `Message` against `OutgoingEmail::formatted`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_mail::transport::{SmtpConfig, SmtpSecurity, SmtpTransport, Transport};
use herald_mail::{ListUnsubscribe, OutgoingEmail};

const USAGE: &str = "usage: smtp_only PORT MESSAGES CONCURRENCY HTML_FILE";

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // Kernel clock ticks; 100 per second on every common Linux build.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name, which ends with ')'; utime and stime
    // are fields 14 and 15 of the whole line.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND)
}

fn arg<T: std::str::FromStr>(args: &[String], at: usize) -> T {
    args.get(at)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{USAGE}"))
}

/// Microseconds per message `format` takes, over every email.
fn time_formatting(emails: &[OutgoingEmail], format: impl Fn(&OutgoingEmail) -> Vec<u8>) -> f64 {
    let start = Instant::now();
    let bytes: usize = emails.iter().map(|e| format(e).len()).sum();
    let elapsed = start.elapsed();
    assert!(bytes > 0);
    elapsed.as_secs_f64() * 1e6 / emails.len() as f64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, 1);
    let count: usize = arg(&args, 2);
    let concurrency: usize = arg(&args, 3);
    let html_file: String = arg(&args, 4);
    let html = std::fs::read_to_string(&html_file).expect("read the HTML file");

    let emails: Vec<OutgoingEmail> = (0..count)
        .map(|i| OutgoingEmail {
            from: "Herald <alerts@shop.example.com>".parse().unwrap(),
            to: format!("m{i}@example.com").parse().unwrap(),
            reply_to: None,
            subject: "Acme is on sale — 50% off".to_owned(),
            html: html.clone(),
            text: "Hello there, a sale".repeat(20),
            list_unsubscribe: Some(ListUnsubscribe {
                url: format!("https://h.example.com/u/{i}"),
                mailto: None,
            }),
            custom_args: BTreeMap::from([
                ("alert_id".to_owned(), "a1".to_owned()),
                ("member_id".to_owned(), format!("m{i}")),
            ]),
            message_id: format!("a1.m{i}@h.example.com"),
        })
        .collect();

    let transport = Arc::new(
        SmtpTransport::new(&SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port: Some(port),
            security: SmtpSecurity::None,
            username: None,
            password: None,
            ca_file: None,
            pool_size: u32::try_from(concurrency).expect("a sane concurrency"),
            rate_limit_per_second: None,
            timeout: Duration::from_secs(30),
        })
        .expect("an SMTP transport"),
    );
    let emails = Arc::new(emails);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_time();
    let start = Instant::now();
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (transport, emails, next) = (transport.clone(), emails.clone(), next.clone());
            tokio::spawn(async move {
                while let Some(email) = emails.get(next.fetch_add(1, Ordering::Relaxed)) {
                    transport
                        .send(email)
                        .await
                        .expect("the sink takes the message");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("a sender finished");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_before).as_secs_f64();
    println!(
        "sent {count} in {elapsed:.2}s = {:.0}/s, cpu {:.0} us/msg",
        count as f64 / elapsed,
        cpu * 1e6 / count as f64
    );

    let lettre_us = time_formatting(&emails, |e| e.to_mime().unwrap().formatted());
    let herald_us = time_formatting(&emails, |e| e.formatted().unwrap());
    println!(
        "formatting alone: lettre Message {lettre_us:.1} us/msg, OutgoingEmail::formatted {herald_us:.1} us/msg"
    );
}
