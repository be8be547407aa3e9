//! A process definition as operators write it (TOML or JSON) and the checks
//! that turn it into a [`ProcessDefinition`] the scheduler can run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cron::{CronError, CronSchedule};
use super::dag;
use super::rules::Backoff;

/// The longest process or task name, in bytes.
pub const MAX_NAME_LEN: usize = 100;
/// Most tasks in one process.
pub const MAX_TASKS: usize = 100;
/// The shortest continuous interval: anything shorter is a busy loop.
pub const MIN_CONTINUOUS_INTERVAL: Duration = Duration::from_secs(1);

/// The jobs Herald runs in-process.
pub const BUILTIN_JOBS: [&str; 4] = [
    "brand-alerts.build-due",
    "holds.expire",
    "queues.redrive",
    "store.prune",
];

/// How a built-in job's argument is written.
#[derive(Clone, Copy)]
enum ArgKind {
    /// A duration as humantime text ("90d", "24h"), longer than zero.
    Duration,
    Text,
    WholeNumber,
}

/// The arguments each built-in job takes; others are refused, so a typo
/// fails when the definition loads instead of being ignored at run time.
fn builtin_args(job: &str) -> &'static [(&'static str, ArgKind)] {
    match job {
        "holds.expire" => &[("max_age", ArgKind::Duration)],
        "queues.redrive" => &[
            ("queue", ArgKind::Text),
            ("to", ArgKind::Text),
            ("limit", ArgKind::WholeNumber),
        ],
        "store.prune" => &[
            ("retention", ArgKind::Duration),
            ("events_retention", ArgKind::Duration),
        ],
        _ => &[],
    }
}

/// When a process runs on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// Only when triggered.
    #[default]
    None,
    /// At every match of a cron expression, read in `time_zone`.
    Cron {
        expression: String,
        #[serde(default = "utc")]
        time_zone: String,
    },
    /// Again `interval` after the last run ended.
    Continuous {
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
}

fn utc() -> String {
    "UTC".to_owned()
}

/// What to do when a run is due while the previous one is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Drop the new run.
    #[default]
    Skip,
    /// Start the new run when the running one ends.
    Wait,
    /// Cancel the running one and start the new one.
    Terminate,
}

/// Which finished runs are announced on the process's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotifyWhen {
    Always,
    /// Every failed run, and a success that follows a failure.
    #[default]
    OnStateChangeAndFailures,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub notify_when: NotifyWhen,
    #[serde(default)]
    pub notify: Vec<ChannelSpec>,
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    #[serde(default = "one")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Stopped and counted as failed past this.
    #[serde(default, with = "humantime_serde::option")]
    pub max_runtime: Option<Duration>,
    /// Finished only when the task calls back with the run's token.
    #[serde(default)]
    pub require_explicit_success: bool,
    pub run: Executable,
}

fn one() -> u32 {
    1
}

/// A task this one waits for: by name, or with `success_required = false`
/// to run whatever that task's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dependency {
    Name(String),
    Full {
        task: String,
        #[serde(default = "yes")]
        success_required: bool,
    },
}

fn yes() -> bool {
    true
}

impl Dependency {
    pub fn task(&self) -> &str {
        match self {
            Dependency::Name(task) | Dependency::Full { task, .. } => task,
        }
    }

    pub fn success_required(&self) -> bool {
        match self {
            Dependency::Name(_) => true,
            Dependency::Full {
                success_required, ..
            } => *success_required,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Executable {
    /// One of [`BUILTIN_JOBS`], with its arguments.
    Builtin {
        job: String,
        #[serde(default)]
        args: BTreeMap<String, serde_json::Value>,
    },
    /// A program and its arguments, run with a clean environment plus `env`.
    Shell {
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        working_dir: Option<String>,
    },
    Http {
        #[serde(default = "get")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default = "ok")]
        expected_status: u16,
    },
}

fn get() -> String {
    "GET".to_owned()
}

fn ok() -> u16 {
    200
}

/// Where a finished run is announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSpec {
    /// A mail through the configured transport (`transport`, else the
    /// default one).
    Email {
        to: Vec<String>,
        #[serde(default)]
        transport: Option<String>,
    },
    /// PagerDuty Events API v2: trigger after `after_failures` failed runs
    /// in a row, resolve on the next success.
    Pagerduty {
        routing_key: String,
        #[serde(default = "one")]
        after_failures: u32,
        /// The Events API endpoint; PagerDuty's own unless set (tests).
        #[serde(default)]
        events_url: Option<String>,
    },
    /// A POST signed with the Standard Webhooks scheme (`whsec_` secret).
    Webhook {
        url: String,
        secret: String,
        #[serde(default)]
        format: WebhookFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"type": "process.run.finished", "timestamp", "data": {...}}`.
    #[default]
    Standard,
    /// `{"text": "..."}`, which Slack incoming webhooks accept.
    Slack,
}

/// A process name: 1 to 100 of `a-z 0-9 - _ .`, starting with a letter or
/// digit, so it fits in a URL path and a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProcessName(String);

impl ProcessName {
    pub fn parse(name: &str) -> Result<ProcessName, String> {
        check_name(name).map(|()| ProcessName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProcessName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ProcessName::parse(&s)
    }
}

impl From<ProcessName> for String {
    fn from(n: ProcessName) -> String {
        n.0
    }
}

impl fmt::Display for ProcessName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(format!(
            "{name:?} may hold only a-z, 0-9, '-', '_' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

/// A definition that is wrong, and the field to blame (`tasks[1].depends_on[0].task`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    pub field: String,
    pub message: String,
}

impl DefinitionError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The schedule of a checked definition.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    None,
    Cron(Box<CronSchedule>),
    Continuous(Duration),
}

/// A definition that passed every check: names, schedule, the task DAG,
/// executables and channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessDefinition {
    pub name: ProcessName,
    pub spec: ProcessSpec,
    pub schedule: Schedule,
}

impl ProcessDefinition {
    pub fn parse(name: &str, spec: ProcessSpec) -> Result<ProcessDefinition, DefinitionError> {
        let name = ProcessName::parse(name).map_err(|m| DefinitionError::new("name", m))?;
        let schedule = match &spec.schedule {
            ScheduleSpec::None => Schedule::None,
            ScheduleSpec::Cron {
                expression,
                time_zone,
            } => Schedule::Cron(Box::new(
                CronSchedule::parse(expression, time_zone).map_err(|e| {
                    let field = match e {
                        CronError::Expression { .. } => "schedule.expression",
                        CronError::TimeZone(_) => "schedule.time_zone",
                    };
                    DefinitionError::new(field, e.to_string())
                })?,
            )),
            ScheduleSpec::Continuous { interval } => {
                if *interval < MIN_CONTINUOUS_INTERVAL {
                    return Err(DefinitionError::new(
                        "schedule.interval",
                        format!("must be at least {MIN_CONTINUOUS_INTERVAL:?}"),
                    ));
                }
                Schedule::Continuous(*interval)
            }
        };
        check_tasks(&spec.tasks)?;
        for (i, channel) in spec.notify.iter().enumerate() {
            check_channel(channel)
                .map_err(|(field, m)| DefinitionError::new(format!("notify[{i}].{field}"), m))?;
        }
        Ok(ProcessDefinition {
            name,
            spec,
            schedule,
        })
    }

    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.spec.tasks.iter().find(|t| t.name == name)
    }
}

fn check_tasks(tasks: &[TaskSpec]) -> Result<(), DefinitionError> {
    if tasks.is_empty() {
        return Err(DefinitionError::new("tasks", "give at least one task"));
    }
    if tasks.len() > MAX_TASKS {
        return Err(DefinitionError::new(
            "tasks",
            format!("{} tasks; the limit is {MAX_TASKS}", tasks.len()),
        ));
    }
    let mut seen = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        check_name(&task.name).map_err(|m| DefinitionError::new(format!("tasks[{i}].name"), m))?;
        if let Some(first) = seen.insert(task.name.as_str(), i) {
            return Err(DefinitionError::new(
                format!("tasks[{i}].name"),
                format!("task {:?} is already tasks[{first}]", task.name),
            ));
        }
        if task.max_attempts == 0 {
            return Err(DefinitionError::new(
                format!("tasks[{i}].max_attempts"),
                "must be at least 1",
            ));
        }
        task.backoff
            .check()
            .map_err(|(field, m)| DefinitionError::new(format!("tasks[{i}].backoff.{field}"), m))?;
        if task.max_runtime.is_some_and(|d| d.is_zero()) {
            return Err(DefinitionError::new(
                format!("tasks[{i}].max_runtime"),
                "must be more than zero",
            ));
        }
        check_executable(&task.run)
            .map_err(|(field, m)| DefinitionError::new(format!("tasks[{i}].run.{field}"), m))?;
    }
    for (i, task) in tasks.iter().enumerate() {
        for (j, dep) in task.depends_on.iter().enumerate() {
            if !seen.contains_key(dep.task()) {
                return Err(DefinitionError::new(
                    format!("tasks[{i}].depends_on[{j}].task"),
                    format!("no task is named {:?}", dep.task()),
                ));
            }
        }
    }
    if let Some(cycle) = dag::find_cycle(tasks) {
        let first = seen[cycle[0].as_str()];
        return Err(DefinitionError::new(
            format!("tasks[{first}].depends_on"),
            format!(
                "tasks depend on each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        ));
    }
    Ok(())
}

type FieldProblem = (&'static str, String);

fn check_builtin_args(
    job: &str,
    args: &BTreeMap<String, serde_json::Value>,
) -> Result<(), FieldProblem> {
    let known = builtin_args(job);
    for (name, value) in args {
        let Some((_, kind)) = known.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            return Err((
                "args",
                format!(
                    "{job} takes no argument {name:?}; it takes: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        let problem = match (kind, value) {
            (ArgKind::Duration, serde_json::Value::String(text)) => {
                match humantime::parse_duration(text) {
                    Ok(d) if d.is_zero() => Some("must be longer than 0s".to_owned()),
                    Ok(_) => None,
                    Err(e) => Some(format!("{text:?}: {e}")),
                }
            }
            (ArgKind::Duration, _) => Some("give a duration such as \"90d\"".to_owned()),
            (ArgKind::Text, serde_json::Value::String(_)) => None,
            (ArgKind::Text, _) => Some("give a string".to_owned()),
            (ArgKind::WholeNumber, v) if v.is_u64() => None,
            (ArgKind::WholeNumber, _) => Some("give a whole number".to_owned()),
        };
        if let Some(problem) = problem {
            return Err(("args", format!("{name}: {problem}")));
        }
    }
    Ok(())
}

fn check_executable(run: &Executable) -> Result<(), FieldProblem> {
    match run {
        Executable::Builtin { job, args } => {
            if !BUILTIN_JOBS.contains(&job.as_str()) {
                return Err((
                    "job",
                    format!(
                        "no built-in job is named {job:?}; known: {}",
                        BUILTIN_JOBS.join(", ")
                    ),
                ));
            }
            check_builtin_args(job, args)?;
        }
        Executable::Shell { command, env, .. } => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(("command", "give the program and its arguments".into()));
            }
            if command.iter().any(|a| a.contains('\0')) {
                return Err(("command", "an argument holds a NUL byte".into()));
            }
            for key in env.keys() {
                let valid = !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !key.as_bytes()[0].is_ascii_digit();
                if !valid {
                    return Err(("env", format!("{key:?} is not a variable name")));
                }
            }
        }
        Executable::Http {
            method,
            url,
            expected_status,
            headers,
            ..
        } => {
            let known = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
            if !known.contains(&method.as_str()) {
                return Err((
                    "method",
                    format!("{method:?} is not one of {}", known.join(", ")),
                ));
            }
            check_http_url(url).map_err(|m| ("url", m))?;
            if !(100..=599).contains(expected_status) {
                return Err(("expected_status", "must be an HTTP status".into()));
            }
            for (name, value) in headers {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                    && !value.bytes().any(|b| b == b'\r' || b == b'\n');
                if !valid {
                    return Err(("headers", format!("{name:?} is not a valid header")));
                }
            }
        }
    }
    Ok(())
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok(())
}

fn check_channel(channel: &ChannelSpec) -> Result<(), FieldProblem> {
    match channel {
        ChannelSpec::Email { to, .. } => {
            if to.is_empty() {
                return Err(("to", "give at least one address".into()));
            }
            if let Some(bad) = to
                .iter()
                .find(|a| !email_address::EmailAddress::is_valid(a))
            {
                return Err(("to", format!("{bad:?} is not an email address")));
            }
        }
        ChannelSpec::Pagerduty {
            routing_key,
            after_failures,
            events_url,
        } => {
            if routing_key.trim().is_empty() {
                return Err(("routing_key", "must not be empty".into()));
            }
            if *after_failures == 0 {
                return Err(("after_failures", "must be at least 1".into()));
            }
            if let Some(url) = events_url {
                check_http_url(url).map_err(|m| ("events_url", m))?;
            }
        }
        ChannelSpec::Webhook { url, secret, .. } => {
            check_http_url(url).map_err(|m| ("url", m))?;
            if secret.strip_prefix("whsec_").is_none_or(str::is_empty) {
                return Err((
                    "secret",
                    "a Standard Webhooks secret starts with whsec_ followed by base64".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> ProcessSpec {
        toml::from_str(toml_text).expect("spec parses")
    }

    fn field_of(toml_text: &str) -> String {
        ProcessDefinition::parse("p", spec(toml_text))
            .expect_err("rejected")
            .field
    }

    const TASK: &str = r#"
[[tasks]]
name = "a"
run = { kind = "shell", command = ["true"] }
"#;

    #[test]
    fn a_full_definition_parses() {
        let d = ProcessDefinition::parse(
            "nightly",
            spec(
                r#"
description = "nightly clean-up"
overlap = "wait"
notify_when = "always"
schedule = { kind = "cron", expression = "30 2 * * *", time_zone = "Europe/Paris" }

[[notify]]
kind = "webhook"
url = "https://hooks.example.com/x"
secret = "whsec_c2VjcmV0"
format = "slack"

[[tasks]]
name = "prune"
max_attempts = 3
backoff = { base = "10s", exponent = 2.0, cap = "5m" }
max_runtime = "10m"
run = { kind = "builtin", job = "store.prune", args = { retention = "30d" } }

[[tasks]]
name = "report"
depends_on = ["prune", { task = "prune", success_required = false }]
require_explicit_success = true
run = { kind = "http", method = "POST", url = "http://127.0.0.1:9/report", body = "{}" }
"#,
            ),
        )
        .unwrap();
        assert!(matches!(d.schedule, Schedule::Cron(_)));
        assert_eq!(d.spec.tasks[0].max_runtime, Some(Duration::from_secs(600)));
        assert!(!d.spec.tasks[1].depends_on[1].success_required());
        assert_eq!(d.task("report").unwrap().run, d.spec.tasks[1].run);
    }

    #[test]
    fn json_round_trips() {
        let s = spec(TASK);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProcessSpec>(&json).unwrap(), s);
    }

    #[test]
    fn wrong_parts_are_named() {
        let cases = [
            (
                format!("schedule = {{ kind = \"cron\", expression = \"61 * * * *\" }}\n{TASK}"),
                "schedule.expression",
            ),
            (
                format!("schedule = {{ kind = \"cron\", expression = \"* * * * *\", time_zone = \"Nowhere/City\" }}\n{TASK}"),
                "schedule.time_zone",
            ),
            (
                format!("schedule = {{ kind = \"continuous\", interval = \"10ms\" }}\n{TASK}"),
                "schedule.interval",
            ),
            ("tasks = []".to_owned(), "tasks"),
            (format!("{TASK}{TASK}"), "tasks[1].name"),
            (
                "[[tasks]]\nname = \"a\"\ndepends_on = [\"zz\"]\nrun = { kind = \"shell\", command = [\"true\"] }".to_owned(),
                "tasks[0].depends_on[0].task",
            ),
            (
                "[[tasks]]\nname = \"a\"\nrun = { kind = \"builtin\", job = \"nope\" }".to_owned(),
                "tasks[0].run.job",
            ),
            (
                "[[tasks]]\nname = \"a\"\nrun = { kind = \"shell\", command = [] }".to_owned(),
                "tasks[0].run.command",
            ),
            (
                "[[tasks]]\nname = \"a\"\nrun = { kind = \"http\", url = \"ftp://x\" }".to_owned(),
                "tasks[0].run.url",
            ),
            (
                "[[tasks]]\nname = \"a\"\nmax_attempts = 0\nrun = { kind = \"shell\", command = [\"true\"] }".to_owned(),
                "tasks[0].max_attempts",
            ),
            (
                "[[tasks]]\nname = \"a\"\nbackoff = { base = \"1s\", exponent = 0.5 }\nrun = { kind = \"shell\", command = [\"true\"] }".to_owned(),
                "tasks[0].backoff.exponent",
            ),
            (
                format!("[[notify]]\nkind = \"webhook\"\nurl = \"https://x.example\"\nsecret = \"plain\"\n{TASK}"),
                "notify[0].secret",
            ),
            (
                format!("[[notify]]\nkind = \"email\"\nto = [\"not-an-address\"]\n{TASK}"),
                "notify[0].to",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(field_of(&text), field, "{text}");
        }
    }

    #[test]
    fn builtin_args_are_checked_when_the_definition_loads() {
        let task = |run: &str| format!("[[tasks]]\nname = \"a\"\nrun = {run}\n");
        let message = |run: &str| {
            let err = ProcessDefinition::parse("p", spec(&task(run))).expect_err("rejected");
            assert_eq!(err.field, "tasks[0].run.args", "{run}");
            err.message
        };
        for run in [
            r#"{ kind = "builtin", job = "holds.expire", args = { max_age = "2h" } }"#,
            r#"{ kind = "builtin", job = "store.prune", args = { retention = "30d", events_retention = "90d" } }"#,
            r#"{ kind = "builtin", job = "queues.redrive", args = { queue = "q.dlq", to = "q", limit = 10 } }"#,
            r#"{ kind = "builtin", job = "brand-alerts.build-due" }"#,
        ] {
            ProcessDefinition::parse("p", spec(&task(run))).expect(run);
        }
        let cases = [
            (r#"{ kind = "builtin", job = "holds.expire", args = { max_age = "soon" } }"#, "max_age: \"soon\""),
            (r#"{ kind = "builtin", job = "holds.expire", args = { max_age = "0s" } }"#, "max_age: must be longer than 0s"),
            (r#"{ kind = "builtin", job = "holds.expire", args = { max_age = 60 } }"#, "max_age: give a duration"),
            (r#"{ kind = "builtin", job = "store.prune", args = { retention_days = "9d" } }"#, "store.prune takes no argument \"retention_days\"; it takes: retention, events_retention"),
            (r#"{ kind = "builtin", job = "queues.redrive", args = { limit = -1 } }"#, "limit: give a whole number"),
            (r#"{ kind = "builtin", job = "brand-alerts.build-due", args = { x = "y" } }"#, "takes: none"),
        ];
        for (run, expected) in cases {
            let got = message(run);
            assert!(got.contains(expected), "{run}: {got}");
        }
    }

    #[test]
    fn a_cycle_is_named_with_its_path() {
        let e = ProcessDefinition::parse(
            "p",
            spec(
                r#"
[[tasks]]
name = "a"
depends_on = ["c"]
run = { kind = "shell", command = ["true"] }
[[tasks]]
name = "b"
depends_on = ["a"]
run = { kind = "shell", command = ["true"] }
[[tasks]]
name = "c"
depends_on = ["b"]
run = { kind = "shell", command = ["true"] }
"#,
            ),
        )
        .unwrap_err();
        assert!(e.field.ends_with(".depends_on"), "{e}");
        assert!(e.message.contains("cycle"), "{e}");
        let self_loop = "[[tasks]]\nname = \"a\"\ndepends_on = [\"a\"]\nrun = { kind = \"shell\", command = [\"true\"] }";
        assert_eq!(field_of(self_loop), "tasks[0].depends_on");
    }

    #[test]
    fn names_are_checked() {
        assert!(ProcessName::parse("brand-alerts").is_ok());
        for bad in ["", "Upper", "-lead", "a/b", "a b", &"x".repeat(101)] {
            assert!(ProcessName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ProcessDefinition::parse("Bad Name", spec(TASK))
                .unwrap_err()
                .field,
            "name"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ProcessSpec>(&format!("overlpa = \"skip\"\n{TASK}")).is_err());
    }
}
