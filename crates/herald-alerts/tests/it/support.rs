//! A fresh store and bus per test, catalog and audience seeding through the
//! store's own API, and a capturing transport that can fail or hold sends.
//!
//! SQLite: a new file in a temp folder, the bus in the same file.
//! PostgreSQL (`HERALD_TEST_DATABASE_URL`): a new schema reached through
//! `search_path`, dropped afterwards, with the embedded bus in a temp file
//! (the store and the bus are then different systems, as when distributed).
//! Without the variable the PostgreSQL cases print why they skipped and
//! pass, unless `HERALD_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_alerts::settings::MailerSettings;
use herald_alerts::{AudienceJob, AudienceSettings, Composer, Mailer, Transports};
use herald_bus::{Bus, BusError, EmbeddedBus, PeekedMessage, QueueConfig};
use herald_core::alert::{AlertAction, AlertState};
use herald_core::catalog::{
    AffinityScore, BrandId, CustomerId, EmailAddress, EmailType, HttpUrl, MemberId, MemberStatus,
    SuppressionReason,
};
use herald_core::{Clock, QueueName, SystemClock, Timestamp};
use herald_mail::{OutgoingEmail, SendError, SendReceipt, Transport};
use herald_store::brand_alerts::{AlertStats, BrandAlert, NewBrandAlert};
use herald_store::catalog::{NewSale, NewTemplate};
use herald_store::members::{AffinityInput, MemberInput};
use herald_store::{PgDb, SqliteDb, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tempfile::TempDir;
use tokio::sync::{Notify, Semaphore};

const DATABASE_URL_VAR: &str = "HERALD_TEST_DATABASE_URL";
const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTGRES";

/// The signing key of every test composer.
pub const SIGNING_KEY: &[u8] = b"alerts test signing key, 32 bytes";

/// How long a test waits for something that should happen in well under a
/// second, before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct TestEnv {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub clock: Arc<dyn Clock>,
    pub dir: Arc<TempDir>,
    postgres: Option<(String, String)>,
}

impl TestEnv {
    async fn open(backend: Backend) -> Option<TestEnv> {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (store, bus, postgres): (Store, Arc<dyn Bus>, _) = match backend {
            Backend::Sqlite => {
                let db = SqliteDb::open(dir.path().join("herald.db"))
                    .await
                    .expect("open sqlite");
                let store = Store::from_sqlite(db.clone(), clock.clone());
                store.migrate().await.expect("migrate");
                (store, Arc::new(EmbeddedBus::new(db)), None)
            }
            Backend::Postgres => {
                let url = postgres_url()?;
                let schema = format!("herald_alerts_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&url)
                    .await
                    .expect("connect to postgres");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test schema");
                let _ = admin.close().await;
                let options = PgConnectOptions::from_str(&url)
                    .expect("postgres url")
                    .options([("search_path", schema.as_str())]);
                let db = PgDb::connect_with(options).await.expect("connect");
                let store = Store::from_postgres(db, clock.clone());
                store.migrate().await.expect("migrate");
                let bus = EmbeddedBus::open(dir.path().join("bus.db"))
                    .await
                    .expect("open the bus");
                (store, Arc::new(bus), Some((url, schema)))
            }
        };
        Some(TestEnv {
            store,
            bus,
            clock,
            dir,
            postgres,
        })
    }

    async fn cleanup(self) {
        self.store.close().await;
        if let Some((url, schema)) = self.postgres {
            if let Ok(mut admin) = PgConnection::connect(&url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    // ---- seeding ---------------------------------------------------------

    pub async fn brand(&self, id: &str, name: &str) {
        self.store
            .catalog()
            .create_brand(&BrandId::parse(id).unwrap(), name)
            .await
            .expect("create brand");
    }

    /// A sale of `brand`; returns its id.
    pub async fn sale(&self, brand: &str, headline: &str) -> String {
        let slug: String = headline
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.store
            .catalog()
            .create_sale(&NewSale {
                brand_id: BrandId::parse(brand).unwrap(),
                headline: headline.to_owned(),
                url: HttpUrl::parse(&format!("https://shop.example.com/sales/{slug}")).unwrap(),
                image: None,
                starts_at: Timestamp(1_893_456_000_000),
                ends_at: None,
            })
            .await
            .expect("create sale")
            .id
    }

    /// A template; returns its id.
    pub async fn template(&self, subject: &str, html: &str, text: Option<&str>) -> String {
        self.store
            .catalog()
            .create_template(&NewTemplate {
                name: format!("template-{}", uuid::Uuid::new_v4().simple()),
                subject: subject.to_owned(),
                html: html.to_owned(),
                text: text.map(str::to_owned),
            })
            .await
            .expect("create template")
            .id
    }

    /// The template most tests use: every member field it needs is guarded
    /// except the email, the brands and sales are listed.
    pub async fn standard_template(&self) -> String {
        self.template(
            "{{ alert.subject }}: {{ brands | map(attribute='name') | join(' & ') }}",
            STANDARD_HTML,
            None,
        )
        .await
    }

    pub async fn member(&self, id: &str, first_name: Option<&str>) {
        self.member_with(
            id,
            &format!("{id}@example.com"),
            first_name,
            MemberStatus::Active,
        )
        .await;
    }

    pub async fn member_with(
        &self,
        id: &str,
        email: &str,
        first_name: Option<&str>,
        status: MemberStatus,
    ) {
        self.store
            .members()
            .upsert(&MemberInput {
                id: MemberId::parse(id).unwrap(),
                email: EmailAddress::parse(email).unwrap(),
                name: first_name.map(|f| format!("{f} Example")),
                first_name: first_name.map(str::to_owned),
                locale: None,
                time_zone: None,
                status,
                customer_id: None,
            })
            .await
            .expect("upsert member");
    }

    /// Many members `<prefix>-000`... with a first name, each with an
    /// affinity of 0.9 for `brand`; returns their ids in order.
    pub async fn members_for(&self, prefix: &str, count: usize, brand: &str) -> Vec<String> {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
        let inputs: Vec<MemberInput> = ids
            .iter()
            .map(|id| MemberInput {
                id: MemberId::parse(id).unwrap(),
                email: EmailAddress::parse(&format!("{id}@example.com")).unwrap(),
                name: Some(format!("Member {id}")),
                first_name: Some("Pat".to_owned()),
                locale: None,
                time_zone: None,
                status: MemberStatus::Active,
                customer_id: Some(CustomerId::parse(&format!("cust-{id}")).unwrap()),
            })
            .collect();
        self.store
            .members()
            .upsert_batch(&inputs)
            .await
            .expect("upsert members");
        let affinities: Vec<AffinityInput> = ids
            .iter()
            .map(|id| AffinityInput {
                member_id: MemberId::parse(id).unwrap(),
                brand_id: BrandId::parse(brand).unwrap(),
                score: AffinityScore::new(0.9).unwrap(),
            })
            .collect();
        self.store
            .members()
            .set_affinities_batch(&affinities)
            .await
            .expect("set affinities");
        ids
    }

    pub async fn affinity(&self, member: &str, brand: &str, score: f64) {
        self.store
            .members()
            .set_affinity(member, brand, AffinityScore::new(score).unwrap())
            .await
            .expect("set affinity");
    }

    pub async fn unsubscribe(&self, member: &str) {
        self.store
            .members()
            .set_subscription(member, &EmailType::brand_alerts(), false, "test")
            .await
            .expect("unsubscribe");
    }

    pub async fn suppress(&self, address: &str) {
        self.store
            .members()
            .suppress(address, SuppressionReason::HardBounce, "test", None)
            .await
            .expect("suppress");
    }

    /// A scheduled alert, due now, over `sales`.
    pub async fn alert(&self, template_id: &str, sales: &[String], threshold: f64) -> BrandAlert {
        self.alert_via(template_id, sales, threshold, None).await
    }

    pub async fn alert_via(
        &self,
        template_id: &str,
        sales: &[String],
        threshold: f64,
        transport: Option<&str>,
    ) -> BrandAlert {
        let alerts = self.store.brand_alerts();
        let alert = alerts
            .create(&NewBrandAlert {
                name: "Spring sale".to_owned(),
                subject: "Your brands are on sale".to_owned(),
                template_id: template_id.to_owned(),
                send_at: Timestamp(self.now().millis() - 1_000),
                affinity_threshold: threshold,
                transport: transport.map(str::to_owned),
                sale_ids: sales.to_vec(),
            })
            .await
            .expect("create alert");
        alerts
            .apply(&alert.id, AlertAction::Schedule, None)
            .await
            .expect("schedule alert")
    }

    pub async fn get_alert(&self, id: &str) -> BrandAlert {
        self.store
            .brand_alerts()
            .get(id)
            .await
            .expect("get alert")
            .expect("alert exists")
    }

    pub async fn stats(&self, id: &str) -> AlertStats {
        self.store.brand_alerts().stats(id).await.expect("stats")
    }

    // ---- workers ---------------------------------------------------------

    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            max_receives: 5,
            ..QueueConfig::default()
        }
    }

    pub fn audience_job(&self, settings: AudienceSettings) -> AudienceJob {
        AudienceJob::new(
            self.store.clone(),
            self.bus.clone(),
            settings,
            self.queue_config(),
            self.clock.clone(),
        )
        .expect("audience job")
    }

    pub fn composer(
        &self,
        transport: Arc<dyn Transport>,
        settings: &MailerSettings,
    ) -> Arc<Composer> {
        let transports = Transports::from_transports(
            BTreeMap::from([("capture".to_owned(), transport)]),
            "capture",
        )
        .expect("transports");
        Arc::new(
            Composer::new(
                self.store.clone(),
                Arc::new(transports),
                settings,
                SIGNING_KEY,
                self.clock.clone(),
            )
            .expect("composer"),
        )
    }

    pub fn mailer(&self, transport: Arc<dyn Transport>, settings: MailerSettings) -> Mailer {
        self.mailer_with(transport, settings, self.queue_config())
    }

    pub fn mailer_with(
        &self,
        transport: Arc<dyn Transport>,
        settings: MailerSettings,
        queue: QueueConfig,
    ) -> Mailer {
        let composer = self.composer(transport, &settings);
        Mailer::new(
            self.store.clone(),
            self.bus.clone(),
            composer,
            settings,
            queue,
            self.clock.clone(),
        )
        .expect("mailer")
    }

    /// Builds every due alert to the end.
    pub async fn build_all(&self) {
        let job = self.audience_job(AudienceSettings::default());
        let worker = herald_alerts::AudienceWorker::new(Arc::new(job));
        worker
            .run_once(&tokio_util::sync::CancellationToken::new())
            .await
            .expect("audience build");
    }

    /// Drains the queue until the alert leaves `sending` (retries wait out
    /// their delays), or fails after [`PATIENCE`].
    pub async fn send_until_done(
        &self,
        mailer: &Mailer,
        alert_id: &str,
    ) -> herald_alerts::MailerReport {
        let mut total = herald_alerts::MailerReport::default();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            total += mailer.drain().await.expect("drain");
            let state = self.get_alert(alert_id).await.state;
            if state != AlertState::Sending {
                return total;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alert {alert_id} still sending; mailer report so far: {total:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The messages on `queue`, oldest first; none if it was never created.
    pub async fn queue_messages(&self, queue: &str) -> Vec<PeekedMessage> {
        match self.bus.peek(&QueueName::parse(queue).unwrap(), 1000).await {
            Ok(messages) => messages,
            Err(BusError::QueueNotFound(_)) => Vec::new(),
            Err(e) => panic!("peek {queue}: {e}"),
        }
    }
}

/// Mailer settings for tests: short claims and retries.
pub fn mailer_settings() -> MailerSettings {
    MailerSettings {
        concurrency: 4,
        receive_batch: 8,
        claim_ttl: Duration::from_secs(2),
        poll_wait: Duration::from_millis(100),
        retry_backoff: vec![Duration::from_millis(50)],
        default_transport: "capture".to_owned(),
        public_url: "https://herald.example.com".to_owned(),
        message_id_domain: "herald.example.com".to_owned(),
        ..MailerSettings::default()
    }
}

pub const STANDARD_HTML: &str = r#"<html><head><style>.sale { color: #c00 }</style></head><body>
<p>Hi {{ member.first_name | default("there") }},</p>
{% for sale in sales %}<p class="sale"><a href="{{ sale.url }}">{{ sale.brand }}: {{ sale.headline }}</a></p>{% endfor %}
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>"#;

fn postgres_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {DATABASE_URL_VAR} is not set: the PostgreSQL cases cannot run")
        }
        _ => {
            eprintln!("skipped: set {DATABASE_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run the PostgreSQL cases");
            None
        }
    }
}

/// Runs one case on a fresh store and bus, and cleans up even when it fails.
pub async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(env) = TestEnv::open(backend).await else {
        return;
    };
    let outcome = tokio::spawn(case(env.clone())).await;
    env.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task ended without finishing: {e}"),
        }
    }
}

/// One `#[tokio::test]` per case per backend: `<module>::sqlite::<case>`
/// and `<module>::postgres::<case>`.
macro_rules! alerts_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::support::run($crate::support::Backend::Sqlite, super::$case).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::support::run($crate::support::Backend::Postgres, super::$case).await;
                }
            )+
        }
    };
}

// ---- a capturing transport ------------------------------------------------

/// Every email a provider accepted, across mailer restarts.
#[derive(Debug, Default)]
pub struct Sink {
    emails: Mutex<Vec<OutgoingEmail>>,
}

impl Sink {
    pub fn emails(&self) -> Vec<OutgoingEmail> {
        self.emails.lock().unwrap().clone()
    }

    /// How many emails each member got, by the `member_id` custom arg.
    pub fn per_member(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for email in self.emails() {
            *counts
                .entry(email.custom_args["member_id"].clone())
                .or_default() += 1;
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.emails.lock().unwrap().len()
    }
}

/// What the transport does after recording an email in the sink.
#[derive(Debug)]
pub enum Hold {
    /// Returns at once.
    Never,
    /// The first `pass` sends return at once; each later one waits on
    /// `gate` (so it was accepted but never confirmed, if the gate stays
    /// shut).
    After { pass: usize, gate: Arc<Semaphore> },
}

/// A provider in memory: records what it accepts, fails the addresses it
/// is told to, and can hold sends open to simulate a crash mid-send.
#[derive(Debug)]
pub struct CaptureTransport {
    pub sink: Arc<Sink>,
    failures: Mutex<HashMap<String, VecDeque<SendError>>>,
    hold: Hold,
    calls: AtomicUsize,
    held: AtomicUsize,
    held_changed: Notify,
}

impl CaptureTransport {
    pub fn new(sink: Arc<Sink>) -> Self {
        Self::holding(sink, Hold::Never)
    }

    pub fn holding(sink: Arc<Sink>, hold: Hold) -> Self {
        Self {
            sink,
            failures: Mutex::new(HashMap::new()),
            hold,
            calls: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            held_changed: Notify::new(),
        }
    }

    /// The next sends to `address` fail with these errors, in order.
    pub fn fail(&self, address: &str, errors: Vec<SendError>) {
        self.failures
            .lock()
            .unwrap()
            .insert(address.to_owned(), errors.into());
    }

    /// Waits until `count` sends are held open.
    pub async fn wait_held(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.held_changed.notified();
            if self.held.load(Ordering::SeqCst) >= count {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "only {} sends held, waited for {count}",
                self.held.load(Ordering::SeqCst)
            );
        }
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Transport for CaptureTransport {
    fn kind(&self) -> &'static str {
        "capture"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        email.check()?;
        let failure = self
            .failures
            .lock()
            .unwrap()
            .get_mut(&email.to.email.to_string())
            .and_then(VecDeque::pop_front);
        if let Some(error) = failure {
            return Err(error);
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.sink.emails.lock().unwrap().push(email.clone());
        if let Hold::After { pass, gate } = &self.hold {
            if call >= *pass {
                self.held.fetch_add(1, Ordering::SeqCst);
                self.held_changed.notify_waiters();
                let _permit = gate.acquire().await;
            }
        }
        Ok(SendReceipt {
            provider_message_id: Some(format!("capture-{call}")),
        })
    }
}
