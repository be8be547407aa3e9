//! `/api/queues` over HTTP: a shard reading its queue with a scoped key,
//! per-receipt ack outcomes, the operators' peek, redrive and purge, and
//! every kind of bad, forged or out-of-scope request getting its 4xx. Each
//! case runs on the embedded backend and, when HERALD_TEST_DATABASE_URL is
//! set, on the PostgreSQL store and bus.

mod common;

use std::time::Duration;

use common::{json_of, spawn_app_on, Backend, TestApp};
use herald_bus::{OutgoingMessage, QueueConfig};
use herald_core::QueueName;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SHARD_1: &str = "shard-1.email-events";
const SHARD_2: &str = "shard-2.email-events";

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.unwrap()).await
}

async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(app, key, Method::POST, path, Some(body)).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_default()
}

async fn queue(app: &TestApp, name: &str, max_receives: u32) -> QueueName {
    let name = QueueName::parse(name).unwrap();
    app.bus
        .ensure_queue(
            &name,
            QueueConfig {
                max_receives,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    name
}

async fn send(app: &TestApp, queue: &QueueName, message: OutgoingMessage) -> String {
    app.bus.send(queue, message).await.unwrap().0
}

/// Receives with `key`, asserting success; returns the messages.
async fn receive(app: &TestApp, key: &str, queue: &str, request: Value) -> Vec<Value> {
    let (status, body) = post(app, key, &format!("/api/queues/{queue}/receive"), request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["messages"].as_array().unwrap().clone()
}

fn receipt(message: &Value) -> String {
    message["receipt"].as_str().unwrap().to_owned()
}

async fn shard_key(app: &TestApp, shard: u32) -> String {
    app.key_with(
        &format!("shard {shard} reader"),
        &format!("queues:shard-{shard}."),
    )
    .await
}

async fn stats(app: &TestApp, queue: &str) -> Value {
    let (status, body) = call(
        app,
        &app.admin_key,
        Method::GET,
        &format!("/api/queues/{queue}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn a_shard_reads_acks_nacks_and_extends(app: TestApp) {
    let q = queue(&app, SHARD_1, 5).await;
    let event = r#"{"provider":"sendgrid","type":"delivered","custom_args":{"customer_id":"c-1"},"big":12345678901234567890123}"#;
    let json_id = send(
        &app,
        &q,
        OutgoingMessage::new(event.as_bytes().to_vec()).attribute("type", "delivered"),
    )
    .await;
    let text_id = send(&app, &q, OutgoingMessage::new("not json")).await;
    let binary_id = send(&app, &q, OutgoingMessage::new(vec![0xffu8, 0xfe])).await;
    let key = shard_key(&app, 1).await;

    let messages = receive(&app, &key, SHARD_1, json!({"max": 10})).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    let by_id = |id: &str| messages.iter().find(|m| m["id"] == id).unwrap().clone();
    let json_message = by_id(&json_id);
    assert_eq!(json_message["body_encoding"], "json");
    assert_eq!(json_message["body"]["custom_args"]["customer_id"], "c-1");
    assert_eq!(json_message["attributes"], json!({"type": "delivered"}));
    assert_eq!(json_message["receive_count"], 1);
    assert!(json_message["sent_at"].as_str().unwrap().ends_with('Z'));
    let text_message = by_id(&text_id);
    assert_eq!(
        (&text_message["body"], &text_message["body_encoding"]),
        (&json!("not json"), &json!("text"))
    );
    let binary_message = by_id(&binary_id);
    assert_eq!(
        (&binary_message["body"], &binary_message["body_encoding"]),
        (&json!("//4="), &json!("base64"))
    );
    // JSON bodies come back byte for byte: big numbers are not rounded.
    let raw = app
        .client
        .post(app.url(&format!("/api/queues/{SHARD_1}/peek")))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::METHOD_NOT_ALLOWED);
    let raw = app
        .client
        .get(app.url(&format!("/api/queues/{SHARD_1}/peek?max=10")))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(event), "{raw}");

    let (status, body) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/ack"),
        json!({"receipt": receipt(&json_message)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acked"], 1);
    assert_eq!(body["results"][0]["outcome"], "acked");

    let (status, body) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/nack"),
        json!({"receipt": receipt(&text_message), "delay_seconds": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/extend"),
        json!({"receipt": receipt(&binary_message), "visibility_seconds": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let again = receive(&app, &key, SHARD_1, json!({"max": 10})).await;
    assert_eq!(
        again.len(),
        1,
        "the extended message stays invisible: {again:?}"
    );
    assert_eq!(again[0]["id"], text_id.as_str());
    assert_eq!(again[0]["receive_count"], 2);

    let (status, body) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/ack"),
        json!({"receipts": [receipt(&again[0]), receipt(&binary_message)]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acked"], 2, "{body}");
    let after = stats(&app, SHARD_1).await;
    assert_eq!(
        (&after["visible"], &after["in_flight"], &after["delayed"]),
        (&json!(0), &json!(0), &json!(0)),
        "{after}"
    );
}

async fn ack_reports_every_receipt(app: TestApp) {
    let q = queue(&app, SHARD_1, 5).await;
    send(&app, &q, OutgoingMessage::new("one")).await;
    send(&app, &q, OutgoingMessage::new("two")).await;
    let key = shard_key(&app, 1).await;
    let first = receive(&app, &key, SHARD_1, json!({"max": 2})).await;
    assert_eq!(first.len(), 2);
    // Redeliver the second message: its first receipt is stale from now on.
    let (status, _) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/nack"),
        json!({"receipt": receipt(&first[1])}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let redelivered = receive(&app, &key, SHARD_1, json!({})).await;
    assert_eq!(redelivered.len(), 1);

    let receipts = json!([
        receipt(&first[0]),
        receipt(&first[0]),
        receipt(&first[1]),
        "not-a-receipt",
        receipt(&redelivered[0]),
    ]);
    let (status, body) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/ack"),
        json!({ "receipts": receipts }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["acked", "stale", "stale", "invalid", "acked"]);
    assert_eq!(body["acked"], 2);
    assert!(body["results"][3]["message"]
        .as_str()
        .unwrap()
        .contains("not-a-receipt"));
    assert_eq!(stats(&app, SHARD_1).await["in_flight"], 0);
}

async fn nack_and_extend_refuse_bad_receipts(app: TestApp) {
    let q = queue(&app, SHARD_1, 5).await;
    send(&app, &q, OutgoingMessage::new("m")).await;
    let key = shard_key(&app, 1).await;
    let old = receipt(&receive(&app, &key, SHARD_1, json!({})).await[0]);
    let (status, _) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/nack"),
        json!({ "receipt": old }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let current = receipt(&receive(&app, &key, SHARD_1, json!({})).await[0]);

    for (op, stale, forged) in [
        (
            "nack",
            json!({ "receipt": old }),
            json!({"receipt": "zz.zz"}),
        ),
        (
            "extend",
            json!({"receipt": old, "visibility_seconds": 5}),
            json!({"receipt": "zz.zz", "visibility_seconds": 5}),
        ),
    ] {
        let path = format!("/api/queues/{SHARD_1}/{op}");
        let (status, body) = post(&app, &key, &path, stale).await;
        assert_eq!(status, StatusCode::CONFLICT, "{op}: {body}");
        assert_eq!(code(&body), "stale_receipt");
        let (status, body) = post(&app, &key, &path, forged).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{op}: {body}");
        assert_eq!((code(&body), field(&body)), ("invalid_receipt", "receipt"));
    }
    for (body, bad_field) in [
        (
            json!({"receipt": current, "visibility_seconds": 0}),
            "visibility_seconds",
        ),
        (
            json!({"receipt": current, "visibility_seconds": 43_201}),
            "visibility_seconds",
        ),
        (json!({ "receipt": current }), "visibility_seconds"),
    ] {
        let (status, answer) =
            post(&app, &key, &format!("/api/queues/{SHARD_1}/extend"), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(field(&answer), bad_field);
    }
    let (status, answer) = post(
        &app,
        &key,
        &format!("/api/queues/{SHARD_1}/nack"),
        json!({"receipt": current, "delay_seconds": -1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field(&answer), "delay_seconds");
    // The refusals left the current delivery alone.
    assert_eq!(stats(&app, SHARD_1).await["in_flight"], 1);
}

async fn keys_reach_only_their_queues(app: TestApp) {
    let one = queue(&app, SHARD_1, 5).await;
    let two = queue(&app, SHARD_2, 5).await;
    queue(&app, "shard-10.email-events", 5).await;
    send(&app, &one, OutgoingMessage::new("for shard 1")).await;
    send(&app, &two, OutgoingMessage::new("for shard 2")).await;
    let shard1 = shard_key(&app, 1).await;

    for (op, body) in [
        ("receive", json!({})),
        ("ack", json!({"receipt": "1.0"})),
        ("nack", json!({"receipt": "1.0"})),
        ("extend", json!({"receipt": "1.0", "visibility_seconds": 5})),
    ] {
        let path = format!("/api/queues/{SHARD_2}/{op}");
        let (status, answer) = post(&app, &shard1, &path, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{op}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(SHARD_2), "{op}: {message}");
        for other in [&app.read_key, &app.marketing_key] {
            let (status, _) = post(
                &app,
                other,
                &format!("/api/queues/{SHARD_1}/{op}"),
                body.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{op}");
        }
    }
    // The prefix is `shard-1.`: shard 10's queue is not shard 1's.
    let (status, _) = post(
        &app,
        &shard1,
        "/api/queues/shard-10.email-events/receive",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (method, path) in [
        (Method::GET, format!("/api/queues/{SHARD_2}")),
        (Method::GET, format!("/api/queues/{SHARD_1}/peek")),
        (Method::POST, format!("/api/queues/{SHARD_1}/purge")),
        (Method::POST, format!("/api/queues/{SHARD_1}.dlq/redrive")),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        let (status, answer) = call(&app, &shard1, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }

    // No key, a malformed header, a forged key of the right shape.
    let response = app
        .client
        .post(app.url(&format!("/api/queues/{SHARD_1}/receive")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let forged = format!("hk_{}_{}", "0".repeat(16), "a".repeat(64));
    for key in [forged.as_str(), "shard-1"] {
        let (status, answer) = post(
            &app,
            key,
            &format!("/api/queues/{SHARD_1}/receive"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }

    // A receipt of shard 2's queue does nothing on shard 1's.
    let foreign = receive(&app, &app.admin_key, SHARD_2, json!({})).await;
    let (status, answer) = post(
        &app,
        &shard1,
        &format!("/api/queues/{SHARD_1}/ack"),
        json!({"receipt": receipt(&foreign[0])}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "stale");
    assert_eq!(stats(&app, SHARD_2).await["in_flight"], 1);

    // The shard lists and reads its own queues, and only those.
    let (status, list) = call(&app, &shard1, Method::GET, "/api/queues", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    // Its queues include their dead-letter queues.
    assert_eq!(names, [SHARD_1, "shard-1.email-events.dlq"]);
    let (status, own) = call(
        &app,
        &shard1,
        Method::GET,
        &format!("/api/queues/{SHARD_1}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["visible"], 1);
    let mine = receive(&app, &shard1, SHARD_1, json!({})).await;
    assert_eq!(mine[0]["body"], "for shard 1");
}

async fn bad_requests_are_refused_and_named(app: TestApp) {
    queue(&app, SHARD_1, 5).await;
    let key = shard_key(&app, 1).await;
    let receive_path = format!("/api/queues/{SHARD_1}/receive");
    for (body, bad_field) in [
        (json!({"wait_seconds": 21}), "wait_seconds"),
        (json!({"wait_seconds": -0.5}), "wait_seconds"),
        (json!({"max": 0}), "max"),
        (json!({"max": 1001}), "max"),
        (json!({"max": "ten"}), "max"),
        (json!({"visibility_seconds": 0}), "visibility_seconds"),
        (json!({"visibility_seconds": 1e9}), "visibility_seconds"),
        (json!({"maximum": 3}), "maximum"),
    ] {
        let (status, answer) = post(&app, &key, &receive_path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(field(&answer), bad_field, "{body}: {answer}");
    }
    let (status, answer) = post(&app, &key, "/api/queues/shard-1.nowhere/receive", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = post(&app, &app.admin_key, "/api/queues/a*b/receive", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field(&answer), "name");

    let raw = |content_type: &'static str, body: String| {
        app.client
            .post(app.url(&receive_path))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, answer) =
        json_of(raw("application/json", "{\"max\": ".into()).await.unwrap()).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (status, _) = json_of(raw("text/plain", "{}".into()).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!("{{\"receipts\": [\"{}\"]}}", "r".repeat(100 * 1024));
    let (status, _) = json_of(raw("application/json", huge).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let ack_path = format!("/api/queues/{SHARD_1}/ack");
    let too_many: Vec<String> = (0..1001).map(|i| format!("{i:x}.0")).collect();
    for body in [
        json!({}),
        json!({"receipts": []}),
        json!({"receipt": "1.0", "receipts": ["2.0"]}),
        json!({ "receipts": too_many }),
    ] {
        let (status, answer) = post(&app, &key, &ack_path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(field(&answer), "receipts");
    }
    let (status, answer) = post(
        &app,
        &key,
        "/api/queues/shard-1.nowhere/ack",
        json!({"receipt": "1.0"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/queues/shard-1.nowhere",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn long_poll_returns_when_a_message_arrives(app: TestApp) {
    let q = queue(&app, SHARD_1, 5).await;
    let key = shard_key(&app, 1).await;
    let empty = receive(&app, &key, SHARD_1, json!({"wait_seconds": 0.2})).await;
    assert!(empty.is_empty());
    let waiting = {
        let client = app.client.clone();
        let url = app.url(&format!("/api/queues/{SHARD_1}/receive"));
        let key = key.clone();
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"wait_seconds": 20}))
                .send()
                .await
                .unwrap();
            json_of(response).await
        })
    };
    let id = send(&app, &q, OutgoingMessage::new("{\"late\": true}")).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(19), waiting)
        .await
        .expect("the long poll answers as soon as the message is there")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["messages"][0]["id"], id.as_str());
    assert_eq!(body["messages"][0]["body"], json!({"late": true}));
}

async fn operators_peek_redrive_and_purge(app: TestApp) {
    let q = queue(&app, SHARD_1, 1).await;
    let id = send(&app, &q, OutgoingMessage::new("{\"n\":1}")).await;
    let admin = app.admin_key.clone();
    let first = receive(&app, &admin, SHARD_1, json!({})).await;
    let (status, _) = post(
        &app,
        &admin,
        &format!("/api/queues/{SHARD_1}/nack"),
        json!({"receipt": receipt(&first[0])}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Past max_receives (1): this receive moves it to the dead-letter queue.
    assert!(receive(&app, &admin, SHARD_1, json!({})).await.is_empty());
    let dlq = format!("{SHARD_1}.dlq");
    let view = stats(&app, SHARD_1).await;
    assert_eq!(view["dead_lettered"], 1, "{view}");
    assert_eq!(view["dead_letter_queue"], dlq.as_str());

    let (status, peeked) = call(
        &app,
        &admin,
        Method::GET,
        &format!("/api/queues/{dlq}/peek?max=5"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{peeked}");
    let letter = &peeked["messages"][0];
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["body"], json!({"n": 1}));
    assert_eq!(letter["dead_letter"]["source_queue"], SHARD_1);
    for bad in ["max=0", "max=1001", "max=lots", "maximum=2"] {
        let (status, answer) = call(
            &app,
            &admin,
            Method::GET,
            &format!("/api/queues/{dlq}/peek?{bad}"),
            None,
        )
        .await;
        assert!(status.is_client_error(), "{bad}: {status} {answer}");
    }

    let redrive_path = format!("/api/queues/{dlq}/redrive");
    for (body, bad_field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"to": dlq}), "to"),
        (json!({"to": "no such/queue"}), "to"),
    ] {
        let (status, answer) = post(&app, &admin, &redrive_path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(field(&answer), bad_field);
    }
    let (status, answer) = post(
        &app,
        &admin,
        &format!("/api/queues/{SHARD_1}/redrive"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field(&answer), "to");
    let (status, answer) = post(
        &app,
        &admin,
        &redrive_path,
        json!({"to": "shard-1.missing"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    let (status, moved) = post(&app, &admin, &redrive_path, json!({"limit": 10})).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved, json!({"from": dlq, "to": SHARD_1, "moved": 1}));
    let back = receive(&app, &admin, SHARD_1, json!({})).await;
    assert_eq!(
        back[0]["id"],
        id.as_str(),
        "a redriven message keeps its id"
    );

    send(&app, &q, OutgoingMessage::new("x")).await;
    let (status, purged) = post(
        &app,
        &admin,
        &format!("/api/queues/{SHARD_1}/purge"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{purged}");
    assert_eq!(purged["purged"], 2);
    assert_eq!(stats(&app, SHARD_1).await["visible"], 0);
    let (status, _) = post(
        &app,
        &app.marketing_key,
        &format!("/api/queues/{SHARD_1}/purge"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post(&app, &admin, "/api/queues/shard-1.missing/purge", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, list) = call(&app, &app.read_key, Method::GET, "/api/queues", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&SHARD_1) && names.contains(&dlq.as_str()),
        "{names:?}"
    );
}

async fn openapi_documents_the_queue_api(app: TestApp) {
    let (status, doc) = call(&app, &app.read_key, Method::GET, "/api/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/queues",
        "/api/queues/{name}",
        "/api/queues/{name}/receive",
        "/api/queues/{name}/ack",
        "/api/queues/{name}/nack",
        "/api/queues/{name}/extend",
        "/api/queues/{name}/peek",
        "/api/queues/{name}/redrive",
        "/api/queues/{name}/purge",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let message = &doc["components"]["schemas"]["ReceivedMessage"]["properties"];
    assert!(message["body_encoding"].is_object(), "{message}");
    // Any JSON value: an object, or a string for text and base64 bodies.
    assert!(message["body"].get("type").is_none(), "{message}");
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let app = super::spawn_app_on(super::Backend::Embedded).await.unwrap();
                    super::$case(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(app) = super::spawn_app_on(super::Backend::Postgres).await {
                        super::$case(app).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    a_shard_reads_acks_nacks_and_extends,
    ack_reports_every_receipt,
    nack_and_extend_refuse_bad_receipts,
    keys_reach_only_their_queues,
    bad_requests_are_refused_and_named,
    long_poll_returns_when_a_message_arrives,
    operators_peek_redrive_and_purge,
    openapi_documents_the_queue_api,
);
