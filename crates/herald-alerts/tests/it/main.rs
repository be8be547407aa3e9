//! The herald-alerts suite: every case runs on SQLite and on PostgreSQL (see
//! `support` for how each test gets a fresh store and bus).

#[macro_use]
mod support;

mod affinity_http;
mod audience;
mod compose;
mod end_to_end;
mod mailer;
