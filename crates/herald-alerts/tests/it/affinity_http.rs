//! The HTTP Affinity API as the audience source, against a local server
//! that pages, times out and fails on request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_alerts::affinity::{AffinityClient, AffinityError, AffinityReader, MemberBrands};
use herald_alerts::{
    AffinitySettings, AudienceError, AudienceSettings, BuildOutcome, EmailJob,
    HttpAffinitySettings, Step, EMAIL_QUEUE,
};
use herald_core::alert::AlertState;
use herald_core::catalog::MemberStatus;
use tokio_util::sync::CancellationToken;

use crate::support::TestEnv;

alerts_suite!(
    an_http_audience_is_paged_grouped_and_classified,
    a_resumed_http_build_asks_for_members_after_its_cursor,
    an_affinity_api_that_keeps_failing_leaves_the_build_for_later,
);

#[derive(Debug, Clone)]
enum ApiFault {
    /// Answer only after this long (longer than the client's timeout).
    Sleep(Duration),
    Status(u16),
    Body(&'static str),
}

#[derive(Default)]
struct AffinityApi {
    /// (member, brand, score), ordered by member.
    items: Vec<(String, String, f64)>,
    /// Faults by request number (0-based).
    faults: Mutex<HashMap<usize, ApiFault>>,
    /// A fault every request meets, when set.
    always: Mutex<Option<ApiFault>>,
    requests: Mutex<Vec<ApiRequest>>,
}

/// A request's query parameters and its `Authorization` header.
type ApiRequest = (BTreeMap<String, String>, Option<String>);

impl AffinityApi {
    fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(q, _)| q.clone())
            .collect()
    }
}

async fn affinities(
    State(api): State<Arc<AffinityApi>>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let number = {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut requests = api.requests.lock().unwrap();
        requests.push((query.clone(), auth));
        requests.len() - 1
    };
    let fault = api
        .faults
        .lock()
        .unwrap()
        .remove(&number)
        .or_else(|| api.always.lock().unwrap().clone());
    match fault {
        Some(ApiFault::Sleep(d)) => tokio::time::sleep(d).await,
        Some(ApiFault::Status(code)) => {
            return (StatusCode::from_u16(code).unwrap(), "affinity API trouble").into_response()
        }
        Some(ApiFault::Body(body)) => return body.into_response(),
        None => {}
    }
    let brands: Vec<&str> = query["brands"].split(',').collect();
    let min_score: f64 = query["min_score"].parse().unwrap();
    let limit: usize = query["limit"].parse().unwrap();
    // Keyset pagination: the cursor is the last (member, brand) returned.
    let cursor = query.get("cursor").map(|c| {
        let (member, brand) = c.split_once('/').unwrap();
        (member.to_owned(), brand.to_owned())
    });
    let matching: Vec<_> = api
        .items
        .iter()
        .filter(|(m, b, s)| {
            brands.contains(&b.as_str())
                && *s >= min_score
                && query.get("after").is_none_or(|after| m > after)
                && cursor.as_ref().is_none_or(|(cm, cb)| (m, b) > (cm, cb))
        })
        .collect();
    let page: Vec<_> = matching.iter().take(limit).collect();
    let next_cursor = (matching.len() > limit)
        .then(|| page.last().map(|(m, b, _)| format!("{m}/{b}")))
        .flatten();
    let items: Vec<_> = page
        .iter()
        .map(|(m, b, s)| serde_json::json!({"member_id": m, "brand_id": b, "score": s}))
        .collect();
    axum::Json(serde_json::json!({"items": items, "next_cursor": next_cursor})).into_response()
}

/// Serves `api` on a free local port; returns its URL.
async fn serve(api: Arc<AffinityApi>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/affinities", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/v1/affinities", axum::routing::get(affinities))
        .with_state(api);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn http_source(url: &str) -> HttpAffinitySettings {
    HttpAffinitySettings {
        page_size: 2,
        timeout: Duration::from_millis(300),
        retries: 2,
        retry_backoff: Duration::from_millis(10),
        bearer_token: Some("sekret".to_owned().into()),
        ..HttpAffinitySettings::new(url)
    }
}

fn audience(url: &str) -> AudienceSettings {
    AudienceSettings {
        batch_size: 2,
        affinity: AffinitySettings::Http(http_source(url)),
        ..AudienceSettings::default()
    }
}

fn item(member: &str, brand: &str, score: f64) -> (String, String, f64) {
    (member.to_owned(), brand.to_owned(), score)
}

/// The store's side: h01-h06 (h04 unsubscribed, h06 inactive); the API
/// also knows h00, whom the store does not.
async fn seed(env: &TestEnv) -> (String, Arc<AffinityApi>) {
    env.brand("acme", "Acme").await;
    env.brand("globex", "Globex").await;
    let sales = vec![
        env.sale("acme", "Acme spring").await,
        env.sale("globex", "Globex weekend").await,
    ];
    for id in ["h01", "h02", "h03", "h04", "h05"] {
        env.member(id, Some("Pat")).await;
    }
    env.member_with("h06", "h06@example.com", None, MemberStatus::Inactive)
        .await;
    env.unsubscribe("h04").await;
    let template = env.standard_template().await;
    let alert = env.alert(&template, &sales, 0.5).await;
    let api = Arc::new(AffinityApi {
        items: vec![
            item("h00", "acme", 0.9),
            item("h01", "acme", 0.9),
            item("h01", "globex", 0.8),
            item("h02", "acme", 0.6),
            item("h03", "acme", 0.4),
            item("h04", "globex", 0.9),
            item("h05", "acme", 0.9),
            item("h05", "initech", 0.9),
            item("h06", "acme", 0.9),
        ],
        ..AffinityApi::default()
    });
    (alert.id, api)
}

async fn enqueued(env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let mut jobs = BTreeMap::new();
    for message in env.queue_messages(EMAIL_QUEUE).await {
        let job = EmailJob::parse(&message.body).unwrap();
        assert!(
            jobs.insert(job.member_id.clone(), job.brand_ids).is_none(),
            "{} enqueued twice",
            job.member_id
        );
    }
    jobs
}

fn expected_audience() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        (
            "h01".to_owned(),
            vec!["acme".to_owned(), "globex".to_owned()],
        ),
        ("h02".to_owned(), vec!["acme".to_owned()]),
        ("h05".to_owned(), vec!["acme".to_owned()]),
    ])
}

async fn an_http_audience_is_paged_grouped_and_classified(env: TestEnv) {
    let (alert_id, api) = seed(&env).await;
    // The second request times out and its retry meets a 500; the next
    // retry succeeds.
    api.faults.lock().unwrap().extend([
        (1, ApiFault::Sleep(Duration::from_secs(3))),
        (2, ApiFault::Status(500)),
    ]);
    let url = serve(api.clone()).await;
    let outcome = env
        .audience_job(audience(&url))
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    let BuildOutcome::Finished(alert) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(alert.build.audience_size, Some(3));
    assert_eq!(alert.build.excluded_unsubscribed, 1);
    // h01's rows came on two pages; one entry lists both brands.
    assert_eq!(enqueued(&env).await, expected_audience());

    let requests = api.requests();
    // 4 pages of 2 (the API drops h03's low score), plus two retries.
    assert_eq!(requests.len(), 6, "{requests:#?}");
    let first = &requests[0];
    assert_eq!(first["brands"], "acme,globex");
    assert_eq!(first["min_score"], "0.5");
    assert_eq!(first["limit"], "2");
    assert!(!first.contains_key("after") && !first.contains_key("cursor"));
    assert_eq!(
        requests[1].get("cursor").map(String::as_str),
        Some("h01/acme")
    );
    assert_eq!(requests[1], requests[2], "a retry repeats the request");
    assert_eq!(requests[2], requests[3]);
    let auth = api.requests.lock().unwrap()[0].1.clone();
    assert_eq!(auth.as_deref(), Some("Bearer sekret"));
}

async fn a_resumed_http_build_asks_for_members_after_its_cursor(env: TestEnv) {
    let (alert_id, api) = seed(&env).await;
    let url = serve(api.clone()).await;
    let job = env.audience_job(audience(&url));
    let mut build = job.open(&alert_id).await.unwrap().unwrap();
    let Step::Batch(step) = build.step().await.unwrap() else {
        panic!("a batch")
    };
    // h00 is unknown to the store but still moves the cursor.
    assert_eq!((step.cursor.as_str(), step.enqueued), ("h01", 1));
    drop(build);
    let seen = api.requests().len();

    let outcome = env
        .audience_job(audience(&url))
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Finished(_)), "{outcome:?}");
    let resumed = &api.requests()[seen];
    assert_eq!(resumed.get("after").map(String::as_str), Some("h01"));
    assert!(!resumed.contains_key("cursor"));
    assert_eq!(enqueued(&env).await, expected_audience());
}

async fn an_affinity_api_that_keeps_failing_leaves_the_build_for_later(env: TestEnv) {
    let (alert_id, api) = seed(&env).await;
    let url = serve(api.clone()).await;
    let job = env.audience_job(audience(&url));

    *api.always.lock().unwrap() = Some(ApiFault::Status(503));
    let err = job
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AudienceError::Affinity(AffinityError::Status {
                status: 503,
                attempts: 3,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(api.requests().len(), 3, "one request and two retries");
    assert_eq!(env.get_alert(&alert_id).await.state, AlertState::Building);

    *api.always.lock().unwrap() = Some(ApiFault::Status(400));
    let err = job
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AudienceError::Affinity(AffinityError::Status {
                status: 400,
                attempts: 1,
                ..
            })
        ),
        "a client error is not retried: {err}"
    );
    assert_eq!(api.requests().len(), 4);

    *api.always.lock().unwrap() = None;
    let outcome = job
        .build(&alert_id, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Finished(_)), "{outcome:?}");
    assert_eq!(enqueued(&env).await, expected_audience());
}

fn reader(url: &str) -> AffinityReader {
    let client = AffinityClient::new(HttpAffinitySettings {
        retries: 0,
        ..http_source(url)
    })
    .unwrap();
    AffinityReader::new(client, vec!["acme".into(), "globex".into()], 0.5, None)
}

async fn read_all(reader: &mut AffinityReader) -> Result<Vec<MemberBrands>, AffinityError> {
    let mut all = Vec::new();
    loop {
        let batch = reader.next_batch(3).await?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

#[tokio::test]
async fn unusable_answers_fail_with_a_reason() {
    for (body, needle) in [
        ("{\"items\": [", "invalid JSON"),
        ("{\"items\": 5}", "invalid JSON"),
        (
            r#"{"items": [{"member_id": "b", "brand_id": "acme", "score": 1}, {"member_id": "a", "brand_id": "acme", "score": 1}]}"#,
            "not ordered by member_id",
        ),
        (
            r#"{"items": [{"member_id": "a", "brand_id": "acme", "score": 1}], "next_cursor": null}"#,
            "",
        ),
    ] {
        let api = Arc::new(AffinityApi::default());
        *api.always.lock().unwrap() = Some(ApiFault::Body(body));
        let url = serve(api).await;
        let result = read_all(&mut reader(&url)).await;
        match (needle, result) {
            ("", Ok(members)) => assert_eq!(members.len(), 1),
            (needle, Err(e)) if !needle.is_empty() => {
                assert!(e.to_string().contains(needle), "{body}: {e}")
            }
            (_, other) => panic!("{body}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_cursor_that_does_not_move_is_refused() {
    let api = Arc::new(AffinityApi::default());
    *api.always.lock().unwrap() = Some(ApiFault::Body(r#"{"items": [], "next_cursor": "same"}"#));
    let url = serve(api.clone()).await;
    let err = read_all(&mut reader(&url)).await.unwrap_err();
    assert!(err.to_string().contains("repeats the cursor"), "{err}");
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn an_unreachable_api_is_reported_after_the_retries() {
    // Bound and dropped at once: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = AffinityClient::new(http_source(&format!("http://127.0.0.1:{port}/x"))).unwrap();
    let err = client
        .page(&["acme".into()], 0.5, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AffinityError::Request { attempts: 3, .. }),
        "{err}"
    );
}
