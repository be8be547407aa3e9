//! Bulk imports: formats, line errors, all-or-nothing against
//! `skip_invalid`, references, duplicates, and a large streamed import.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use herald_core::catalog::{BrandId, EmailType, MemberStatus};
use herald_store::members::import::{
    import, ImportError, ImportFormat, ImportKind, ImportOptions, ImportProgress, ImportReport,
    LineError, BATCH_ROWS, MAX_LINE_BYTES, MAX_REPORTED_ERRORS,
};
use herald_store::members::MemberFilter;
use herald_store::page::PageRequest;
use herald_store::Store;
use tokio::io::{AsyncRead, ReadBuf};

use crate::harness::TestDb;

store_suite!(
    members_import_from_ndjson_and_csv,
    one_bad_line_stores_nothing_by_default,
    skip_invalid_stores_the_good_lines,
    malformed_ndjson_lines_are_named_by_line_number,
    malformed_csv_records_are_named_by_line_number,
    csv_header_problems_stop_the_import,
    later_lines_win_over_earlier_ones_across_batches,
    unknown_members_and_brands_are_line_errors,
    subscriptions_import_with_defaults,
    reported_errors_are_capped,
    running_an_import_again_changes_nothing,
    large_affinity_import_streams,
);

async fn run(
    store: &Store,
    kind: ImportKind,
    format: ImportFormat,
    skip_invalid: bool,
    input: &str,
) -> Result<ImportReport, ImportError> {
    let mut options = ImportOptions::new(kind, format);
    options.skip_invalid = skip_invalid;
    import(
        store,
        io::Cursor::new(input.as_bytes().to_vec()),
        &options,
        |_| {},
    )
    .await
}

async fn ok(store: &Store, kind: ImportKind, format: ImportFormat, input: &str) -> ImportReport {
    run(store, kind, format, false, input).await.unwrap()
}

async fn member_count(store: &Store) -> usize {
    let page = store
        .members()
        .list(&MemberFilter {
            email: None,
            page: PageRequest::first(1000),
        })
        .await
        .unwrap();
    page.items.len()
}

fn lines_of(report: &ImportReport) -> Vec<(u64, Option<&str>)> {
    report
        .invalid
        .iter()
        .map(|e| (e.line, e.field.as_deref()))
        .collect()
}

async fn brands(store: &Store, ids: &[&str]) {
    for id in ids {
        store
            .catalog()
            .create_brand(&BrandId::parse(id).unwrap(), id)
            .await
            .unwrap();
    }
}

async fn members_import_from_ndjson_and_csv(db: TestDb) {
    let ndjson = r#"{"id":"m1","email":"Ann@Example.com","name":"Ann Lee","first_name":"Ann","locale":"en-GB","time_zone":"Europe/London","status":"active","customer_id":"c1"}
{"id":"m2","email":"bob@example.com","name":null}
"#;
    let report = ok(&db.store, ImportKind::Members, ImportFormat::Ndjson, ndjson).await;
    assert_eq!(
        report,
        ImportReport {
            rows: 2,
            applied: 2,
            invalid: vec![],
            truncated_errors: 0
        }
    );
    let m1 = db.store.members().get("m1").await.unwrap().unwrap();
    assert_eq!(m1.email_normalized, "ann@example.com");
    assert_eq!(m1.first_name.as_deref(), Some("Ann"));
    assert_eq!(m1.customer_id.as_deref(), Some("c1"));
    let m2 = db.store.members().get("m2").await.unwrap().unwrap();
    assert_eq!((m2.name, m2.status), (None, MemberStatus::Active));

    // Columns in any order; quoted commas; empty cells are absent values;
    // a BOM and CRLF line ends are fine.
    let csv = "\u{feff}email,id,name,status,time_zone\r\n\
               carol@example.com,m3,\"Carol, Jr.\",inactive,\r\n\
               dan@example.com,m4,,,America/New_York\r\n";
    let report = ok(&db.store, ImportKind::Members, ImportFormat::Csv, csv).await;
    assert_eq!((report.rows, report.applied), (2, 2), "{report:?}");
    let m3 = db.store.members().get("m3").await.unwrap().unwrap();
    assert_eq!(m3.name.as_deref(), Some("Carol, Jr."));
    assert_eq!(m3.status, MemberStatus::Inactive);
    assert_eq!(m3.time_zone, None);
    let m4 = db.store.members().get("m4").await.unwrap().unwrap();
    assert_eq!(m4.time_zone.as_deref(), Some("America/New_York"));
    assert_eq!(m4.name, None);
}

async fn one_bad_line_stores_nothing_by_default(db: TestDb) {
    let input = "id,email\nm1,a@example.com\nm2,not-an-address\nm3,c@example.com\n";
    let report = run(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        false,
        input,
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.applied, 0);
    assert_eq!(lines_of(&report), [(3, Some("email"))]);
    assert!(
        report.invalid[0].message.contains("not-an-address"),
        "{report:?}"
    );
    assert_eq!(member_count(&db.store).await, 0, "nothing stored");
}

async fn skip_invalid_stores_the_good_lines(db: TestDb) {
    let input =
        "id,email\nm1,a@example.com\nm2,not-an-address\nm 3,c@example.com\nm4,d@example.com\n";
    let report = run(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        true,
        input,
    )
    .await
    .unwrap();
    assert_eq!((report.rows, report.applied), (4, 2));
    assert_eq!(lines_of(&report), [(3, Some("email")), (4, Some("id"))]);
    assert!(db.store.members().get("m1").await.unwrap().is_some());
    assert!(db.store.members().get("m4").await.unwrap().is_some());
    assert_eq!(member_count(&db.store).await, 2);
}

async fn malformed_ndjson_lines_are_named_by_line_number(db: TestDb) {
    let long = format!(
        "{{\"id\":\"m9\",\"email\":\"x@example.com\",\"name\":\"{}\"}}",
        "n".repeat(MAX_LINE_BYTES)
    );
    let input = [
        r#"{"id":"m1","email":"a@example.com"}"#,
        "",
        r#"{"id":"m2","email":"b@example.com""#,
        r#"["m3","c@example.com"]"#,
        r#"{"id":"m4","email":"d@example.com","emial":"typo"}"#,
        r#"{"id":5,"email":"e@example.com"}"#,
        r#"{"email":"f@example.com"}"#,
        "   ",
        &long,
        r#"{"id":"m10","email":"g@example.com","time_zone":"Mars/Base"}"#,
        r#"{"id":"m11","email":"h@example.com"}"#,
    ]
    .join("\n");
    let report = run(
        &db.store,
        ImportKind::Members,
        ImportFormat::Ndjson,
        true,
        &input,
    )
    .await
    .unwrap();
    assert_eq!(
        lines_of(&report),
        [
            (3, None),
            (4, None),
            (5, Some("emial")),
            (6, Some("id")),
            (7, Some("id")),
            (9, None),
            (10, Some("time_zone")),
        ],
        "{:#?}",
        report.invalid
    );
    assert!(report.invalid[0].message.contains("not valid JSON"));
    assert!(report.invalid[1].message.contains("JSON object"));
    assert!(report.invalid[3].message.contains("must be a string"));
    assert!(report.invalid[4].message.contains("required"));
    assert!(report.invalid[5].message.contains("longer than"));
    assert_eq!(
        (report.rows, report.applied),
        (9, 2),
        "blank lines are not rows"
    );
    assert!(db.store.members().get("m11").await.unwrap().is_some());
}

async fn malformed_csv_records_are_named_by_line_number(db: TestDb) {
    // The record of line 2 spans two lines: later line numbers count both.
    let input = "id,email,name\n\
                 m1,a@example.com,\"two\nlines\"\n\
                 m2,b@example.com\n\
                 m3,c@example.com,x,extra\n\
                 m4,d@example.com,\"quoted \"\"name\"\"\"\n\
                 m5,e@example.com,\u{1}\n\
                 m6,f@example.com,ok";
    let report = run(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        true,
        input,
    )
    .await
    .unwrap();
    assert_eq!(
        lines_of(&report),
        [(2, Some("name")), (4, None), (5, None), (7, Some("name"))],
        "{:#?}",
        report.invalid
    );
    assert!(report.invalid[0].message.contains("control character"));
    assert!(report.invalid[1]
        .message
        .contains("has 2 fields; the header has 3"));
    assert_eq!((report.rows, report.applied), (6, 2));
    let m4 = db.store.members().get("m4").await.unwrap().unwrap();
    assert_eq!(m4.name.as_deref(), Some("quoted \"name\""));
    assert!(db.store.members().get("m6").await.unwrap().is_some());
}

async fn csv_header_problems_stop_the_import(db: TestDb) {
    for (input, expected) in [
        ("", "empty"),
        ("id,emial\nm1,a@example.com\n", "\"emial\" is unknown"),
        ("id,name\nm1,Ann\n", "required column \"email\""),
        ("id,email,id\nm1,a@example.com,m1\n", "appears twice"),
    ] {
        let err = run(
            &db.store,
            ImportKind::Members,
            ImportFormat::Csv,
            true,
            input,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ImportError::Header(_)), "{input:?}: {err}");
        assert!(err.to_string().contains(expected), "{input:?}: {err}");
    }
    assert_eq!(member_count(&db.store).await, 0);
}

async fn later_lines_win_over_earlier_ones_across_batches(db: TestDb) {
    let mut input = String::from("id,email,name\n");
    input.push_str("dup,first@example.com,First\n");
    for i in 0..BATCH_ROWS + 10 {
        input.push_str(&format!("m{i},m{i}@example.com,\n"));
        if i == 5 {
            input.push_str("dup,second@example.com,Second\n");
        }
    }
    input.push_str("dup,last@example.com,Last\n");
    let report = ok(&db.store, ImportKind::Members, ImportFormat::Csv, &input).await;
    assert_eq!(report.applied as usize, BATCH_ROWS + 13);
    let dup = db.store.members().get("dup").await.unwrap().unwrap();
    assert_eq!(
        (dup.email.as_str(), dup.name.as_deref()),
        ("last@example.com", Some("Last"))
    );
}

async fn unknown_members_and_brands_are_line_errors(db: TestDb) {
    brands(&db.store, &["b1"]).await;
    ok(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        "id,email\nm1,a@example.com\n",
    )
    .await;
    let input = "member_id,brand_id,score\n\
                 m1,b1,0.5\n\
                 ghost,b1,0.5\n\
                 m1,nope,0.5\n\
                 m1,b1,1.5\n\
                 m1,b1,high\n";
    let report = run(
        &db.store,
        ImportKind::Affinities,
        ImportFormat::Csv,
        false,
        input,
    )
    .await
    .unwrap();
    assert_eq!(
        lines_of(&report),
        [
            (3, Some("member_id")),
            (4, Some("brand_id")),
            (5, Some("score")),
            (6, Some("score")),
        ]
    );
    assert!(report.invalid[0]
        .message
        .contains("member ghost does not exist"));
    assert!(report.invalid[1]
        .message
        .contains("brand nope does not exist"));
    assert_eq!(report.applied, 0);
    assert!(db
        .store
        .members()
        .affinities("m1")
        .await
        .unwrap()
        .is_empty());

    let subs = "{\"member_id\":\"ghost\",\"subscribed\":false}\n\
                {\"member_id\":\"m1\",\"subscribed\":\"no\"}\n\
                {\"member_id\":\"m1\",\"subscribed\":false,\"email_type\":\"Bad-Type\"}\n";
    let report = run(
        &db.store,
        ImportKind::Subscriptions,
        ImportFormat::Ndjson,
        false,
        subs,
    )
    .await
    .unwrap();
    assert_eq!(
        lines_of(&report),
        [
            (1, Some("member_id")),
            (2, Some("subscribed")),
            (3, Some("email_type"))
        ]
    );
}

async fn subscriptions_import_with_defaults(db: TestDb) {
    ok(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        "id,email\nm1,a@example.com\nm2,b@example.com\n",
    )
    .await;
    let input = "member_id,subscribed,email_type,source\n\
                 m1,false,,\n\
                 m2,yes,weekly_digest,crm\n\
                 m2,0,,\n";
    let report = ok(
        &db.store,
        ImportKind::Subscriptions,
        ImportFormat::Csv,
        input,
    )
    .await;
    assert_eq!(report.applied, 3);
    let m1 = db.store.members().subscriptions("m1").await.unwrap();
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0].email_type, EmailType::brand_alerts().as_str());
    assert!(!m1[0].subscribed);
    assert_eq!(m1[0].source, "import");
    let m2: Vec<(String, bool, String)> = db
        .store
        .members()
        .subscriptions("m2")
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.email_type, s.subscribed, s.source))
        .collect();
    assert_eq!(
        m2,
        [
            ("brand_alerts".to_owned(), false, "import".to_owned()),
            ("weekly_digest".to_owned(), true, "crm".to_owned()),
        ]
    );
}

async fn reported_errors_are_capped(db: TestDb) {
    let mut input = String::from("id,email\n");
    for i in 0..MAX_REPORTED_ERRORS + 50 {
        input.push_str(&format!("m{i},bad\n"));
    }
    input.push_str("ok,ok@example.com\n");
    let report = run(
        &db.store,
        ImportKind::Members,
        ImportFormat::Csv,
        true,
        &input,
    )
    .await
    .unwrap();
    assert_eq!(report.invalid.len(), MAX_REPORTED_ERRORS);
    assert_eq!(report.truncated_errors, 50);
    assert_eq!(report.invalid_rows(), (MAX_REPORTED_ERRORS + 50) as u64);
    assert_eq!(report.invalid[0].line, 2);
    assert_eq!(report.applied, 1);
}

async fn running_an_import_again_changes_nothing(db: TestDb) {
    brands(&db.store, &["b1", "b2"]).await;
    let members = "id,email\nm1,a@example.com\nm2,b@example.com\n";
    ok(&db.store, ImportKind::Members, ImportFormat::Csv, members).await;
    let affinities = "member_id,brand_id,score\nm1,b1,0.5\nm1,b2,0.25\nm2,b1,1\n";
    let first = ok(
        &db.store,
        ImportKind::Affinities,
        ImportFormat::Csv,
        affinities,
    )
    .await;
    let before = db.store.members().affinities("m1").await.unwrap();
    let again = ok(
        &db.store,
        ImportKind::Affinities,
        ImportFormat::Csv,
        affinities,
    )
    .await;
    assert_eq!(first, again);
    assert_eq!(db.store.members().affinities("m1").await.unwrap(), before);
    assert_eq!(member_count(&db.store).await, 2);
}

/// Generates `members × brands` affinity lines on demand, counting the
/// bytes handed out so the test can tell how much was read when.
struct AffinityLines {
    members: u64,
    brands: u64,
    next: u64,
    pending: Vec<u8>,
    produced: Arc<AtomicU64>,
}

impl AsyncRead for AffinityLines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.len() < buf.remaining() && this.next < this.members * this.brands {
            let (m, b) = (this.next / this.brands, this.next % this.brands);
            let score = (this.next % 100) as f64 / 100.0;
            this.pending.extend_from_slice(
                format!("{{\"member_id\":\"m{m:06}\",\"brand_id\":\"b{b}\",\"score\":{score}}}\n")
                    .as_bytes(),
            );
            this.next += 1;
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.drain(..n);
        this.produced.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

async fn large_affinity_import_streams(db: TestDb) {
    const MEMBERS: u64 = 20_000;
    const BRANDS: u64 = 10;
    let brand_ids: Vec<String> = (0..BRANDS).map(|b| format!("b{b}")).collect();
    let brand_refs: Vec<&str> = brand_ids.iter().map(String::as_str).collect();
    brands(&db.store, &brand_refs).await;
    let mut members = String::from("id,email\n");
    for m in 0..MEMBERS {
        members.push_str(&format!("m{m:06},m{m}@example.com\n"));
    }
    let report = ok(&db.store, ImportKind::Members, ImportFormat::Csv, &members).await;
    assert_eq!(report.applied, MEMBERS);

    let produced = Arc::new(AtomicU64::new(0));
    let input = AffinityLines {
        members: MEMBERS,
        brands: BRANDS,
        next: 0,
        pending: Vec::new(),
        produced: produced.clone(),
    };
    // What had been read from the input when each validation step was reported.
    let read_at_progress: Arc<Mutex<Vec<(ImportProgress, u64)>>> = Arc::default();
    let seen = read_at_progress.clone();
    let report = import(
        &db.store,
        input,
        &ImportOptions::new(ImportKind::Affinities, ImportFormat::Ndjson),
        move |p| {
            seen.lock()
                .unwrap()
                .push((p, produced.load(Ordering::SeqCst)))
        },
    )
    .await
    .unwrap();
    let total = MEMBERS * BRANDS;
    assert_eq!(
        report,
        ImportReport {
            rows: total,
            applied: total,
            invalid: Vec::<LineError>::new(),
            truncated_errors: 0
        }
    );
    let steps = read_at_progress.lock().unwrap().clone();
    let (first_step, read_then) = steps[0];
    assert_eq!(first_step.validated, BATCH_ROWS as u64);
    let (_, read_in_all) = *steps.last().unwrap();
    // Streaming: the first batch was checked after reading a small part of
    // the input, not after buffering all of it.
    assert!(
        read_then * 20 < read_in_all,
        "read {read_then} of {read_in_all} bytes before the first batch was checked"
    );
    assert!(steps
        .windows(2)
        .all(|w| w[0].0.validated <= w[1].0.validated));
    assert_eq!(steps.last().unwrap().0.applied, total);

    let sample = db.store.members().affinities("m012345").await.unwrap();
    assert_eq!(sample.len(), BRANDS as usize);
    let count = match (db.store.sqlite(), db.store.postgres()) {
        (Some(d), _) => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM affinities")
            .fetch_one(&d.reader)
            .await
            .unwrap(),
        (_, Some(d)) => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM affinities")
            .fetch_one(&d.pool)
            .await
            .unwrap(),
        (None, None) => unreachable!("a store has one backend"),
    };
    assert_eq!(count as u64, total);
}
