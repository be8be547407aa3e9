//! The audience data: members (keyed by the CRM's own ids), their brand
//! affinities, their subscriptions per email type, the suppression list and
//! the cadence policy.
//!
//! - A member without a subscription row for an email type is subscribed:
//!   members arrive from a CRM that holds their consent, and opting out is
//!   what gets recorded.
//! - Suppressions are keyed by the normalized (trimmed, lower-cased)
//!   address. Suppressing an address again keeps the first `since` and
//!   takes the latest reason, source and detail.
//! - Deleting a member deletes their affinities and subscriptions.
//!
//! Bulk loads go through [`import`], which streams NDJSON or CSV into the
//! batch methods below.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::{
    check_text, normalize_email, AffinityScore, BrandId, CustomerId, EmailAddress, EmailType,
    Locale, MemberId, MemberStatus, Source, SuppressionReason, TimeZone,
};
use herald_core::{Clock, Timestamp};

use crate::page::{Page, PageRequest};
use crate::StoreError;

pub mod import;
pub(crate) mod postgres;
pub(crate) mod sqlite;

/// The longest member name or first name, in characters.
pub const MAX_MEMBER_NAME_CHARS: usize = 200;
/// The longest suppression detail, in characters; longer details (a whole
/// SMTP transcript, say) are cut to this.
pub const MAX_DETAIL_CHARS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub email: String,
    /// Trimmed and lower-cased: what suppressions match on.
    pub email_normalized: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    pub status: MemberStatus,
    /// The key provider events are routed by; `None` means the member id.
    pub customer_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A member's whole record, as an upsert or an import line gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInput {
    pub id: MemberId,
    pub email: EmailAddress,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<Locale>,
    pub time_zone: Option<TimeZone>,
    pub status: MemberStatus,
    pub customer_id: Option<CustomerId>,
}

/// A change to a member; `None` leaves a field as it is, `Some(None)`
/// clears an optional one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberPatch {
    pub email: Option<EmailAddress>,
    pub name: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub locale: Option<Option<Locale>>,
    pub time_zone: Option<Option<TimeZone>>,
    pub status: Option<MemberStatus>,
    pub customer_id: Option<Option<CustomerId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberFilter {
    /// Only members with this address (compared normalized).
    pub email: Option<String>,
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub member_id: String,
    pub brand_id: String,
    pub score: f64,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AffinityInput {
    pub member_id: MemberId,
    pub brand_id: BrandId,
    pub score: AffinityScore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub member_id: String,
    pub email_type: String,
    pub subscribed: bool,
    /// Who recorded it (`api`, `import`, `unsubscribe_link`, ...).
    pub source: String,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionInput {
    pub member_id: MemberId,
    pub email_type: EmailType,
    pub subscribed: bool,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Normalized (trimmed, lower-cased).
    pub address: String,
    pub reason: SuppressionReason,
    pub source: String,
    pub detail: Option<String>,
    /// When the address was first suppressed.
    pub since: Timestamp,
}

#[async_trait]
pub trait MemberStore: Send + Sync {
    /// Creates the member or replaces their record; true when created.
    async fn upsert(&self, member: &MemberInput) -> Result<(Member, bool), StoreError>;

    async fn get(&self, id: &str) -> Result<Option<Member>, StoreError>;

    /// The members among `ids` that exist, in no particular order; one
    /// query for many members (the mailer reads a whole batch at once).
    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Member>, StoreError>;

    /// In id order.
    async fn list(&self, filter: &MemberFilter) -> Result<Page<Member>, StoreError>;

    /// Changes an existing member; an unknown id is [`StoreError::NotFound`].
    async fn update(&self, id: &str, patch: &MemberPatch) -> Result<Member, StoreError>;

    /// Deletes the member with their affinities and subscriptions.
    async fn delete(&self, id: &str) -> Result<(), StoreError>;

    /// Upserts many members in one transaction (see [`import`]); a later
    /// entry for the same id wins. Returns how many entries were written.
    async fn upsert_batch(&self, members: &[MemberInput]) -> Result<u64, StoreError>;

    /// Which of `ids` are members.
    async fn existing(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError>;

    /// Sets one affinity. An unknown member is [`StoreError::NotFound`], an
    /// unknown brand [`StoreError::InvalidInput`] on `brand_id`.
    async fn set_affinity(
        &self,
        member_id: &str,
        brand_id: &str,
        score: AffinityScore,
    ) -> Result<Affinity, StoreError>;

    /// A member's affinities in brand id order; empty for an unknown member.
    async fn affinities(&self, member_id: &str) -> Result<Vec<Affinity>, StoreError>;

    async fn delete_affinity(&self, member_id: &str, brand_id: &str) -> Result<(), StoreError>;

    /// Sets many affinities in one transaction; a later entry for the same
    /// member and brand wins. Every member and brand must exist.
    async fn set_affinities_batch(&self, affinities: &[AffinityInput]) -> Result<u64, StoreError>;

    /// Records whether a member gets an email type. An unknown member is
    /// [`StoreError::NotFound`]; an invalid source [`StoreError::InvalidInput`].
    async fn set_subscription(
        &self,
        member_id: &str,
        email_type: &EmailType,
        subscribed: bool,
        source: &str,
    ) -> Result<Subscription, StoreError>;

    /// The recorded subscriptions of a member, by email type. A type
    /// without a row is subscribed.
    async fn subscriptions(&self, member_id: &str) -> Result<Vec<Subscription>, StoreError>;

    /// Sets many subscriptions in one transaction; a later entry for the
    /// same member and email type wins. Every member must exist.
    async fn set_subscriptions_batch(
        &self,
        subscriptions: &[SubscriptionInput],
    ) -> Result<u64, StoreError>;

    /// Suppresses an address (normalized first). Idempotent: a repeat keeps
    /// the first `since` and records the latest reason, source and detail.
    /// A malformed address or source is [`StoreError::InvalidInput`].
    async fn suppress(
        &self,
        address: &str,
        reason: SuppressionReason,
        source: &str,
        detail: Option<&str>,
    ) -> Result<Suppression, StoreError>;

    /// The suppression of an address, compared normalized.
    async fn suppression(&self, address: &str) -> Result<Option<Suppression>, StoreError>;

    /// In address order.
    async fn list_suppressions(&self, page: &PageRequest) -> Result<Page<Suppression>, StoreError>;

    /// Lifts a suppression; [`StoreError::NotFound`] if there is none.
    async fn unsuppress(&self, address: &str) -> Result<(), StoreError>;

    async fn cadence_policy(&self) -> Result<CadencePolicy, StoreError>;

    async fn set_cadence_policy(&self, policy: &CadencePolicy)
        -> Result<CadencePolicy, StoreError>;
}

/// A member as written: validated fields, normalized address, timestamps.
#[derive(Debug, Clone)]
pub(crate) struct MemberRecord {
    pub id: String,
    pub email: String,
    pub email_normalized: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    pub status: &'static str,
    pub customer_id: Option<String>,
}

impl MemberRecord {
    fn from_input(m: &MemberInput) -> Self {
        Self {
            id: m.id.to_string(),
            email: m.email.to_string(),
            email_normalized: m.email.normalized(),
            name: m.name.clone(),
            first_name: m.first_name.clone(),
            locale: m.locale.as_ref().map(ToString::to_string),
            time_zone: m.time_zone.as_ref().map(ToString::to_string),
            status: m.status.as_str(),
            customer_id: m.customer_id.as_ref().map(ToString::to_string),
        }
    }
}

/// The statements one dialect runs; [`Members`] holds the rules, once.
#[async_trait]
pub(crate) trait MemberSql: Send + Sync + 'static {
    const BACKEND: &'static str;

    /// Upserts each record (keeping `created_at` of existing ones) in one
    /// statement; ids must be distinct.
    async fn upsert_members(
        &self,
        records: &[MemberRecord],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn member(&self, id: &str) -> Result<Option<MemberRow>, StoreError>;
    async fn members(
        &self,
        email_normalized: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MemberRow>, StoreError>;
    async fn delete_member(&self, id: &str) -> Result<bool, StoreError>;
    async fn existing_members(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError>;
    async fn members_by_ids(&self, ids: &[&str]) -> Result<Vec<MemberRow>, StoreError>;

    /// Upserts in one transaction; keys must be distinct. A missing member
    /// or brand fails the whole batch with [`StoreError::InvalidInput`].
    async fn upsert_affinities(
        &self,
        rows: &[(&str, &str, f64)],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn affinities(&self, member_id: &str) -> Result<Vec<AffinityRow>, StoreError>;
    async fn delete_affinity(&self, member_id: &str, brand_id: &str) -> Result<bool, StoreError>;

    /// Upserts in one transaction; keys must be distinct. A missing member
    /// fails the whole batch with [`StoreError::InvalidInput`].
    async fn upsert_subscriptions(
        &self,
        rows: &[(&str, &str, bool, &str)],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn subscriptions(&self, member_id: &str) -> Result<Vec<SubscriptionRow>, StoreError>;

    async fn upsert_suppression(
        &self,
        address: &str,
        reason: &str,
        source: &str,
        detail: Option<&str>,
        now: Timestamp,
    ) -> Result<SuppressionRow, StoreError>;
    async fn suppression(&self, address: &str) -> Result<Option<SuppressionRow>, StoreError>;
    async fn suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SuppressionRow>, StoreError>;
    async fn delete_suppression(&self, address: &str) -> Result<bool, StoreError>;

    /// `(max_alerts, window_secs)`.
    async fn cadence(&self) -> Result<(i64, i64), StoreError>;
    async fn set_cadence(
        &self,
        max_alerts: i64,
        window_secs: i64,
        now: Timestamp,
    ) -> Result<(), StoreError>;
}

pub(crate) struct Members<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: MemberSql> Members<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }

    async fn require_member(&self, id: &str) -> Result<(), StoreError> {
        match self.sql.member(id).await? {
            Some(_) => Ok(()),
            None => Err(member_not_found(id)),
        }
    }
}

fn member_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("member {id}"),
    }
}

fn check_name(field: &'static str, name: Option<&String>) -> Result<(), StoreError> {
    match name {
        Some(name) => {
            check_text(field, name, MAX_MEMBER_NAME_CHARS).map_err(|e| StoreError::InvalidInput {
                field,
                message: e.to_string(),
            })
        }
        None => Ok(()),
    }
}

fn check_member(m: &MemberInput) -> Result<(), StoreError> {
    check_name("name", m.name.as_ref())?;
    check_name("first_name", m.first_name.as_ref())
}

/// Keeps the last entry for each key, in the order of those last entries,
/// so one statement never touches a row twice (PostgreSQL refuses that) and
/// a later line of an import wins over an earlier one.
pub(crate) fn last_per_key<'a, T, K: Eq + std::hash::Hash>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| last.get(&key(item)) == Some(i))
        .map(|(_, item)| item)
        .collect()
}

fn cut_detail(detail: &str) -> &str {
    match detail.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => &detail[..end],
        None => detail,
    }
}

#[async_trait]
impl<S: MemberSql> MemberStore for Members<S> {
    async fn upsert(&self, member: &MemberInput) -> Result<(Member, bool), StoreError> {
        check_member(member)?;
        let existed = self.sql.member(member.id.as_str()).await?.is_some();
        self.sql
            .upsert_members(&[MemberRecord::from_input(member)], self.clock.now())
            .await?;
        let stored = self
            .get(member.id.as_str())
            .await?
            .ok_or_else(|| member_not_found(member.id.as_str()))?;
        Ok((stored, !existed))
    }

    async fn get(&self, id: &str) -> Result<Option<Member>, StoreError> {
        self.sql
            .member(id)
            .await?
            .map(|row| row.into_member(S::BACKEND))
            .transpose()
    }

    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Member>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.sql
            .members_by_ids(ids)
            .await?
            .into_iter()
            .map(|row| row.into_member(S::BACKEND))
            .collect()
    }

    async fn list(&self, filter: &MemberFilter) -> Result<Page<Member>, StoreError> {
        let limit = filter.page.effective_limit();
        let email = filter.email.as_deref().map(normalize_email);
        let rows = self
            .sql
            .members(email.as_deref(), filter.page.after.as_deref(), limit + 1)
            .await?
            .into_iter()
            .map(|row| row.into_member(S::BACKEND))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(rows, limit, |m| m.id.clone()))
    }

    async fn update(&self, id: &str, patch: &MemberPatch) -> Result<Member, StoreError> {
        let current = self.get(id).await?.ok_or_else(|| member_not_found(id))?;
        let parse =
            |field: &'static str, e: herald_core::catalog::InvalidValue| StoreError::Corrupt {
                backend: S::BACKEND,
                what: "member",
                message: format!("member {id}: {field}: {e}"),
            };
        let keep_or = |patched: &Option<Option<String>>, current: &Option<String>| {
            patched.clone().unwrap_or_else(|| current.clone())
        };
        let merged = MemberInput {
            id: MemberId::parse(&current.id).map_err(|e| parse("id", e))?,
            email: match &patch.email {
                Some(email) => email.clone(),
                None => EmailAddress::parse(&current.email).map_err(|e| parse("email", e))?,
            },
            name: keep_or(&patch.name, &current.name),
            first_name: keep_or(&patch.first_name, &current.first_name),
            locale: match &patch.locale {
                Some(locale) => locale.clone(),
                None => current
                    .locale
                    .as_deref()
                    .map(Locale::parse)
                    .transpose()
                    .map_err(|e| parse("locale", e))?,
            },
            time_zone: match &patch.time_zone {
                Some(zone) => zone.clone(),
                None => current
                    .time_zone
                    .as_deref()
                    .map(TimeZone::parse)
                    .transpose()
                    .map_err(|e| parse("time_zone", e))?,
            },
            status: patch.status.unwrap_or(current.status),
            customer_id: match &patch.customer_id {
                Some(customer) => customer.clone(),
                None => current
                    .customer_id
                    .as_deref()
                    .map(CustomerId::parse)
                    .transpose()
                    .map_err(|e| parse("customer_id", e))?,
            },
        };
        Ok(self.upsert(&merged).await?.0)
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        if self.sql.delete_member(id).await? {
            Ok(())
        } else {
            Err(member_not_found(id))
        }
    }

    async fn upsert_batch(&self, members: &[MemberInput]) -> Result<u64, StoreError> {
        for member in members {
            check_member(member)?;
        }
        let records: Vec<MemberRecord> = last_per_key(members, |m| m.id.as_str())
            .into_iter()
            .map(MemberRecord::from_input)
            .collect();
        self.sql.upsert_members(&records, self.clock.now()).await?;
        Ok(members.len() as u64)
    }

    async fn existing(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        self.sql.existing_members(ids).await
    }

    async fn set_affinity(
        &self,
        member_id: &str,
        brand_id: &str,
        score: AffinityScore,
    ) -> Result<Affinity, StoreError> {
        self.require_member(member_id).await?;
        let now = self.clock.now();
        self.sql
            .upsert_affinities(&[(member_id, brand_id, score.value())], now)
            .await
            .map_err(|e| match e {
                // The member was there a moment ago, so the brand is missing
                // (or the member went meanwhile, which reads the same way).
                StoreError::InvalidInput { .. } => StoreError::InvalidInput {
                    field: "brand_id",
                    message: format!("brand {brand_id} does not exist"),
                },
                other => other,
            })?;
        Ok(Affinity {
            member_id: member_id.to_owned(),
            brand_id: brand_id.to_owned(),
            score: score.value(),
            updated_at: now,
        })
    }

    async fn affinities(&self, member_id: &str) -> Result<Vec<Affinity>, StoreError> {
        Ok(self
            .sql
            .affinities(member_id)
            .await?
            .into_iter()
            .map(Affinity::from)
            .collect())
    }

    async fn delete_affinity(&self, member_id: &str, brand_id: &str) -> Result<(), StoreError> {
        if self.sql.delete_affinity(member_id, brand_id).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound {
                what: format!("affinity of member {member_id} for brand {brand_id}"),
            })
        }
    }

    async fn set_affinities_batch(&self, affinities: &[AffinityInput]) -> Result<u64, StoreError> {
        let rows: Vec<(&str, &str, f64)> =
            last_per_key(affinities, |a| (a.member_id.as_str(), a.brand_id.as_str()))
                .into_iter()
                .map(|a| (a.member_id.as_str(), a.brand_id.as_str(), a.score.value()))
                .collect();
        self.sql.upsert_affinities(&rows, self.clock.now()).await?;
        Ok(affinities.len() as u64)
    }

    async fn set_subscription(
        &self,
        member_id: &str,
        email_type: &EmailType,
        subscribed: bool,
        source: &str,
    ) -> Result<Subscription, StoreError> {
        let source = Source::parse(source).map_err(|e| StoreError::InvalidInput {
            field: "source",
            message: e.to_string(),
        })?;
        self.require_member(member_id).await?;
        let now = self.clock.now();
        self.sql
            .upsert_subscriptions(
                &[(member_id, email_type.as_str(), subscribed, source.as_str())],
                now,
            )
            .await
            .map_err(|e| match e {
                StoreError::InvalidInput { .. } => member_not_found(member_id),
                other => other,
            })?;
        Ok(Subscription {
            member_id: member_id.to_owned(),
            email_type: email_type.to_string(),
            subscribed,
            source: source.to_string(),
            updated_at: now,
        })
    }

    async fn subscriptions(&self, member_id: &str) -> Result<Vec<Subscription>, StoreError> {
        Ok(self
            .sql
            .subscriptions(member_id)
            .await?
            .into_iter()
            .map(Subscription::from)
            .collect())
    }

    async fn set_subscriptions_batch(
        &self,
        subscriptions: &[SubscriptionInput],
    ) -> Result<u64, StoreError> {
        let rows: Vec<(&str, &str, bool, &str)> = last_per_key(subscriptions, |s| {
            (s.member_id.as_str(), s.email_type.as_str())
        })
        .into_iter()
        .map(|s| {
            (
                s.member_id.as_str(),
                s.email_type.as_str(),
                s.subscribed,
                s.source.as_str(),
            )
        })
        .collect();
        self.sql
            .upsert_subscriptions(&rows, self.clock.now())
            .await?;
        Ok(subscriptions.len() as u64)
    }

    async fn suppress(
        &self,
        address: &str,
        reason: SuppressionReason,
        source: &str,
        detail: Option<&str>,
    ) -> Result<Suppression, StoreError> {
        let address = EmailAddress::parse(address).map_err(|e| StoreError::InvalidInput {
            field: "address",
            message: e.to_string(),
        })?;
        let source = Source::parse(source).map_err(|e| StoreError::InvalidInput {
            field: "source",
            message: e.to_string(),
        })?;
        let detail = detail.map(cut_detail).filter(|d| !d.trim().is_empty());
        self.sql
            .upsert_suppression(
                &address.normalized(),
                reason.as_str(),
                source.as_str(),
                detail,
                self.clock.now(),
            )
            .await?
            .into_suppression(S::BACKEND)
    }

    async fn suppression(&self, address: &str) -> Result<Option<Suppression>, StoreError> {
        self.sql
            .suppression(&normalize_email(address))
            .await?
            .map(|row| row.into_suppression(S::BACKEND))
            .transpose()
    }

    async fn list_suppressions(&self, page: &PageRequest) -> Result<Page<Suppression>, StoreError> {
        let limit = page.effective_limit();
        let rows = self
            .sql
            .suppressions(page.after.as_deref(), limit + 1)
            .await?
            .into_iter()
            .map(|row| row.into_suppression(S::BACKEND))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(rows, limit, |s| s.address.clone()))
    }

    async fn unsuppress(&self, address: &str) -> Result<(), StoreError> {
        let address = normalize_email(address);
        if self.sql.delete_suppression(&address).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound {
                what: format!("suppression of {address}"),
            })
        }
    }

    async fn cadence_policy(&self) -> Result<CadencePolicy, StoreError> {
        let (max_alerts, window_secs) = self.sql.cadence().await?;
        let corrupt = |message: String| StoreError::Corrupt {
            backend: S::BACKEND,
            what: "cadence policy",
            message,
        };
        let max_alerts = u32::try_from(max_alerts).map_err(|e| corrupt(e.to_string()))?;
        let window_secs = u64::try_from(window_secs).map_err(|e| corrupt(e.to_string()))?;
        CadencePolicy::new(max_alerts, Duration::from_secs(window_secs))
            .map_err(|e| corrupt(e.to_string()))
    }

    async fn set_cadence_policy(
        &self,
        policy: &CadencePolicy,
    ) -> Result<CadencePolicy, StoreError> {
        let window_secs = i64::try_from(policy.window().as_secs()).unwrap_or(i64::MAX);
        self.sql
            .set_cadence(
                i64::from(policy.max_alerts()),
                window_secs,
                self.clock.now(),
            )
            .await?;
        Ok(*policy)
    }
}

pub(crate) const MEMBER_COLUMNS: &str = "id, email, email_normalized, name, first_name, locale, \
     time_zone, status, customer_id, created_at, updated_at";
pub(crate) const SUPPRESSION_COLUMNS: &str = "address, reason, source, detail, since";

#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    id: String,
    email: String,
    email_normalized: String,
    name: Option<String>,
    first_name: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
    status: String,
    customer_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl MemberRow {
    fn into_member(self, backend: &'static str) -> Result<Member, StoreError> {
        let status = MemberStatus::parse(&self.status).map_err(|e| StoreError::Corrupt {
            backend,
            what: "member",
            message: format!("member {}: {e}", self.id),
        })?;
        Ok(Member {
            id: self.id,
            email: self.email,
            email_normalized: self.email_normalized,
            name: self.name,
            first_name: self.first_name,
            locale: self.locale,
            time_zone: self.time_zone,
            status,
            customer_id: self.customer_id,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AffinityRow {
    member_id: String,
    brand_id: String,
    score: f64,
    updated_at: i64,
}

impl From<AffinityRow> for Affinity {
    fn from(row: AffinityRow) -> Self {
        Affinity {
            member_id: row.member_id,
            brand_id: row.brand_id,
            score: row.score,
            updated_at: Timestamp(row.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SubscriptionRow {
    member_id: String,
    email_type: String,
    subscribed: bool,
    source: String,
    updated_at: i64,
}

impl From<SubscriptionRow> for Subscription {
    fn from(row: SubscriptionRow) -> Self {
        Subscription {
            member_id: row.member_id,
            email_type: row.email_type,
            subscribed: row.subscribed,
            source: row.source,
            updated_at: Timestamp(row.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SuppressionRow {
    address: String,
    reason: String,
    source: String,
    detail: Option<String>,
    since: i64,
}

impl SuppressionRow {
    fn into_suppression(self, backend: &'static str) -> Result<Suppression, StoreError> {
        let reason = SuppressionReason::parse(&self.reason).map_err(|e| StoreError::Corrupt {
            backend,
            what: "suppression",
            message: format!("suppression of {}: {e}", self.address),
        })?;
        Ok(Suppression {
            address: self.address,
            reason,
            source: self.source,
            detail: self.detail,
            since: Timestamp(self.since),
        })
    }
}

/// A batch refused because a member or brand it names does not exist.
pub(crate) fn missing_reference() -> StoreError {
    StoreError::InvalidInput {
        field: "member_id",
        message: "a member or brand in the batch does not exist".into(),
    }
}
