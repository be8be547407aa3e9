//! A local stand-in for an email provider's HTTP API: records every request,
//! checks it against the provider's documented shape (a `Validator`), and
//! answers the way the provider does. Replies queued with `script` are
//! returned first, one per request, for error cases.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Captured {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Whether an error is the one a scripted reply should produce.
pub type Expect = fn(&herald_mail::SendError) -> bool;

/// Checks one request; its reply. `n` counts requests from 1.
pub type Validator = fn(n: usize, headers: &HeaderMap, body: &Value) -> Reply;

struct Shared {
    captured: Mutex<Vec<Captured>>,
    scripted: Mutex<VecDeque<Reply>>,
    validator: Validator,
}

pub struct MockProvider {
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl MockProvider {
    pub async fn start(validator: Validator) -> Self {
        let shared = Arc::new(Shared {
            captured: Mutex::new(Vec::new()),
            scripted: Mutex::new(VecDeque::new()),
            validator,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}"),
            shared,
            server,
        }
    }

    pub fn script(&self, reply: Reply) {
        self.shared.scripted.lock().unwrap().push_back(reply);
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.shared.captured.lock().unwrap().clone()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, format!("body is not JSON: {err}")).into_response()
        }
    };
    let n = {
        let mut captured = shared.captured.lock().unwrap();
        captured.push(Captured {
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body: parsed.clone(),
        });
        captured.len()
    };
    let scripted = shared.scripted.lock().unwrap().pop_front();
    let reply = scripted.unwrap_or_else(|| (shared.validator)(n, &headers, &parsed));
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
