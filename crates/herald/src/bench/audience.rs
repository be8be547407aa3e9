//! The audience build benchmark: one large alert built on the embedded store
//! and bus, against raw SQLite inserting the same number of queue rows.
//!
//! Herald's figure is the wall time of [`AudienceJob::build`], from its start
//! until every message is enqueued: reading the affinity table in member
//! order, classifying each candidate (unsubscribed, suppressed, cadence),
//! enqueuing with dedup keys and recording the build cursor, batch after
//! batch. The reference is the least any enqueue can cost: the same number
//! of rows of the same size inserted into the bus's own message table (same
//! schema and indexes, a fresh file opened with the store's pragmas) with
//! the bus's multi-row statement, one transaction per batch — no reading,
//! no dedup records, no progress. The reference runs first; each phase's
//! files are flushed to disk before the next starts.
//!
//! Peak memory is the build's resident high-water mark (`VmHWM`). Run by the
//! binary, the build runs in a child process of its own
//! ([`BuildProcess::Child`]), so the figure holds nothing but the build;
//! in-process (tests), the mark is reset just before the build and still
//! includes what the process held at that moment, which the report shows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_alerts::{AudienceJob, AudienceSettings, BuildOutcome, EmailJob};
use herald_bus::{Bus, EmbeddedBus, QueueConfig};
use herald_core::{Clock, SystemClock};
use herald_store::{SqliteDb, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::dataset::{self, AudienceCounts, DatasetSpec};
use super::{flush_to_disk, memory, mib, sqlite_files, RunDir};

/// Rows per statement of the embedded bus's insert.
const ROWS_PER_STATEMENT: usize = 500;
/// The targets, printed beside the figures.
const TARGET_RATIO: f64 = 3.0;
const TARGET_PEAK_MIB: f64 = 300.0;

/// Where the measured build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProcess {
    /// In this process, after generating the data and the reference; peak
    /// memory then includes whatever the process still held (reported).
    InProcess,
    /// In a child: `program args... --db FILE --alert ID --batch-size N`,
    /// which must run [`run_build_phase`] with those values and print its
    /// [`BuildMeasurement`] as one line of JSON on stdout (the last line
    /// counts). The binary passes itself with
    /// `["bench", "audience", "--phase", "build"]`.
    Child { program: PathBuf, args: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudienceBenchOptions {
    /// Where to create the run's temporary folder (the system's temporary
    /// folder when `None`); removed after the run.
    pub dir: Option<PathBuf>,
    pub members: u64,
    pub brands: u32,
    pub affinities_per_member: u32,
    /// The alert is over this many brands, one sale each.
    pub alert_brands: u32,
    /// The alert's affinity threshold; scores are uniform in [0, 1).
    pub threshold: f64,
    /// Members per audience batch (`audience.batch_size`).
    pub batch_size: u32,
    pub build_process: BuildProcess,
}

/// 10% of members unsubscribed, 2% suppressed, 5% at the cadence limit.
const UNSUBSCRIBED_PERCENT: u32 = 10;
const SUPPRESSED_PERCENT: u32 = 2;
const CADENCE_PERCENT: u32 = 5;

impl Default for AudienceBenchOptions {
    /// The figures: 1,000,000 members, 50 brands, 5 affinities each,
    /// an alert over 3 brands.
    fn default() -> Self {
        Self {
            dir: None,
            members: 1_000_000,
            brands: 50,
            affinities_per_member: 5,
            alert_brands: 3,
            threshold: 0.3,
            batch_size: AudienceSettings::default().batch_size,
            build_process: BuildProcess::InProcess,
        }
    }
}

/// What the build phase is given (the child's command-line arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPhaseOptions {
    /// A generated database holding a due alert.
    pub db: PathBuf,
    pub alert_id: String,
    pub batch_size: u32,
}

/// One build, as measured by the process that ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildMeasurement {
    /// From the job's start until every message was enqueued.
    pub elapsed_secs: f64,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Resident memory just before the store was opened.
    pub baseline_rss_bytes: u64,
    /// Peak resident memory (`VmHWM`) at the end of the build.
    pub peak_rss_bytes: u64,
    /// Whether the peak was reset before the build; if not, it covers the
    /// whole life of the process.
    pub peak_reset: bool,
}

/// Times in seconds; the ratio is Herald / reference, so 1.0 means as fast
/// as the raw inserts and 3.0 three times as long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudienceBenchReport {
    pub members: u64,
    pub brands: u32,
    pub affinities: u64,
    pub alert_brands: u32,
    pub threshold: f64,
    pub batch_size: u32,
    pub generation_secs: f64,
    pub counting_secs: f64,
    /// Candidates (active, affinity at or above the threshold) by SQL.
    pub candidates: u64,
    /// Eligible members by SQL; Herald enqueued exactly this many.
    pub eligible_by_sql: u64,
    pub enqueued: u64,
    pub excluded_unsubscribed: u64,
    pub excluded_suppressed: u64,
    pub excluded_cadence: u64,
    /// Messages found on the queue after the build.
    pub queued_rows: u64,
    pub message_bytes: usize,
    pub herald_secs: f64,
    pub reference_secs: f64,
    pub ratio: f64,
    pub peak_rss_bytes: u64,
    pub baseline_rss_bytes: u64,
    /// How the peak was measured, in words.
    pub memory_method: String,
}

impl fmt::Display for AudienceBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audience build benchmark (embedded SQLite store and bus): {} members, {} brands, \
             {} affinities, an alert over {} brands at threshold {:.2}, batches of {}",
            self.members,
            self.brands,
            self.affinities,
            self.alert_brands,
            self.threshold,
            self.batch_size
        )?;
        writeln!(
            f,
            "data generated in {:.1} s, audience counted by SQL in {:.1} s (neither measured)",
            self.generation_secs, self.counting_secs
        )?;
        writeln!(
            f,
            "{} candidates: {} enqueued (SQL: {} eligible, {} on the queue), excluded {} \
             unsubscribed, {} suppressed, {} at the cadence limit",
            self.candidates,
            self.enqueued,
            self.eligible_by_sql,
            self.queued_rows,
            self.excluded_unsubscribed,
            self.excluded_suppressed,
            self.excluded_cadence
        )?;
        writeln!(f, "{:<34} {:>10} {:>12}", "phase", "seconds", "messages/s")?;
        writeln!(
            f,
            "{:<34} {:>10.2} {:>12.0}",
            "herald audience build",
            self.herald_secs,
            self.enqueued as f64 / self.herald_secs.max(1e-9)
        )?;
        writeln!(
            f,
            "{:<34} {:>10.2} {:>12.0}",
            format!("raw SQLite insert, {} B rows", self.message_bytes),
            self.reference_secs,
            self.enqueued as f64 / self.reference_secs.max(1e-9)
        )?;
        writeln!(
            f,
            "time ratio herald/raw: {:.2} (target at most {TARGET_RATIO:.0})",
            self.ratio
        )?;
        write!(
            f,
            "peak memory: {:.0} MiB resident (target under {TARGET_PEAK_MIB:.0} MiB), {}; \
             {:.0} MiB resident before the build",
            mib(self.peak_rss_bytes),
            self.memory_method,
            mib(self.baseline_rss_bytes)
        )
    }
}

/// Generates the data, runs the reference, then Herald's build, and checks
/// that the build enqueued exactly the audience SQL counts.
pub async fn run_audience_bench(opts: AudienceBenchOptions) -> anyhow::Result<AudienceBenchReport> {
    let spec = DatasetSpec {
        members: opts.members,
        brands: opts.brands,
        affinities_per_member: opts.affinities_per_member,
        alert_brands: opts.alert_brands,
        threshold: opts.threshold,
        unsubscribed_percent: UNSUBSCRIBED_PERCENT,
        suppressed_percent: SUPPRESSED_PERCENT,
        cadence_percent: CADENCE_PERCENT,
    };
    spec.validate()?;
    AudienceSettings {
        batch_size: opts.batch_size,
        ..AudienceSettings::default()
    }
    .validate()?;

    let dir = RunDir::create(opts.dir.as_deref())?;
    let herald_db = dir.path().join("herald.db");
    let data = dataset::generate(&herald_db, &spec).await?;
    let counting = Instant::now();
    let counts = dataset::count_audience(&herald_db, &data).await?;
    let counting_secs = counting.elapsed().as_secs_f64();
    let eligible = counts.eligible();
    anyhow::ensure!(
        eligible > 0,
        "nobody is eligible for the alert; lower the threshold or add members"
    );

    let sample = EmailJob {
        alert_id: data.alert_id.clone(),
        member_id: data.member_id(opts.members),
        brand_ids: data.alert_brand_ids[..1].to_vec(),
    }
    .to_message();
    let attributes = serde_json::to_string(&sample.attributes)?;
    let reference_db = dir.path().join("reference.db");
    let reference = reference_enqueue(
        &reference_db,
        eligible,
        opts.batch_size as usize,
        &sample.body,
        &attributes,
    )
    .await?;
    // Its disk space is better free before Herald's run; a file that
    // stays is removed with the run's folder anyway.
    for file in sqlite_files(&reference_db) {
        let _ = std::fs::remove_file(file);
    }

    let phase = BuildPhaseOptions {
        db: herald_db.clone(),
        alert_id: data.alert_id.clone(),
        batch_size: opts.batch_size,
    };
    let (measured, memory_method) = match &opts.build_process {
        BuildProcess::InProcess => (
            run_build_phase(&phase).await?,
            "VmHWM of this process, reset just before the build (it keeps what data \
             generation left resident)",
        ),
        BuildProcess::Child { program, args } => (
            build_in_child(program, args, &phase).await?,
            "VmHWM of a child process that only opens the store and builds",
        ),
    };
    let queued_rows = queued_rows(&herald_db).await?;
    check_counts(&counts, &measured, queued_rows)?;

    let herald_secs = measured.elapsed_secs;
    let reference_secs = reference.as_secs_f64();
    Ok(AudienceBenchReport {
        members: opts.members,
        brands: opts.brands,
        affinities: spec.affinities(),
        alert_brands: opts.alert_brands,
        threshold: opts.threshold,
        batch_size: opts.batch_size,
        generation_secs: data.generated_in.as_secs_f64(),
        counting_secs,
        candidates: counts.candidates,
        eligible_by_sql: eligible,
        enqueued: measured.enqueued,
        excluded_unsubscribed: measured.excluded_unsubscribed,
        excluded_suppressed: measured.excluded_suppressed,
        excluded_cadence: measured.excluded_cadence,
        queued_rows,
        message_bytes: sample.body.len(),
        herald_secs,
        reference_secs,
        ratio: herald_secs / reference_secs.max(1e-9),
        peak_rss_bytes: measured.peak_rss_bytes,
        baseline_rss_bytes: measured.baseline_rss_bytes,
        memory_method: if measured.peak_reset {
            memory_method.to_owned()
        } else {
            format!("{memory_method}; the kernel refused the reset, so it covers the whole process")
        },
    })
}

/// Refuses a run whose build did not enqueue exactly the audience.
fn check_counts(
    counts: &AudienceCounts,
    measured: &BuildMeasurement,
    queued: u64,
) -> anyhow::Result<()> {
    let expected = (
        counts.eligible(),
        counts.unsubscribed,
        counts.suppressed,
        counts.cadence,
    );
    let built = (
        measured.enqueued,
        measured.excluded_unsubscribed,
        measured.excluded_suppressed,
        measured.excluded_cadence,
    );
    anyhow::ensure!(
        built == expected,
        "the build's counts (enqueued, unsubscribed, suppressed, cadence) {built:?} differ from \
         SQL's {expected:?}"
    );
    anyhow::ensure!(
        queued == measured.enqueued,
        "the build reported {} messages enqueued but the queue holds {queued}",
        measured.enqueued
    );
    Ok(())
}

/// Opens the store and bus on `opts.db` and builds the alert to the end,
/// measuring the time from the job's start and this process's peak memory.
pub async fn run_build_phase(opts: &BuildPhaseOptions) -> anyhow::Result<BuildMeasurement> {
    let peak_reset = memory::reset_peak();
    let baseline_rss_bytes = memory::resident()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let db = SqliteDb::open(&opts.db).await?;
    let store = Store::from_sqlite(db.clone(), clock.clone());
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(db));
    let settings = AudienceSettings {
        batch_size: opts.batch_size,
        ..AudienceSettings::default()
    };
    let job = AudienceJob::new(store.clone(), bus, settings, QueueConfig::default(), clock)?;

    let started = Instant::now();
    let outcome = job.build(&opts.alert_id, &CancellationToken::new()).await;
    let elapsed = started.elapsed();
    let peak_rss_bytes = memory::peak()?;
    store.close().await;
    let alert = match outcome? {
        BuildOutcome::Finished(alert) => alert,
        other => anyhow::bail!("the audience build did not finish: {other:?}"),
    };
    Ok(BuildMeasurement {
        elapsed_secs: elapsed.as_secs_f64(),
        enqueued: alert.build.enqueued,
        excluded_unsubscribed: alert.build.excluded_unsubscribed,
        excluded_suppressed: alert.build.excluded_suppressed,
        excluded_cadence: alert.build.excluded_cadence,
        baseline_rss_bytes,
        peak_rss_bytes,
        peak_reset,
    })
}

async fn build_in_child(
    program: &Path,
    args: &[String],
    phase: &BuildPhaseOptions,
) -> anyhow::Result<BuildMeasurement> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .arg("--db")
        .arg(&phase.db)
        .args(["--alert", &phase.alert_id])
        .args(["--batch-size", &phase.batch_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot start the build process {}", program.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the build process {} failed: {}",
        program.display(),
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .context("the build process printed no measurement")?;
    serde_json::from_str(last)
        .with_context(|| format!("the build process printed {last:?}, not a measurement"))
}

/// Messages waiting on the email queue of the store at `path`.
async fn queued_rows(path: &Path) -> anyhow::Result<u64> {
    let db = SqliteDb::open(path).await?;
    let count: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM bus_messages AS m JOIN bus_queues AS q ON q.id = m.queue_id \
         WHERE q.name = ?1",
    )
    .bind(herald_alerts::EMAIL_QUEUE)
    .fetch_one(&db.reader)
    .await;
    db.close().await;
    Ok(u64::try_from(
        count.context("counting the queued messages")?,
    )?)
}

/// Inserts `rows` message rows of the given body and attributes into a
/// fresh database's `bus_messages`, `batch` rows per transaction; returns
/// the time the inserts took.
async fn reference_enqueue(
    path: &Path,
    rows: u64,
    batch: usize,
    body: &[u8],
    attributes: &str,
) -> anyhow::Result<Duration> {
    let db = SqliteDb::open(path).await?;
    db.migrate().await?;
    let full_statement = reference_insert_sql(ROWS_PER_STATEMENT);
    let now = SystemClock.now().millis();
    let started = Instant::now();
    let mut inserted: u64 = 0;
    while inserted < rows {
        let in_batch = batch.min(usize::try_from(rows - inserted)?);
        let mut tx = db.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut done = 0;
        while done < in_batch {
            let in_statement = ROWS_PER_STATEMENT.min(in_batch - done);
            let partial;
            let sql = if in_statement == ROWS_PER_STATEMENT {
                &full_statement
            } else {
                partial = reference_insert_sql(in_statement);
                &partial
            };
            let mut query = sqlx::query(sql);
            for n in 0..in_statement {
                let id = format!("ref-{:032}", inserted + (done + n) as u64);
                query = query
                    .bind(1_i64)
                    .bind(now)
                    .bind(id)
                    .bind(body)
                    .bind(attributes)
                    .bind(None::<&str>)
                    .bind(now);
            }
            query.execute(&mut *tx).await?;
            done += in_statement;
        }
        tx.commit().await?;
        inserted += in_batch as u64;
    }
    let elapsed = started.elapsed();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_messages")
        .fetch_one(&db.reader)
        .await?;
    db.close().await;
    anyhow::ensure!(
        u64::try_from(count)? == rows,
        "the reference inserted {count} rows instead of {rows}"
    );
    flush_to_disk(&sqlite_files(path))?;
    Ok(elapsed)
}

/// The embedded bus's insert of `rows` messages into a known queue, as it
/// writes it: seven parameters per row (queue id, sent_at, message_id, body,
/// attributes, group_key, ready_at), anonymous so SQLite binds them without
/// looking names up.
fn reference_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO bus_messages \
         (queue_id, sent_at, message_id, body, attributes, group_key, ready_at, \
          lease_until, first_received_at, receipt) \
         SELECT column1, column2, column3, column4, column5, column6, column7, \
             column2, column2, random() FROM (VALUES ",
    );
    for n in 0..rows {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push(')');
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full size when `HERALD_BENCH_FULL=1`, for measuring through the
    /// test harness; a small run otherwise.
    fn options() -> AudienceBenchOptions {
        if std::env::var("HERALD_BENCH_FULL").as_deref() == Ok("1") {
            AudienceBenchOptions::default()
        } else {
            AudienceBenchOptions {
                members: 2_000,
                batch_size: 100,
                ..AudienceBenchOptions::default()
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_enqueues_exactly_the_audience_sql_counts() {
        let parent = RunDir::create(None).unwrap();
        let opts = AudienceBenchOptions {
            dir: Some(parent.path().to_path_buf()),
            ..options()
        };
        let report = run_audience_bench(opts.clone()).await.unwrap();
        println!("{report}");
        assert_eq!(report.members, opts.members);
        assert_eq!(report.affinities, opts.members * 5);
        assert_eq!(report.enqueued, report.eligible_by_sql);
        assert_eq!(report.queued_rows, report.enqueued);
        assert_eq!(
            report.enqueued
                + report.excluded_unsubscribed
                + report.excluded_suppressed
                + report.excluded_cadence,
            report.candidates
        );
        for excluded in [
            report.excluded_unsubscribed,
            report.excluded_suppressed,
            report.excluded_cadence,
        ] {
            assert!(excluded > 0, "{report:?}");
        }
        assert!(report.peak_rss_bytes >= report.baseline_rss_bytes);
        assert!(report.herald_secs > 0.0 && report.reference_secs > 0.0);
        let table = report.to_string();
        assert!(table.contains("time ratio herald/raw"), "{table}");
        assert!(table.contains("peak memory"), "{table}");
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            0,
            "the run's folder is removed"
        );
    }

    #[tokio::test]
    async fn nonsense_options_are_refused_before_any_work() {
        for (opts, needle) in [
            (
                AudienceBenchOptions {
                    members: 0,
                    ..AudienceBenchOptions::default()
                },
                "members",
            ),
            (
                AudienceBenchOptions {
                    alert_brands: 51,
                    ..AudienceBenchOptions::default()
                },
                "alert brands",
            ),
            (
                AudienceBenchOptions {
                    threshold: -0.1,
                    ..AudienceBenchOptions::default()
                },
                "threshold",
            ),
            (
                AudienceBenchOptions {
                    batch_size: 0,
                    ..AudienceBenchOptions::default()
                },
                "audience.batch_size",
            ),
        ] {
            let err = run_audience_bench(opts).await.unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[tokio::test]
    async fn a_child_that_prints_no_measurement_fails_the_run() {
        let phase = BuildPhaseOptions {
            db: PathBuf::from("/nonexistent/herald.db"),
            alert_id: "a".into(),
            batch_size: 10,
        };
        let err = build_in_child(Path::new("true"), &[], &phase)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("printed no measurement"), "{err}");
        let err = build_in_child(Path::new("echo"), &["nonsense".into()], &phase)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a measurement"), "{err}");
        let err = build_in_child(Path::new("false"), &[], &phase)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed"), "{err}");
    }

    #[test]
    fn a_build_that_missed_members_is_refused() {
        let counts = AudienceCounts {
            candidates: 100,
            unsubscribed: 10,
            suppressed: 2,
            cadence: 5,
        };
        let mut measured = BuildMeasurement {
            elapsed_secs: 1.0,
            enqueued: 83,
            excluded_unsubscribed: 10,
            excluded_suppressed: 2,
            excluded_cadence: 5,
            baseline_rss_bytes: 1,
            peak_rss_bytes: 2,
            peak_reset: true,
        };
        check_counts(&counts, &measured, 83).unwrap();
        let err = check_counts(&counts, &measured, 82)
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue holds 82"), "{err}");
        measured.enqueued = 82;
        let err = check_counts(&counts, &measured, 82)
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ from SQL"), "{err}");
    }

    #[test]
    fn the_reference_statement_has_seven_parameters_a_row() {
        let sql = reference_insert_sql(3);
        assert_eq!(sql.matches('?').count(), 21);
        assert!(
            sql.ends_with("(?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?))")
        );
    }
}
