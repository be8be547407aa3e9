//! The external Affinity API as an audience source.
//!
//! # Contract
//!
//! ```text
//! GET <url>?brands=<id>,<id>&min_score=<number>&limit=<n>[&after=<member id>][&cursor=<next_cursor>]
//! Authorization: Bearer <token>            (when `bearer_token` is configured)
//!
//! 200 {"items": [{"member_id": "m1", "brand_id": "acme", "score": 0.82}, ...],
//!      "next_cursor": "opaque" | null}
//! ```
//!
//! - `items` are the affinities of at least `min_score` for the listed
//!   brands, **ordered by `member_id`** (byte order), at most `limit` of
//!   them. A member's rows are adjacent; they may be split across two pages.
//! - `after` (sent when a build resumes) asks for members whose id sorts
//!   after it; `cursor` continues from the previous page's `next_cursor`.
//!   A missing or `null` `next_cursor` ends the listing.
//! - Brand ids must not contain commas.
//! - Timeouts, connection errors, `429` and `5xx` are retried (`retries`
//!   times, the delay doubling from `retry_backoff`, or the `Retry-After`
//!   seconds when given); any other status fails the batch, which the
//!   audience job tries again at its next poll.
//!
//! Herald checks what it receives: items out of member order, a cursor that
//! does not move, a body over [`MAX_PAGE_BYTES`] or malformed JSON fail the
//! batch; items for other brands, under the threshold or at or before
//! `after` are ignored.

use std::collections::VecDeque;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::settings::HttpAffinitySettings;

/// Largest response body accepted for one page.
pub const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Longest retry delay, whatever the doubling or the server asks for.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("affinity API request failed after {attempts} attempt(s): {message}")]
    Request { attempts: u32, message: String },
    #[error("affinity API answered {status} after {attempts} attempt(s): {body}")]
    Status {
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error("affinity API answer is not usable: {0}")]
    Malformed(String),
    #[error(
        "brand id {0:?} contains a comma, which the affinity API's brands parameter cannot carry"
    )]
    BadBrandId(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AffinityItem {
    pub member_id: String,
    pub brand_id: String,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AffinityPage {
    pub items: Vec<AffinityItem>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A member and the alert's brands their affinity reaches the threshold
/// for, in the alert's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberBrands {
    pub member_id: String,
    pub brand_ids: Vec<String>,
}

/// One page request at a time, with timeouts and retries.
#[derive(Debug, Clone)]
pub struct AffinityClient {
    http: reqwest::Client,
    settings: HttpAffinitySettings,
}

/// Which page to ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageQuery<'a> {
    pub after: Option<&'a str>,
    pub cursor: Option<&'a str>,
}

enum Attempt {
    Retry {
        message: String,
        after: Option<Duration>,
        status: Option<u16>,
        body: String,
    },
    Fail(AffinityError),
}

impl AffinityClient {
    pub fn new(settings: HttpAffinitySettings) -> Result<Self, AffinityError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| AffinityError::Request {
                attempts: 0,
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { http, settings })
    }

    pub fn page_size(&self) -> u32 {
        self.settings.page_size
    }

    /// One page, retrying what is worth retrying.
    pub async fn page(
        &self,
        brands: &[String],
        min_score: f64,
        query: PageQuery<'_>,
    ) -> Result<AffinityPage, AffinityError> {
        if let Some(bad) = brands.iter().find(|b| b.contains(',')) {
            return Err(AffinityError::BadBrandId(bad.clone()));
        }
        let mut attempts = 0;
        let mut delay = self.settings.retry_backoff;
        loop {
            attempts += 1;
            let (message, after, status, body) = match self.attempt(brands, min_score, query).await
            {
                Ok(page) => return Ok(page),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry {
                    message,
                    after,
                    status,
                    body,
                }) => (message, after, status, body),
            };
            if attempts > self.settings.retries {
                return Err(match status {
                    Some(status) => AffinityError::Status {
                        status,
                        attempts,
                        body,
                    },
                    None => AffinityError::Request { attempts, message },
                });
            }
            let wait = after.unwrap_or(delay).min(MAX_RETRY_DELAY);
            tracing::warn!(attempt = attempts, ?wait, reason = %message, "affinity API request failed; retrying");
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
        }
    }

    async fn attempt(
        &self,
        brands: &[String],
        min_score: f64,
        query: PageQuery<'_>,
    ) -> Result<AffinityPage, Attempt> {
        let mut params = vec![
            ("brands", brands.join(",")),
            ("min_score", min_score.to_string()),
            ("limit", self.settings.page_size.to_string()),
        ];
        if let Some(after) = query.after {
            params.push(("after", after.to_owned()));
        }
        if let Some(cursor) = query.cursor {
            params.push(("cursor", cursor.to_owned()));
        }
        let mut request = self.http.get(&self.settings.url).query(&params);
        if let Some(token) = &self.settings.bearer_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let mut response = request.send().await.map_err(|e| Attempt::Retry {
            message: describe(&e),
            after: None,
            status: None,
            body: String::new(),
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_body(&mut response, 500)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let message = format!("status {status}");
            if status.as_u16() == 429 || status.is_server_error() {
                return Err(Attempt::Retry {
                    message,
                    after: retry_after,
                    status: Some(status.as_u16()),
                    body,
                });
            }
            return Err(Attempt::Fail(AffinityError::Status {
                status: status.as_u16(),
                attempts: 1,
                body,
            }));
        }
        let body = match read_body(&mut response, MAX_PAGE_BYTES).await {
            Ok(body) if body.len() > MAX_PAGE_BYTES => {
                return Err(Attempt::Fail(AffinityError::Malformed(format!(
                    "the page is larger than {MAX_PAGE_BYTES} bytes"
                ))))
            }
            Ok(body) => body,
            Err(e) => {
                return Err(Attempt::Retry {
                    message: describe(&e),
                    after: None,
                    status: None,
                    body: String::new(),
                })
            }
        };
        serde_json::from_slice(&body)
            .map_err(|e| Attempt::Fail(AffinityError::Malformed(format!("invalid JSON: {e}"))))
    }
}

/// Reads at most `limit + 1` bytes, so an oversized body shows as longer
/// than `limit` without being held whole.
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = (limit + 1).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() > limit {
            break;
        }
    }
    Ok(body)
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    }
}

/// Streams an alert's audience from the Affinity API: one entry per member
/// with every matching brand, however the pages split a member's rows.
#[derive(Debug)]
pub struct AffinityReader {
    client: AffinityClient,
    brands: Vec<String>,
    min_score: f64,
    /// Members up to this id were handled by an earlier run of the build.
    resume_after: Option<String>,
    next_cursor: Option<String>,
    requested: bool,
    finished: bool,
    /// The member whose rows the last page ended with; the next page may
    /// hold more of them.
    open: Option<MemberBrands>,
    /// The highest member id seen, to check the order.
    last_seen: Option<String>,
    ready: VecDeque<MemberBrands>,
}

impl AffinityReader {
    pub fn new(
        client: AffinityClient,
        brands: Vec<String>,
        min_score: f64,
        resume_after: Option<String>,
    ) -> Self {
        Self {
            client,
            brands,
            min_score,
            resume_after,
            next_cursor: None,
            requested: false,
            finished: false,
            open: None,
            last_seen: None,
            ready: VecDeque::new(),
        }
    }

    /// Up to `max` members; empty once the listing is exhausted.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<MemberBrands>, AffinityError> {
        while self.ready.len() < max && !self.finished {
            let cursor = self.next_cursor.clone();
            let query = PageQuery {
                after: if self.requested {
                    None
                } else {
                    self.resume_after.as_deref()
                },
                cursor: cursor.as_deref(),
            };
            let page = self
                .client
                .page(&self.brands, self.min_score, query)
                .await?;
            self.requested = true;
            if page.next_cursor.is_some() && page.next_cursor == cursor {
                return Err(AffinityError::Malformed(format!(
                    "next_cursor {cursor:?} repeats the cursor asked for"
                )));
            }
            self.take_page(page)?;
        }
        let take = max.min(self.ready.len());
        Ok(self.ready.drain(..take).collect())
    }

    fn take_page(&mut self, page: AffinityPage) -> Result<(), AffinityError> {
        for item in page.items {
            if item.member_id.is_empty() || !item.score.is_finite() {
                return Err(AffinityError::Malformed(format!(
                    "item {item:?} needs a member_id and a finite score"
                )));
            }
            if let Some(last) = &self.last_seen {
                if item.member_id < *last {
                    return Err(AffinityError::Malformed(format!(
                        "items are not ordered by member_id: {:?} came after {last:?}",
                        item.member_id
                    )));
                }
            }
            if self.last_seen.as_ref() != Some(&item.member_id) {
                self.last_seen = Some(item.member_id.clone());
            }
            let already_handled = self
                .resume_after
                .as_ref()
                .is_some_and(|after| item.member_id <= *after);
            if already_handled
                || item.score < self.min_score
                || !self.brands.contains(&item.brand_id)
            {
                continue;
            }
            match &mut self.open {
                Some(open) if open.member_id == item.member_id => {
                    if !open.brand_ids.contains(&item.brand_id) {
                        open.brand_ids.push(item.brand_id);
                    }
                }
                _ => {
                    if let Some(done) = self.open.take() {
                        self.ready.push_back(self.in_alert_order(done));
                    }
                    self.open = Some(MemberBrands {
                        member_id: item.member_id,
                        brand_ids: vec![item.brand_id],
                    });
                }
            }
        }
        self.next_cursor = page.next_cursor;
        if self.next_cursor.is_none() {
            self.finished = true;
            if let Some(done) = self.open.take() {
                self.ready.push_back(self.in_alert_order(done));
            }
        }
        Ok(())
    }

    fn in_alert_order(&self, mut member: MemberBrands) -> MemberBrands {
        member
            .brand_ids
            .sort_by_key(|b| self.brands.iter().position(|x| x == b));
        member
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(resume_after: Option<&str>) -> AffinityReader {
        let client = AffinityClient::new(HttpAffinitySettings::new("http://127.0.0.1:9")).unwrap();
        AffinityReader::new(
            client,
            vec!["acme".into(), "globex".into()],
            0.5,
            resume_after.map(str::to_owned),
        )
    }

    fn item(member: &str, brand: &str, score: f64) -> AffinityItem {
        AffinityItem {
            member_id: member.into(),
            brand_id: brand.into(),
            score,
        }
    }

    fn page(items: Vec<AffinityItem>, next: Option<&str>) -> AffinityPage {
        AffinityPage {
            items,
            next_cursor: next.map(str::to_owned),
        }
    }

    fn drained(r: &mut AffinityReader) -> Vec<(String, Vec<String>)> {
        r.ready
            .drain(..)
            .map(|m| (m.member_id, m.brand_ids))
            .collect()
    }

    fn entry(member: &str, brands: &[&str]) -> (String, Vec<String>) {
        (
            member.into(),
            brands.iter().map(|b| b.to_string()).collect(),
        )
    }

    #[test]
    fn members_split_across_pages_come_out_once_with_brands_in_alert_order() {
        let mut r = reader(None);
        r.take_page(page(
            vec![item("m1", "acme", 0.9), item("m2", "globex", 0.7)],
            Some("c1"),
        ))
        .unwrap();
        // m2 may continue on the next page: held back.
        assert_eq!(drained(&mut r), vec![entry("m1", &["acme"])]);
        r.take_page(page(
            vec![item("m2", "acme", 0.6), item("m3", "acme", 0.8)],
            None,
        ))
        .unwrap();
        assert_eq!(
            drained(&mut r),
            vec![entry("m2", &["acme", "globex"]), entry("m3", &["acme"])]
        );
        assert!(r.finished);
    }

    #[test]
    fn foreign_brands_low_scores_and_handled_members_are_ignored() {
        let mut r = reader(Some("m2"));
        r.take_page(page(
            vec![
                item("m1", "acme", 0.9),
                item("m2", "acme", 0.9),
                item("m3", "initech", 0.9),
                item("m4", "acme", 0.49),
                item("m5", "globex", 0.5),
                item("m5", "globex", 0.5),
            ],
            None,
        ))
        .unwrap();
        assert_eq!(drained(&mut r), vec![entry("m5", &["globex"])]);
    }

    #[test]
    fn disorder_and_bad_items_are_refused() {
        let mut r = reader(None);
        let err = r
            .take_page(page(
                vec![item("m2", "acme", 0.9), item("m1", "acme", 0.9)],
                None,
            ))
            .unwrap_err();
        assert!(err.to_string().contains("not ordered"), "{err}");

        let mut r = reader(None);
        r.take_page(page(vec![item("m5", "acme", 0.9)], Some("c")))
            .unwrap();
        let err = r
            .take_page(page(vec![item("m4", "acme", 0.9)], None))
            .unwrap_err();
        assert!(
            err.to_string().contains("\"m4\" came after \"m5\""),
            "{err}"
        );

        for bad in [item("", "acme", 0.9), item("m1", "acme", f64::NAN)] {
            let err = reader(None).take_page(page(vec![bad], None)).unwrap_err();
            assert!(err.to_string().contains("finite score"), "{err}");
        }
    }

    #[tokio::test]
    async fn brand_ids_with_commas_are_refused_before_any_request() {
        let client = AffinityClient::new(HttpAffinitySettings::new("http://127.0.0.1:9")).unwrap();
        let err = client
            .page(&["a,b".to_owned()], 0.5, PageQuery::default())
            .await
            .unwrap_err();
        assert!(matches!(err, AffinityError::BadBrandId(_)), "{err}");
    }
}
