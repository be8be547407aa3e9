//! SMTP with lettre's protocol client over connections Herald opens itself:
//! a pool of reusable connections, STARTTLS, implicit TLS or plain (rustls
//! only), optional AUTH and a messages-per-second limit.
//!
//! Why not lettre's own transport: it connects without `TCP_NODELAY` and
//! writes a message's body and its closing `.` in two writes, so Nagle's
//! algorithm holds the `.` back until the server's delayed ACK (40 ms on
//! Linux): one stall per message, at most ~25 messages per second on a
//! connection. Its pool also sends NOOP on every idle connection before
//! reusing it, one more round trip per message. Here every socket has
//! `TCP_NODELAY`, and an idle connection is reused as it is: if the server
//! closed it meanwhile, the `MAIL FROM` fails before anything was handed
//! over, and the message goes out on a fresh connection instead.
//!
//! With a server that offers PIPELINING (RFC 2920), `MAIL FROM`, `RCPT TO`
//! and `DATA` go out in one write and the message with its closing `.` in
//! another: two round trips per message instead of four, and two writes
//! instead of five. A batch ([`Transport::send_batch`], sized by
//! [`Transport::batch_size`] so the sends in flight are shared among the
//! pooled connections) goes out on one connection with each message's
//! content in the same write as the next message's envelope, as RFC 2920
//! lets message content start a group: one write and one round trip per
//! message.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{
    ClientId, Extension, MailBodyParameter, MailParameter, ServerInfo,
};
use lettre::transport::smtp::response::Response;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::message::OutgoingEmail;

use super::{BuildError, SendError, SendReceipt, Transport};

/// An idle connection unused for longer than this is closed rather than
/// reused: servers end idle sessions on their own (Postfix after 300 s),
/// and a connection they ended costs a failed `MAIL FROM` to find out.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Most messages a batch sends back to back on one connection.
const MAX_BATCH: usize = 32;
/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (port 25); only for a relay on the same host or network.
    None,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to 587, 465 or 25 depending on `security`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, serialize_with = "super::mask_optional_secret")]
    pub password: Option<SecretString>,
    /// A PEM file of extra root certificates to trust, for a relay signed
    /// by a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most idle connections kept open for the next sends. Sends beyond it
    /// at one moment open extra connections and close them after use, so
    /// set it to the mailer's `concurrency` to reuse every connection.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Most messages handed to the server per second; unlimited if unset.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// Time limit for connecting, and for handing over one message.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_pool_size() -> u32 {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        })
    }
}

/// How connections are protected, ready to use.
enum Protection {
    None,
    /// lettre's STARTTLS, with the parameters it upgrades with.
    Starttls(TlsParameters),
    /// TLS from the first byte; lettre only offers that on sockets it opens
    /// itself, so the handshake is done here with the same rustls.
    Tls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
}

/// A pooled connection and when it was last used.
struct Idle {
    connection: Connection,
    since: Instant,
}

/// A session, and whether its server takes pipelined commands.
struct Connection {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

pub struct SmtpTransport {
    host: String,
    port: u16,
    protection: Protection,
    credentials: Option<Credentials>,
    hello_name: ClientId,
    pool_size: usize,
    idle: SyncMutex<Vec<Idle>>,
    timeout: Duration,
    limiter: Option<RateLimiter>,
}

impl fmt::Debug for SmtpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = match self.protection {
            Protection::None => SmtpSecurity::None,
            Protection::Starttls(_) => SmtpSecurity::Starttls,
            Protection::Tls { .. } => SmtpSecurity::Tls,
        };
        f.debug_struct("SmtpTransport")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &security)
            .field("authenticated", &self.credentials.is_some())
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SmtpTransport {
    pub fn new(config: &SmtpConfig) -> Result<Self, BuildError> {
        let invalid = |field, message: String| BuildError::Invalid { field, message };
        if config.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty".to_owned()));
        }
        if config.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1".to_owned()));
        }
        let extra_roots = match &config.ca_file {
            Some(path) if config.security != SmtpSecurity::None => {
                let pem = std::fs::read(path)
                    .map_err(|e| invalid("ca_file", format!("{}: {e}", path.display())))?;
                Some((path, pem))
            }
            _ => None,
        };
        let protection = match config.security {
            SmtpSecurity::None => Protection::None,
            SmtpSecurity::Starttls => {
                let mut params = TlsParameters::builder(config.host.clone());
                if let Some((path, pem)) = &extra_roots {
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| invalid("ca_file", format!("{}: {e}", path.display())))?;
                    params = params.add_root_certificate(cert);
                }
                Protection::Starttls(
                    params
                        .build_rustls()
                        .map_err(|e| invalid("security", e.to_string()))?,
                )
            }
            SmtpSecurity::Tls => {
                let mut roots = RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                if let Some((path, pem)) = &extra_roots {
                    let bad = |e: String| invalid("ca_file", format!("{}: {e}", path.display()));
                    let certs = CertificateDer::pem_slice_iter(pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad(e.to_string()))?;
                    if certs.is_empty() {
                        return Err(bad("holds no PEM certificate".to_owned()));
                    }
                    for cert in certs {
                        roots.add(cert).map_err(|e| bad(e.to_string()))?;
                    }
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let tls = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| invalid("security", e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let server_name = ServerName::try_from(config.host.clone())
                    .map_err(|e| invalid("host", e.to_string()))?;
                Protection::Tls {
                    connector: TlsConnector::from(Arc::new(tls)),
                    server_name,
                }
            }
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("password", "is required with username".to_owned()));
            }
            (None, Some(_)) => {
                return Err(invalid("username", "is required with password".to_owned()));
            }
        };
        let limiter = match config.rate_limit_per_second {
            None => None,
            Some(rate) => Some(RateLimiter::new(NonZeroU32::new(rate).ok_or_else(
                || invalid("rate_limit_per_second", "must be at least 1".to_owned()),
            )?)),
        };
        Ok(Self {
            host: config.host.clone(),
            port: config.port(),
            protection,
            credentials,
            hello_name: ClientId::default(),
            pool_size: usize::try_from(config.pool_size).unwrap_or(usize::MAX),
            idle: SyncMutex::new(Vec::new()),
            timeout: config.timeout,
            limiter,
        })
    }

    /// The most recently used idle connection young enough to reuse;
    /// older ones are closed on the way.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|c| c.since.elapsed() < IDLE_LIMIT);
        idle.pop().map(|c| c.connection)
    }

    /// Keeps a connection for the next send, or closes it when the pool is
    /// full.
    fn put_idle(&self, connection: Connection) {
        if connection.smtp.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.pool_size {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection with `TCP_NODELAY`, protects it as configured,
    /// greets and authenticates.
    async fn connect(&self) -> Result<Connection, SendError> {
        let socket = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                SendError::transient(format!(
                    "SMTP: cannot connect to {}:{}: {e}",
                    self.host, self.port
                ))
            })?;
        socket
            .set_nodelay(true)
            .map_err(|e| SendError::transient(format!("SMTP: cannot set TCP_NODELAY: {e}")))?;
        let stream: Box<dyn AsyncTokioStream> = match &self.protection {
            Protection::Tls {
                connector,
                server_name,
            } => {
                let tls = connector
                    .connect(server_name.clone(), socket)
                    .await
                    .map_err(|e| {
                        SendError::transient(format!(
                            "SMTP: TLS handshake with {}:{} failed: {e}",
                            self.host, self.port
                        ))
                    })?;
                Box::new(TlsSocket(tls))
            }
            Protection::None | Protection::Starttls(_) => Box::new(socket),
        };
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello_name)
            .await
            .map_err(|e| classify(&e))?;
        if let Protection::Starttls(params) = &self.protection {
            connection
                .starttls(params.clone(), &self.hello_name)
                .await
                .map_err(|e| classify(&e))?;
        }
        // lettre keeps only the EHLO keywords it acts on, so the greeting is
        // asked for again to learn whether PIPELINING is offered (before
        // AUTH, as a new EHLO may end an authenticated state elsewhere).
        let greeting = connection
            .command(Ehlo::new(self.hello_name.clone()))
            .await
            .map_err(|e| classify(&e))?;
        let pipelining = greeting.message().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
        });
        if let Some(credentials) = &self.credentials {
            connection
                .auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(Connection {
            smtp: connection,
            pipelining,
        })
    }

    /// Hands the message over on an idle connection, or on a new one when
    /// there is none or the idle one turns out closed.
    async fn deliver(&self, envelope: &Envelope, body: &[u8]) -> Result<Response, SendError> {
        if let Some(mut connection) = self.take_idle() {
            match transaction(&mut connection, envelope, body).await {
                Err(Failure::Smtp {
                    stage: Stage::Mail,
                    error,
                }) if error.status().is_none() => {
                    tracing::debug!(error = %error, "SMTP: an idle connection was closed by the server; sending on a new one");
                }
                outcome => return self.settle(connection, outcome).await,
            }
        }
        let mut connection = self.connect().await?;
        let outcome = transaction(&mut connection, envelope, body).await;
        self.settle(connection, outcome).await
    }

    /// Returns the connection to the pool if it can go on, and the outcome
    /// as a send result.
    async fn settle(
        &self,
        mut connection: Connection,
        outcome: Result<Response, Failure>,
    ) -> Result<Response, SendError> {
        if carry_on(&mut connection.smtp, &outcome).await.is_ok() {
            self.put_idle(connection);
        }
        outcome.map_err(Failure::into_send_error)
    }

    /// Hands a batch over on as few connections as it takes (one, unless a
    /// connection ends under it), filling `replies`; the error, when a
    /// connection for the rest could not be had.
    async fn deliver_batch(&self, batch: &[Prepared], replies: &mut Replies) -> Option<SendError> {
        let mut next = 0;
        while next < batch.len() {
            let (mut connection, reused) = match self.take_idle() {
                Some(connection) => (connection, true),
                None => match self.connect().await {
                    Ok(connection) => (connection, false),
                    Err(e) => return Some(e),
                },
            };
            let limiter = self.limiter.as_ref();
            match send_on(
                &mut connection,
                &batch[next..],
                &mut replies[next..],
                limiter,
            )
            .await
            {
                Ok(()) => {
                    self.put_idle(connection);
                    return None;
                }
                // A new connection that ended before taking anything will
                // not do better the next time round.
                Err(Broken {
                    resume_at: 0,
                    error,
                }) if !reused => return Some(error),
                Err(Broken { resume_at, .. }) => {
                    if resume_at == 0 {
                        tracing::debug!("SMTP: an idle connection was closed by the server; sending on a new one");
                    }
                    next += resume_at;
                }
            }
        }
        None
    }
}

/// Where in the mail transaction a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `MAIL FROM`: nothing of the message was handed over yet.
    Mail,
    /// `RCPT TO`, `DATA` or the message itself.
    Later,
}

enum Failure {
    Smtp {
        stage: Stage,
        error: lettre::transport::smtp::Error,
    },
    /// The message needs an extension the server does not offer; nothing
    /// was sent and the session is untouched.
    Unsupported(&'static str),
}

impl Failure {
    fn into_send_error(self) -> SendError {
        match self {
            Failure::Unsupported(reason) => {
                SendError::permanent(format!("SMTP client error: {reason}"), false)
            }
            Failure::Smtp { error, .. } => classify(&error),
        }
    }
}

/// The `MAIL FROM` of a message, with the parameters its envelope and body
/// need, or why this server cannot take it.
fn mail_command(info: &ServerInfo, envelope: &Envelope, body: &[u8]) -> Result<Mail, Failure> {
    let mut parameters = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|address| !AsRef::<str>::as_ref(address).is_ascii());
    if non_ascii_address {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(Failure::Unsupported(
                "the envelope has non-ASCII addresses and the server does not offer SMTPUTF8",
            ));
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(Failure::Unsupported(
                "the message is not ASCII and the server does not offer 8BITMIME",
            ));
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(Mail::new(envelope.from().cloned(), parameters))
}

/// `MAIL FROM`, every `RCPT TO` and `DATA` as one pipelined group.
fn envelope_group(mail: Mail, envelope: &Envelope) -> String {
    let mut group = mail.to_string();
    for recipient in envelope.to() {
        group.push_str(&Rcpt::new(recipient.clone(), Vec::new()).to_string());
    }
    group.push_str(&Data.to_string());
    group
}

fn at(stage: Stage) -> impl Fn(lettre::transport::smtp::Error) -> Failure {
    move |error| Failure::Smtp { stage, error }
}

/// Reads the replies to an envelope group, given the reply to its
/// `MAIL FROM` already read; `Ok` when the server is waiting for the
/// message. Every reply of the group is read, whatever came before, so the
/// session stays in step and can be reset and reused after a refusal.
async fn envelope_replies(
    smtp: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    mail_reply: Result<Response, lettre::transport::smtp::Error>,
) -> Result<(), Failure> {
    let mut first_failure = match mail_reply {
        Ok(_) => None,
        // No reply at all: nothing of the message went out, so it is safe
        // to send it on another connection.
        Err(error) if error.status().is_none() => return Err(at(Stage::Mail)(error)),
        Err(error) => Some(at(Stage::Mail)(error)),
    };
    for _ in envelope.to() {
        match smtp.read_response().await {
            Ok(_) => {}
            Err(error) if error.status().is_none() => return Err(at(Stage::Later)(error)),
            Err(error) => {
                first_failure.get_or_insert(at(Stage::Later)(error));
            }
        }
    }
    let data_reply = smtp.read_response().await;
    match (first_failure, data_reply) {
        (None, Ok(_)) => Ok(()),
        (Some(failure), Ok(_)) => {
            // The server took DATA although a command before it failed:
            // end the empty message so the session can go on.
            let _ = smtp.command(Raw(".\r\n")).await;
            Err(failure)
        }
        (Some(failure), Err(_)) => Err(failure),
        (None, Err(error)) => Err(at(Stage::Later)(error)),
    }
}

/// One mail transaction, as lettre's `send` does it (pipelined when the
/// server allows), telling the stage of a failure apart so a closed idle
/// connection can be retried safely.
async fn transaction(
    connection: &mut Connection,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Response, Failure> {
    // A body that is not UTF-8 cannot be one pre-built write; it goes the
    // unpipelined way, as lettre writes it.
    let data = if connection.pipelining {
        data_block(body).ok()
    } else {
        None
    };
    let smtp = &mut connection.smtp;
    let mail = mail_command(smtp.server_info(), envelope, body)?;
    let Some(data) = data else {
        smtp.command(mail).await.map_err(at(Stage::Mail))?;
        for recipient in envelope.to() {
            smtp.command(Rcpt::new(recipient.clone(), Vec::new()))
                .await
                .map_err(at(Stage::Later))?;
        }
        smtp.command(Data).await.map_err(at(Stage::Later))?;
        return smtp.message(body).await.map_err(at(Stage::Later));
    };
    let mail_reply = smtp.command(Raw(&envelope_group(mail, envelope))).await;
    envelope_replies(smtp, envelope, mail_reply).await?;
    smtp.command(Raw(&data)).await.map_err(at(Stage::Later))
}

/// A message of a batch, ready for the wire.
struct Prepared {
    envelope: Envelope,
    body: Vec<u8>,
}

/// The reply to each message of a batch, `None` for those not handed over.
type Replies = [Option<Result<Response, Failure>>];

/// How far a batch got on a connection that ended under it.
struct Broken {
    /// The first message not handed over: nothing of it or of those after
    /// it was taken, so they can go out on another connection.
    resume_at: usize,
    error: SendError,
}

/// Records a message's outcome; after a refusal the transaction is reset
/// so the session can go on. `Err` when the session cannot.
async fn record(
    smtp: &mut AsyncSmtpConnection,
    replies: &mut Replies,
    index: usize,
    outcome: Result<Response, Failure>,
) -> Result<(), Broken> {
    if let Err(Failure::Smtp {
        stage: Stage::Mail,
        error,
    }) = &outcome
    {
        if error.status().is_none() {
            return Err(Broken {
                resume_at: index,
                error: classify(error),
            });
        }
    }
    let session = carry_on(smtp, &outcome).await;
    replies[index] = Some(outcome);
    session.map_err(|error| Broken {
        resume_at: index + 1,
        error,
    })
}

/// Whether the session can go on after `outcome`: a refusal leaves it
/// usable once the transaction is reset; anything else (network, garbled
/// reply) ends it, and the error says how.
async fn carry_on(
    smtp: &mut AsyncSmtpConnection,
    outcome: &Result<Response, Failure>,
) -> Result<(), SendError> {
    match outcome {
        Ok(_) | Err(Failure::Unsupported(_)) => Ok(()),
        Err(Failure::Smtp { error, .. }) if error.status().is_none() => Err(classify(error)),
        Err(Failure::Smtp { .. }) => smtp.command(Rset).await.map(drop).map_err(|e| classify(&e)),
    }
}

/// Sends a batch on one connection, message after message. With
/// PIPELINING, each message's content goes out in the same write as the
/// next message's envelope group (RFC 2920 lets message content start a
/// group): one write and one round trip per message instead of two.
async fn send_on(
    connection: &mut Connection,
    batch: &[Prepared],
    replies: &mut Replies,
    limiter: Option<&RateLimiter>,
) -> Result<(), Broken> {
    // The message whose DATA was accepted; its content leads the next write.
    let mut open: Option<(usize, String)> = None;
    for (index, message) in batch.iter().enumerate() {
        let pipelined = if connection.pipelining {
            data_block(&message.body).ok()
        } else {
            None
        };
        let mail = match mail_command(
            connection.smtp.server_info(),
            &message.envelope,
            &message.body,
        ) {
            Ok(mail) => mail,
            Err(unsupported) => {
                replies[index] = Some(Err(unsupported));
                continue;
            }
        };
        if let Some(limiter) = limiter {
            limiter.acquire().await;
        }
        let Some(data) = pipelined else {
            // No PIPELINING, or a body that is not UTF-8 and so not one
            // pre-built write: the open message is finished first.
            if let Some((open_index, open_data)) = open.take() {
                let reply = connection.smtp.command(Raw(&open_data)).await;
                finish_content(replies, open_index, reply, index)?;
            }
            let outcome = transaction(connection, &message.envelope, &message.body).await;
            record(&mut connection.smtp, replies, index, outcome).await?;
            continue;
        };
        let smtp = &mut connection.smtp;
        let group = envelope_group(mail, &message.envelope);
        let mut reply = match open.as_mut() {
            Some((_, open_data)) => {
                open_data.push_str(&group);
                smtp.command(Raw(open_data)).await
            }
            None => smtp.command(Raw(&group)).await,
        };
        if let Some((open_index, _)) = open.take() {
            // That first reply was the open message's; the group's follow.
            finish_content(replies, open_index, reply, index)?;
            reply = smtp.read_response().await;
        }
        match envelope_replies(smtp, &message.envelope, reply).await {
            Ok(()) => open = Some((index, data)),
            Err(failure) => record(smtp, replies, index, Err(failure)).await?,
        }
    }
    if let Some((open_index, open_data)) = open {
        let reply = connection.smtp.command(Raw(&open_data)).await;
        finish_content(replies, open_index, reply, batch.len())?;
    }
    Ok(())
}

/// Records the reply to a message's content; `Err` when there was none
/// (the connection ended), with the messages from `resume_at` on untaken.
fn finish_content(
    replies: &mut Replies,
    index: usize,
    reply: Result<Response, lettre::transport::smtp::Error>,
    resume_at: usize,
) -> Result<(), Broken> {
    let broken = reply
        .as_ref()
        .err()
        .filter(|error| error.status().is_none())
        .map(classify);
    replies[index] = Some(reply.map_err(at(Stage::Later)));
    match broken {
        None => Ok(()),
        Some(error) => Err(Broken { resume_at, error }),
    }
}

/// A pre-built command (or group of commands), written as it is.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The message as sent after `DATA`: dot-stuffed (a `.` starting a line is
/// doubled) and closed with `CRLF.CRLF`, in one piece so it goes out in one
/// write, byte for byte what lettre's `message` writes in two.
fn data_block(body: &[u8]) -> Result<String, std::str::Utf8Error> {
    let body = std::str::from_utf8(body)?;
    // Room for the closing dot, some stuffing and the next message's
    // envelope group, which a batch appends.
    let mut out = String::with_capacity(body.len() + 256);
    if body.starts_with('.') {
        out.push('.');
    }
    let mut rest = body;
    while let Some(at) = rest.find("\r\n.") {
        let (line, next) = rest.split_at(at + 2);
        out.push_str(line);
        out.push('.');
        rest = next;
    }
    out.push_str(rest);
    out.push_str("\r\n.\r\n");
    Ok(out)
}

/// A TLS session over a socket, as lettre's connection reads and writes it.
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[async_trait::async_trait]
impl Transport for SmtpTransport {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        let body = email.formatted()?;
        let envelope = email.envelope()?;
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        // lettre bounds no reply wait, so the whole send is bounded here; a
        // send cut short drops its connection with it, never reused while
        // it may still be owed a reply.
        let response =
            match tokio::time::timeout(self.timeout, self.deliver(&envelope, &body)).await {
                Ok(delivered) => delivered?,
                Err(_) => {
                    return Err(SendError::transient(format!(
                        "SMTP server did not finish accepting the message within {:?}",
                        self.timeout
                    )))
                }
            };
        Ok(receipt(&response))
    }

    /// Pipelined on one connection, so a batch should give each pooled
    /// connection its share of the messages in flight.
    fn batch_size(&self, concurrency: usize) -> usize {
        concurrency.div_ceil(self.pool_size).clamp(1, MAX_BATCH)
    }

    async fn send_batch(&self, emails: &[OutgoingEmail]) -> Vec<Result<SendReceipt, SendError>> {
        let mut results: Vec<Option<Result<SendReceipt, SendError>>> = vec![None; emails.len()];
        let mut batch = Vec::with_capacity(emails.len());
        let mut positions = Vec::with_capacity(emails.len());
        for (position, email) in emails.iter().enumerate() {
            match email
                .formatted()
                .and_then(|body| Ok((body, email.envelope()?)))
            {
                Ok((body, envelope)) => {
                    batch.push(Prepared { envelope, body });
                    positions.push(position);
                }
                Err(e) => results[position] = Some(Err(e.into())),
            }
        }
        let mut replies: Vec<Option<Result<Response, Failure>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        // As for one message: each message gets the whole timeout, and a
        // batch cut short drops its connection with it.
        let limit = self.timeout * u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let rest = match tokio::time::timeout(limit, self.deliver_batch(&batch, &mut replies)).await
        {
            Ok(None) => SendError::transient("SMTP: the connection ended before this message"),
            Ok(Some(error)) => error,
            Err(_) => SendError::transient(format!(
                "SMTP server did not finish accepting the batch within {limit:?}"
            )),
        };
        for (position, reply) in positions.into_iter().zip(replies) {
            results[position] = Some(match reply {
                Some(Ok(response)) => Ok(receipt(&response)),
                Some(Err(failure)) => Err(failure.into_send_error()),
                None => Err(rest.clone()),
            });
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(rest.clone())))
            .collect()
    }
}

/// The server's reply to a message, kept as the provider's message id.
fn receipt(response: &Response) -> SendReceipt {
    let reply: Vec<&str> = response.message().collect();
    SendReceipt {
        provider_message_id: Some(format!("{} {}", response.code(), reply.join(" "))),
    }
}

/// Reply codes that reject the recipient rather than the message or the
/// session: 550 mailbox unavailable, 551 user not local, 553 mailbox name
/// not allowed, 554 transaction failed (used by many servers for refused
/// recipients). Other 5xx replies (530/535 authentication, 552 size, 500-504
/// syntax) are Herald's or the server's problem, not the address's.
const ADDRESS_REJECTIONS: [u16; 4] = [550, 551, 553, 554];

fn classify(err: &lettre::transport::smtp::Error) -> SendError {
    let code = err.status().map(u16::from);
    if err.is_permanent() {
        let suppress = code.is_some_and(|c| ADDRESS_REJECTIONS.contains(&c));
        SendError::permanent(format!("SMTP server refused: {err}"), suppress)
    } else if err.is_client() {
        SendError::permanent(format!("SMTP client error: {err}"), false)
    } else {
        // 4xx replies, timeouts, TLS and connection failures.
        SendError::transient(format!("SMTP: {err}"))
    }
}

/// Spaces sends evenly: each caller gets the next free slot, `1/rate`
/// seconds after the previous one, and waits for it.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    fn new(per_second: NonZeroU32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.get(),
            next: Mutex::new(None),
        }
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_sends() {
        let limiter = RateLimiter::new(NonZeroU32::new(10).unwrap());
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first send goes at once, the next four 100ms apart (virtual time).
        assert_eq!(start.elapsed(), Duration::from_millis(400));

        // After an idle spell the budget does not pile up: one slot, not a burst.
        tokio::time::advance(Duration::from_secs(5)).await;
        let idle_end = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(idle_end.elapsed(), Duration::from_millis(100));
    }

    #[test]
    fn the_data_block_is_dot_stuffed_as_lettre_does_it() {
        assert_eq!(data_block(b"").unwrap(), "\r\n.\r\n");
        assert_eq!(
            data_block(b".a\r\n.b\r\nc.\n.d\r\n..").unwrap(),
            "..a\r\n..b\r\nc.\n.d\r\n...\r\n.\r\n"
        );
        assert_eq!(data_block(b"a\r\n").unwrap(), "a\r\n\r\n.\r\n");
        assert_eq!(data_block(b"\r\n.\r\n.").unwrap(), "\r\n..\r\n..\r\n.\r\n");
        assert!(data_block(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn default_ports_follow_security() {
        let config = |security| SmtpConfig {
            host: "h".into(),
            port: None,
            security,
            username: None,
            password: None,
            ca_file: None,
            pool_size: 1,
            rate_limit_per_second: None,
            timeout: default_timeout(),
        };
        assert_eq!(config(SmtpSecurity::Starttls).port(), 587);
        assert_eq!(config(SmtpSecurity::Tls).port(), 465);
        assert_eq!(config(SmtpSecurity::None).port(), 25);
    }
}
