//! Bulk import of members, affinities and subscriptions from NDJSON or CSV,
//! streamed: memory stays bounded whatever the size of the input.
//!
//! An import runs in two passes:
//!
//! 1. **Validate.** Every line is read, parsed and checked (field values,
//!    and per batch of lines, that the members and brands it names exist).
//!    Good lines are written to a temporary spool file; bad ones are
//!    reported by line number (the first [`MAX_REPORTED_ERRORS`], then only
//!    counted).
//! 2. **Apply.** Unless a line was bad and `skip_invalid` is off (then
//!    nothing is stored), the spool is read back and written in batches of
//!    [`BATCH_ROWS`] rows, one transaction and a few multi-row upserts per
//!    batch, so the SQLite writer is never held for long and a slow upload
//!    holds it not at all.
//!
//! Every row is an upsert keyed by the member id (members), member and
//! brand (affinities) or member and email type (subscriptions); a later line
//! with the same key wins over an earlier one, as if the lines were applied
//! one by one. A crash or a lost connection during the apply pass leaves a
//! prefix of the batches applied; running the same import again is safe and
//! completes it.
//!
//! Formats (the columns of CSV, the fields of NDJSON objects):
//!
//! | kind | required | optional |
//! |---|---|---|
//! | members | `id`, `email` | `name`, `first_name`, `locale`, `time_zone`, `status` (`active` by default), `customer_id` |
//! | affinities | `member_id`, `brand_id`, `score` (0.0-1.0) | |
//! | subscriptions | `member_id`, `subscribed` | `email_type` (`brand_alerts` by default), `source` (`import` by default) |
//!
//! CSV: a header row naming the columns (any order, unknown names refused),
//! comma-separated, RFC 4180 quoting, UTF-8 (a BOM is skipped); an empty
//! cell is an absent value; `subscribed` is `true`/`false` (or `1`/`0`,
//! `yes`/`no`). NDJSON: one JSON object per line, strings for text, a JSON
//! number for `score`, a JSON boolean for `subscribed`, `null` or an absent
//! key for an absent value; unknown keys are refused; blank lines are
//! skipped. A member line is the member's whole record: optional fields it
//! leaves out are cleared.
//!
//! CSV goes through `csv-core` (the parser under the `csv` crate) rather
//! than the `csv` crate's reader, so that one record's size can be capped:
//! an unterminated quote then costs one line error, not the rest of the
//! input held in memory as a single record.

use std::collections::HashSet;
use std::fmt;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use herald_core::catalog::{
    check_text, AffinityScore, BrandId, CustomerId, EmailAddress, EmailType, Locale, MemberId,
    MemberStatus, Source, TimeZone,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncSeekExt, AsyncWriteExt, BufReader};

use super::{AffinityInput, MemberInput, SubscriptionInput, MAX_MEMBER_NAME_CHARS};
use crate::{Store, StoreError};

/// Rows validated, checked against the store and applied together.
pub const BATCH_ROWS: usize = 2000;
/// Line errors reported in full; more are only counted.
pub const MAX_REPORTED_ERRORS: usize = 100;
/// The longest NDJSON line or CSV record accepted, in bytes; longer ones are
/// line errors, read past without being held in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The most CSV columns accepted.
const MAX_FIELDS: usize = 64;
/// The source recorded for subscriptions whose line names none.
pub const DEFAULT_SOURCE: &str = "import";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Members,
    Affinities,
    Subscriptions,
}

impl ImportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportKind::Members => "members",
            ImportKind::Affinities => "affinities",
            ImportKind::Subscriptions => "subscriptions",
        }
    }

    /// Every column or field, required ones first.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            ImportKind::Members => MemberInput::COLUMNS,
            ImportKind::Affinities => AffinityInput::COLUMNS,
            ImportKind::Subscriptions => SubscriptionInput::COLUMNS,
        }
    }

    pub fn required_columns(self) -> &'static [&'static str] {
        match self {
            ImportKind::Members => MemberInput::REQUIRED,
            ImportKind::Affinities => AffinityInput::REQUIRED,
            ImportKind::Subscriptions => SubscriptionInput::REQUIRED,
        }
    }
}

impl fmt::Display for ImportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "members" => Ok(ImportKind::Members),
            "affinities" => Ok(ImportKind::Affinities),
            "subscriptions" => Ok(ImportKind::Subscriptions),
            other => Err(format!(
                "{other:?} cannot be imported; use members, affinities or subscriptions"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

impl ImportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Ndjson => "ndjson",
            ImportFormat::Csv => "csv",
        }
    }

    /// The format a file name's extension names (`.ndjson`, `.jsonl`, `.csv`).
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" => Some(ImportFormat::Ndjson),
            "csv" => Some(ImportFormat::Csv),
            _ => None,
        }
    }

    /// The format a media type names (`application/x-ndjson`, `text/csv`),
    /// parameters such as `; charset=utf-8` ignored.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(ImportFormat::Ndjson)
            }
            "text/csv" => Some(ImportFormat::Csv),
            _ => None,
        }
    }
}

impl FromStr for ImportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ndjson" => Ok(ImportFormat::Ndjson),
            "csv" => Ok(ImportFormat::Csv),
            other => Err(format!("format {other:?} is unknown; use ndjson or csv")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub kind: ImportKind,
    pub format: ImportFormat,
    /// Store the good lines even when some are bad.
    pub skip_invalid: bool,
    /// Where the spool file goes (default: the system's temporary folder).
    /// It is deleted when the import ends, crash included (it is unlinked
    /// as soon as it is created).
    pub spool_dir: Option<PathBuf>,
}

impl ImportOptions {
    pub fn new(kind: ImportKind, format: ImportFormat) -> Self {
        Self {
            kind,
            format,
            skip_invalid: false,
            spool_dir: None,
        }
    }
}

/// Where an import is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportProgress {
    /// Data lines read and checked (good and bad).
    pub validated: u64,
    /// Of those, the bad ones.
    pub invalid: u64,
    /// Rows written to the store.
    pub applied: u64,
}

/// One bad line: its 1-based line number in the input (for CSV, the line
/// its record starts on; the header is line 1), the field at fault when
/// there is one, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "line {}: {field}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImportReport {
    /// Data lines read (blank NDJSON lines and the CSV header not counted).
    pub rows: u64,
    /// Rows written to the store: 0 when a line was bad and `skip_invalid`
    /// was off.
    pub applied: u64,
    /// Bad lines, in input order, at most [`MAX_REPORTED_ERRORS`].
    pub invalid: Vec<LineError>,
    /// Bad lines beyond those reported.
    pub truncated_errors: u64,
}

impl ImportReport {
    /// Every bad line, reported or not.
    pub fn invalid_rows(&self) -> u64 {
        self.invalid.len() as u64 + self.truncated_errors
    }

    fn add_error(&mut self, error: LineError) {
        if self.invalid.len() < MAX_REPORTED_ERRORS {
            self.invalid.push(error);
        } else {
            self.truncated_errors += 1;
        }
    }
}

/// What stops an import as a whole (a bad line does not).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The CSV header is missing, names an unknown column, repeats one or
    /// lacks a required one. Nothing was stored.
    #[error("CSV header: {0}")]
    Header(String),
    /// The input could not be read (a broken connection, a body over the
    /// size limit). Nothing was stored.
    #[error("cannot read the import: {0}")]
    Read(std::io::Error),
    /// The spool file could not be written or read back.
    #[error("import spool file: {0}")]
    Spool(std::io::Error),
    /// The store failed; during the apply pass, earlier batches stay applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Imports `input` into `store`, calling `progress` after every batch.
///
/// Returns the report once every good line is stored, or, when a line was
/// bad and `options.skip_invalid` is off, once the whole input is checked,
/// with nothing stored.
pub async fn import<R>(
    store: &Store,
    input: R,
    options: &ImportOptions,
    progress: impl FnMut(ImportProgress) + Send,
) -> Result<ImportReport, ImportError>
where
    R: AsyncRead + Unpin + Send,
{
    match options.kind {
        ImportKind::Members => run::<MemberInput, R>(store, input, options, progress).await,
        ImportKind::Affinities => run::<AffinityInput, R>(store, input, options, progress).await,
        ImportKind::Subscriptions => {
            run::<SubscriptionInput, R>(store, input, options, progress).await
        }
    }
}

async fn run<T: ImportRow, R: AsyncRead + Unpin + Send>(
    store: &Store,
    input: R,
    options: &ImportOptions,
    mut progress: impl FnMut(ImportProgress) + Send,
) -> Result<ImportReport, ImportError> {
    let mut lines = Lines::open(
        BufReader::with_capacity(64 * 1024, input),
        options.format,
        T::COLUMNS,
        T::REQUIRED,
    )
    .await?;
    let mut spool = Spool::create(options.spool_dir.clone()).await?;
    let mut report = ImportReport::default();
    let mut state = ImportProgress::default();
    let mut batch: Vec<(u64, Result<T, LineError>)> = Vec::with_capacity(BATCH_ROWS);
    while let Some((line, fields)) = lines.next().await? {
        report.rows += 1;
        batch.push((
            line,
            fields.and_then(|f| T::from_fields(&f).map_err(|e| e.at(line))),
        ));
        if batch.len() == BATCH_ROWS {
            state.validated += batch.len() as u64;
            check_and_spool(
                store,
                &mut batch,
                &mut report,
                &mut spool,
                options.skip_invalid,
            )
            .await?;
            state.invalid = report.invalid_rows();
            progress(state);
        }
    }
    state.validated += batch.len() as u64;
    check_and_spool(
        store,
        &mut batch,
        &mut report,
        &mut spool,
        options.skip_invalid,
    )
    .await?;
    state.invalid = report.invalid_rows();
    progress(state);

    if report.invalid_rows() > 0 && !options.skip_invalid {
        return Ok(report);
    }
    let mut rows = spool.read_back().await?;
    let mut chunk: Vec<T> = Vec::with_capacity(BATCH_ROWS);
    loop {
        let row = rows.next::<T>().await?;
        let done = row.is_none();
        chunk.extend(row);
        if chunk.len() == BATCH_ROWS || (done && !chunk.is_empty()) {
            T::apply(store, &chunk).await?;
            state.applied += chunk.len() as u64;
            report.applied = state.applied;
            chunk.clear();
            progress(state);
        }
        if done {
            return Ok(report);
        }
    }
}

/// Reports the batch's bad lines in input order (those that did not parse
/// and those naming a missing member or brand) and spools the good ones,
/// unless nothing will be applied anyway.
async fn check_and_spool<T: ImportRow>(
    store: &Store,
    batch: &mut Vec<(u64, Result<T, LineError>)>,
    report: &mut ImportReport,
    spool: &mut Spool,
    skip_invalid: bool,
) -> Result<(), ImportError> {
    let rows: Vec<&T> = batch.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let mut missing = if rows.is_empty() {
        Vec::new()
    } else {
        T::missing_references(store, &rows).await?
    }
    .into_iter();
    for (line, item) in batch.drain(..) {
        match item {
            Err(error) => report.add_error(error),
            Ok(row) => match missing.next().flatten() {
                Some(error) => report.add_error(error.at(line)),
                None if skip_invalid || report.invalid_rows() == 0 => spool.write(&row).await?,
                None => {}
            },
        }
    }
    Ok(())
}

/// A problem with one field of a line, before the line number is known.
#[derive(Debug, Clone)]
pub(crate) struct FieldError {
    field: Option<String>,
    message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    fn line(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    fn at(self, line: u64) -> LineError {
        LineError {
            line,
            field: self.field,
            message: self.message,
        }
    }
}

/// A row kind an import can carry.
#[async_trait]
trait ImportRow: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    const COLUMNS: &'static [&'static str];
    const REQUIRED: &'static [&'static str];

    fn from_fields(fields: &Fields) -> Result<Self, FieldError>;

    /// For each row of the batch, the reference it names that does not
    /// exist, if any; checked with one query per kind of reference.
    async fn missing_references(
        store: &Store,
        rows: &[&Self],
    ) -> Result<Vec<Option<FieldError>>, StoreError>;

    async fn apply(store: &Store, rows: &[Self]) -> Result<u64, StoreError>;
}

fn parsed<T>(
    field: &str,
    result: Result<T, herald_core::catalog::InvalidValue>,
) -> Result<T, FieldError> {
    result.map_err(|e| FieldError::new(field, e.message()))
}

fn optional_name(fields: &Fields, field: &str) -> Result<Option<String>, FieldError> {
    match fields.text(field)? {
        Some(name) => {
            parsed(field, check_text(field, name, MAX_MEMBER_NAME_CHARS))?;
            Ok(Some(name.to_owned()))
        }
        None => Ok(None),
    }
}

#[async_trait]
impl ImportRow for MemberInput {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "email",
        "name",
        "first_name",
        "locale",
        "time_zone",
        "status",
        "customer_id",
    ];
    const REQUIRED: &'static [&'static str] = &["id", "email"];

    fn from_fields(fields: &Fields) -> Result<Self, FieldError> {
        Ok(MemberInput {
            id: parsed("id", MemberId::parse(fields.required_text("id")?))?,
            email: parsed("email", EmailAddress::parse(fields.required_text("email")?))?,
            name: optional_name(fields, "name")?,
            first_name: optional_name(fields, "first_name")?,
            locale: fields
                .text("locale")?
                .map(|v| parsed("locale", Locale::parse(v)))
                .transpose()?,
            time_zone: fields
                .text("time_zone")?
                .map(|v| parsed("time_zone", TimeZone::parse(v)))
                .transpose()?,
            status: fields
                .text("status")?
                .map(|v| parsed("status", MemberStatus::parse(v)))
                .transpose()?
                .unwrap_or_default(),
            customer_id: fields
                .text("customer_id")?
                .map(|v| parsed("customer_id", CustomerId::parse(v)))
                .transpose()?,
        })
    }

    async fn missing_references(
        _store: &Store,
        rows: &[&Self],
    ) -> Result<Vec<Option<FieldError>>, StoreError> {
        Ok(vec![None; rows.len()])
    }

    async fn apply(store: &Store, rows: &[Self]) -> Result<u64, StoreError> {
        store.members().upsert_batch(rows).await
    }
}

async fn unknown_members(
    store: &Store,
    ids: impl Iterator<Item = &str>,
) -> Result<HashSet<String>, StoreError> {
    let ids: HashSet<&str> = ids.collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let known = store.members().existing(&ids).await?;
    Ok(ids
        .into_iter()
        .filter(|id| !known.contains(*id))
        .map(str::to_owned)
        .collect())
}

#[async_trait]
impl ImportRow for AffinityInput {
    const COLUMNS: &'static [&'static str] = &["member_id", "brand_id", "score"];
    const REQUIRED: &'static [&'static str] = &["member_id", "brand_id", "score"];

    fn from_fields(fields: &Fields) -> Result<Self, FieldError> {
        Ok(AffinityInput {
            member_id: parsed(
                "member_id",
                MemberId::parse(fields.required_text("member_id")?),
            )?,
            brand_id: parsed(
                "brand_id",
                BrandId::parse(fields.required_text("brand_id")?),
            )?,
            score: parsed(
                "score",
                AffinityScore::new(fields.required_number("score")?),
            )?,
        })
    }

    async fn missing_references(
        store: &Store,
        rows: &[&Self],
    ) -> Result<Vec<Option<FieldError>>, StoreError> {
        let members = unknown_members(store, rows.iter().map(|a| a.member_id.as_str())).await?;
        let brand_ids: HashSet<&str> = rows.iter().map(|a| a.brand_id.as_str()).collect();
        let brand_ids: Vec<&str> = brand_ids.into_iter().collect();
        let brands = store.catalog().existing_brands(&brand_ids).await?;
        Ok(rows
            .iter()
            .map(|a| {
                if members.contains(a.member_id.as_str()) {
                    Some(FieldError::new(
                        "member_id",
                        format!("member {} does not exist", a.member_id),
                    ))
                } else if !brands.contains(a.brand_id.as_str()) {
                    Some(FieldError::new(
                        "brand_id",
                        format!("brand {} does not exist", a.brand_id),
                    ))
                } else {
                    None
                }
            })
            .collect())
    }

    async fn apply(store: &Store, rows: &[Self]) -> Result<u64, StoreError> {
        store.members().set_affinities_batch(rows).await
    }
}

#[async_trait]
impl ImportRow for SubscriptionInput {
    const COLUMNS: &'static [&'static str] = &["member_id", "subscribed", "email_type", "source"];
    const REQUIRED: &'static [&'static str] = &["member_id", "subscribed"];

    fn from_fields(fields: &Fields) -> Result<Self, FieldError> {
        Ok(SubscriptionInput {
            member_id: parsed(
                "member_id",
                MemberId::parse(fields.required_text("member_id")?),
            )?,
            subscribed: fields.required_bool("subscribed")?,
            email_type: fields
                .text("email_type")?
                .map(|v| parsed("email_type", EmailType::parse(v)))
                .transpose()?
                .unwrap_or_else(EmailType::brand_alerts),
            source: parsed(
                "source",
                Source::parse(fields.text("source")?.unwrap_or(DEFAULT_SOURCE)),
            )?,
        })
    }

    async fn missing_references(
        store: &Store,
        rows: &[&Self],
    ) -> Result<Vec<Option<FieldError>>, StoreError> {
        let members = unknown_members(store, rows.iter().map(|s| s.member_id.as_str())).await?;
        Ok(rows
            .iter()
            .map(|s| {
                members.contains(s.member_id.as_str()).then(|| {
                    FieldError::new(
                        "member_id",
                        format!("member {} does not exist", s.member_id),
                    )
                })
            })
            .collect())
    }

    async fn apply(store: &Store, rows: &[Self]) -> Result<u64, StoreError> {
        store.members().set_subscriptions_batch(rows).await
    }
}

/// The fields of one line, from either format.
pub(crate) enum Fields<'a> {
    Csv {
        header: &'a [usize],
        columns: &'static [&'static str],
        cells: Vec<String>,
    },
    Json(serde_json::Map<String, serde_json::Value>),
}

impl Fields<'_> {
    /// A text value; an empty one is absent.
    fn text(&self, field: &str) -> Result<Option<&str>, FieldError> {
        match self {
            Fields::Csv { .. } => Ok(self.cell(field)),
            Fields::Json(map) => match map.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
                Some(other) => Err(FieldError::new(
                    field,
                    format!("must be a string, not {}", json_kind(other)),
                )),
            },
        }
    }

    fn required_text(&self, field: &str) -> Result<&str, FieldError> {
        self.text(field)?
            .ok_or_else(|| FieldError::new(field, "is required"))
    }

    fn required_number(&self, field: &str) -> Result<f64, FieldError> {
        match self {
            Fields::Csv { .. } => {
                let text = self
                    .cell(field)
                    .ok_or_else(|| FieldError::new(field, "is required"))?;
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| FieldError::new(field, format!("{text:?} is not a number")))
            }
            Fields::Json(map) => match map.get(field) {
                None | Some(serde_json::Value::Null) => Err(FieldError::new(field, "is required")),
                Some(serde_json::Value::Number(n)) => n
                    .as_f64()
                    .ok_or_else(|| FieldError::new(field, "is not a representable number")),
                Some(other) => Err(FieldError::new(
                    field,
                    format!("must be a number, not {}", json_kind(other)),
                )),
            },
        }
    }

    fn required_bool(&self, field: &str) -> Result<bool, FieldError> {
        match self {
            Fields::Csv { .. } => {
                let text = self
                    .cell(field)
                    .ok_or_else(|| FieldError::new(field, "is required"))?;
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(FieldError::new(
                        field,
                        format!("{text:?} is not true or false"),
                    )),
                }
            }
            Fields::Json(map) => match map.get(field) {
                None | Some(serde_json::Value::Null) => Err(FieldError::new(field, "is required")),
                Some(serde_json::Value::Bool(b)) => Ok(*b),
                Some(other) => Err(FieldError::new(
                    field,
                    format!("must be true or false, not {}", json_kind(other)),
                )),
            },
        }
    }

    fn cell(&self, field: &str) -> Option<&str> {
        let Fields::Csv {
            header,
            columns,
            cells,
        } = self
        else {
            return None;
        };
        let column = columns.iter().position(|c| *c == field)?;
        let index = header.iter().position(|c| *c == column)?;
        cells.get(index).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The data lines of the input, each with its line number, as fields or as
/// the reason it could not be read.
struct Lines<R> {
    input: R,
    format: LineFormat,
    columns: &'static [&'static str],
    /// The next physical line number.
    line: u64,
    buf: Vec<u8>,
}

enum LineFormat {
    Ndjson,
    Csv {
        /// Boxed: the parser's tables are large and there is one per import.
        reader: Box<csv_core::Reader>,
        /// For each header cell, the index of its column in `columns`.
        header: Vec<usize>,
        ends: Vec<usize>,
    },
}

type LineItem<'a> = (u64, Result<Fields<'a>, LineError>);

impl<R: AsyncBufRead + Unpin + Send> Lines<R> {
    async fn open(
        input: R,
        format: ImportFormat,
        columns: &'static [&'static str],
        required: &'static [&'static str],
    ) -> Result<Self, ImportError> {
        let mut lines = Lines {
            input,
            format: match format {
                ImportFormat::Ndjson => LineFormat::Ndjson,
                ImportFormat::Csv => LineFormat::Csv {
                    reader: Box::new(csv_core::Reader::new()),
                    header: Vec::new(),
                    ends: vec![0; MAX_FIELDS],
                },
            },
            columns,
            line: 1,
            buf: Vec::new(),
        };
        if matches!(format, ImportFormat::Csv) {
            lines.read_header(required).await?;
        }
        Ok(lines)
    }

    async fn read_header(&mut self, required: &[&str]) -> Result<(), ImportError> {
        let (_, record) = self.csv_record().await?.ok_or_else(|| {
            ImportError::Header("the input is empty; the first line must name the columns".into())
        })?;
        let cells = record.map_err(|e| ImportError::Header(e.message))?;
        let mut header = Vec::with_capacity(cells.len());
        for cell in &cells {
            let name = cell.trim();
            let column = self
                .columns
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| {
                    ImportError::Header(format!(
                        "column {name:?} is unknown; the columns are {}",
                        self.columns.join(", ")
                    ))
                })?;
            if header.contains(&column) {
                return Err(ImportError::Header(format!(
                    "column {name:?} appears twice"
                )));
            }
            header.push(column);
        }
        for name in required {
            let column = self
                .columns
                .iter()
                .position(|c| c == name)
                .unwrap_or(usize::MAX);
            if !header.contains(&column) {
                return Err(ImportError::Header(format!(
                    "the required column {name:?} is missing (required: {})",
                    required.join(", ")
                )));
            }
        }
        if let LineFormat::Csv { header: h, .. } = &mut self.format {
            *h = header;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Option<LineItem<'_>>, ImportError> {
        match self.format {
            LineFormat::Ndjson => self.ndjson_line().await,
            LineFormat::Csv { .. } => {
                let Some((line, record)) = self.csv_record().await? else {
                    return Ok(None);
                };
                let LineFormat::Csv { header, .. } = &self.format else {
                    return Ok(None);
                };
                let item = record.and_then(|cells| {
                    if cells.len() == header.len() {
                        Ok(Fields::Csv {
                            header,
                            columns: self.columns,
                            cells,
                        })
                    } else {
                        Err(FieldError::line(format!(
                            "has {} fields; the header has {}",
                            cells.len(),
                            header.len()
                        ))
                        .at(line))
                    }
                });
                Ok(Some((line, item)))
            }
        }
    }

    /// The next non-blank NDJSON line.
    async fn ndjson_line(&mut self) -> Result<Option<LineItem<'_>>, ImportError> {
        loop {
            let line = self.line;
            let Some(too_long) = self.read_line().await? else {
                return Ok(None);
            };
            self.line += 1;
            if too_long {
                return Ok(Some((line, Err(too_long_error(line)))));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = match serde_json::from_slice::<serde_json::Value>(&self.buf) {
                Ok(serde_json::Value::Object(map)) => {
                    match map.keys().find(|k| !self.columns.contains(&k.as_str())) {
                        Some(unknown) => Err(FieldError::new(
                            unknown,
                            format!(
                                "is not a field of this import; the fields are {}",
                                self.columns.join(", ")
                            ),
                        )
                        .at(line)),
                        None => Ok(Fields::Json(map)),
                    }
                }
                Ok(other) => Err(FieldError::line(format!(
                    "must be a JSON object, not {}",
                    json_kind(&other)
                ))
                .at(line)),
                Err(e) => Err(FieldError::line(format!(
                    "is not valid JSON: {}",
                    strip_position(&e.to_string())
                ))
                .at(line)),
            };
            return Ok(Some((line, parsed)));
        }
    }

    /// Reads one line into `buf` (without its `\n`), keeping at most
    /// [`MAX_LINE_BYTES`]; `Some(true)` when it was longer. `None` at the end.
    async fn read_line(&mut self) -> Result<Option<bool>, ImportError> {
        self.buf.clear();
        let mut too_long = false;
        let mut read_any = false;
        loop {
            let available = self.input.fill_buf().await.map_err(ImportError::Read)?;
            if available.is_empty() {
                return Ok(read_any.then_some(too_long));
            }
            read_any = true;
            let (chunk, found_end) = match memchr(b'\n', available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buf.len());
            if chunk.len() > room {
                too_long = true;
            }
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let consumed = found_end.unwrap_or(available.len());
            self.input.consume(consumed);
            if found_end.is_some() {
                return Ok(Some(too_long));
            }
        }
    }

    /// The next CSV record with the line it starts on.
    async fn csv_record(
        &mut self,
    ) -> Result<Option<(u64, Result<Vec<String>, LineError>)>, ImportError> {
        let LineFormat::Csv { reader, ends, .. } = &mut self.format else {
            return Ok(None);
        };
        self.buf.clear();
        self.buf.resize(4096, 0);
        let mut out_len = 0;
        let mut ends_len = 0;
        let mut too_long = false;
        let mut too_many_fields = false;
        let mut newlines_in_record = 0u64;
        loop {
            let available = self.input.fill_buf().await.map_err(ImportError::Read)?;
            let at_end = available.is_empty();
            let (result, read, written, ended) =
                reader.read_record(available, &mut self.buf[out_len..], &mut ends[ends_len..]);
            newlines_in_record += bytecount(b'\n', &self.buf[out_len..out_len + written]);
            let consumed = read;
            self.input.consume(consumed);
            out_len += written;
            ends_len += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    if self.buf.len() >= MAX_LINE_BYTES {
                        // Keep reading the record, overwriting what is held.
                        too_long = true;
                        out_len = 0;
                    } else {
                        let grown = (self.buf.len() * 2).min(MAX_LINE_BYTES);
                        self.buf.resize(grown, 0);
                    }
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    too_many_fields = true;
                    ends_len = 0;
                }
                csv_core::ReadRecordResult::End => return Ok(None),
                csv_core::ReadRecordResult::Record => {
                    // After a terminator the reader's line count is already
                    // on the next line; at the end of input it is not.
                    let end_line = if at_end {
                        reader.line()
                    } else {
                        reader.line() - 1
                    };
                    let line = end_line.saturating_sub(newlines_in_record).max(1);
                    self.line = reader.line();
                    let record = if too_long {
                        Err(too_long_error(line))
                    } else if too_many_fields {
                        Err(FieldError::line(format!("has more than {MAX_FIELDS} fields")).at(line))
                    } else {
                        split_record(&self.buf[..out_len], &ends[..ends_len])
                            .map_err(|e| e.at(line))
                    };
                    return Ok(Some((line, record)));
                }
            }
        }
    }
}

fn too_long_error(line: u64) -> LineError {
    FieldError::line(format!("is longer than {MAX_LINE_BYTES} bytes")).at(line)
}

fn split_record(data: &[u8], ends: &[usize]) -> Result<Vec<String>, FieldError> {
    let mut start = 0;
    let mut cells = Vec::with_capacity(ends.len());
    for &end in ends {
        let cell = std::str::from_utf8(&data[start..end])
            .map_err(|_| FieldError::line("is not valid UTF-8"))?;
        cells.push(cell.to_owned());
        start = end;
    }
    Ok(cells)
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

fn bytecount(needle: u8, haystack: &[u8]) -> u64 {
    haystack.iter().filter(|b| **b == needle).count() as u64
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// The validated rows waiting for the apply pass, one JSON value a line.
struct Spool {
    writer: tokio::io::BufWriter<tokio::fs::File>,
}

impl Spool {
    async fn create(dir: Option<PathBuf>) -> Result<Self, ImportError> {
        let file = tokio::task::spawn_blocking(move || match dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        })
        .await
        .map_err(|e| ImportError::Spool(std::io::Error::other(e)))?
        .map_err(ImportError::Spool)?;
        Ok(Self {
            writer: tokio::io::BufWriter::with_capacity(
                256 * 1024,
                tokio::fs::File::from_std(file),
            ),
        })
    }

    async fn write<T: Serialize>(&mut self, row: &T) -> Result<(), ImportError> {
        let mut line = serde_json::to_vec(row).map_err(|e| ImportError::Spool(e.into()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(ImportError::Spool)
    }

    async fn read_back(mut self) -> Result<SpoolReader, ImportError> {
        self.writer.flush().await.map_err(ImportError::Spool)?;
        let mut file = self.writer.into_inner();
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(ImportError::Spool)?;
        Ok(SpoolReader {
            lines: BufReader::with_capacity(256 * 1024, file).lines(),
        })
    }
}

struct SpoolReader {
    lines: tokio::io::Lines<BufReader<tokio::fs::File>>,
}

impl SpoolReader {
    async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ImportError> {
        let Some(line) = self.lines.next_line().await.map_err(ImportError::Spool)? else {
            return Ok(None);
        };
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ImportError::Spool(e.into()))
    }
}
