//! Running one attempt of a task: a shell command in its own process group,
//! or an HTTP call. Built-in jobs are in [`crate::builtin`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How an attempt ended, as the engine records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    pub exit_status: Option<i64>,
    pub error: Option<String>,
    /// The end of the attempt's output, at most the capped size.
    pub log_tail: String,
}

impl Outcome {
    pub fn succeeded(log_tail: String) -> Self {
        Self {
            success: true,
            exit_status: None,
            error: None,
            log_tail,
        }
    }

    pub fn failed(error: impl Into<String>, log_tail: String) -> Self {
        Self {
            success: false,
            exit_status: None,
            error: Some(error.into()),
            log_tail,
        }
    }
}

/// What a task is told about the run it belongs to.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    /// The run's token for `POST /api/runs/{run}/tasks/{task}/success`.
    pub run_token: String,
}

/// Keeps the last `cap` bytes of everything written to it, whatever the
/// total: a task printing gigabytes costs at most twice `cap` in memory.
#[derive(Debug)]
pub struct TailBuffer {
    bytes: Vec<u8>,
    cap: usize,
    total: u64,
}

impl TailBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            total: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.cap * 2 {
            let cut = self.bytes.len() - self.cap;
            self.bytes.drain(..cut);
        }
    }

    /// The kept tail as text, with a note of how much was dropped before it.
    pub fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(self.cap);
        let tail = String::from_utf8_lossy(&self.bytes[start..]);
        let dropped = self.total - (self.bytes.len() - start) as u64;
        if dropped > 0 {
            format!("[{dropped} earlier bytes not kept]\n{tail}")
        } else {
            tail.into_owned()
        }
    }
}

/// Runs `command` with only `env` (plus the run's variables) in a new
/// process group. On `cancel` the whole group is killed, so children the
/// command started die with it.
pub async fn run_shell(
    command: &[String],
    env: &BTreeMap<String, String>,
    working_dir: Option<&str>,
    context: &TaskContext,
    log_cap: usize,
    cancel: CancellationToken,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::failed("no command", String::new());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .env("HERALD_RUN_ID", &context.run_id)
        .env("HERALD_TASK", &context.task)
        .env("HERALD_ATTEMPT", context.attempt.to_string())
        .env("HERALD_RUN_TOKEN", &context.run_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = working_dir {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::failed(format!("cannot start {program:?}: {e}"), String::new()),
    };
    let group = child.id();
    let tail = Arc::new(Mutex::new(TailBuffer::new(log_cap)));
    let readers = [
        child.stdout.take().map(|r| drain(r, tail.clone())),
        child.stderr.take().map(|r| drain(r, tail.clone())),
    ];
    let status = tokio::select! {
        status = child.wait() => Some(status),
        () = cancel.cancelled() => None,
    };
    let status = match status {
        Some(status) => status,
        None => {
            if let Some(group) = group {
                kill_group(group).await;
            }
            let _ = child.wait().await;
            for reader in readers.into_iter().flatten() {
                reader.abort();
            }
            let log = tail.lock().map(|t| t.text()).unwrap_or_default();
            return Outcome::failed("stopped", log);
        }
    };
    // The pipes close when every process holding them has exited; a
    // background child still holding one is killed with the group.
    if let Some(group) = group {
        kill_group(group).await;
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.await;
    }
    let log = tail.lock().map(|t| t.text()).unwrap_or_default();
    match status {
        Ok(status) if status.success() => Outcome {
            exit_status: Some(0),
            ..Outcome::succeeded(log)
        },
        Ok(status) => Outcome {
            success: false,
            exit_status: status.code().map(i64::from),
            error: Some(format!("{program:?} ended with {status}")),
            log_tail: log,
        },
        Err(e) => Outcome::failed(format!("cannot wait for {program:?}: {e}"), log),
    }
}

fn drain(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<TailBuffer>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = tail.lock() {
                t.push(&chunk[..n]);
            }
        }
    })
}

/// SIGKILL to every process of the group; `kill(1)` keeps this crate free
/// of unsafe code.
async fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// One HTTP call; success is the expected status. The run's id and token
/// go along as headers so the callee can report success itself.
#[allow(clippy::too_many_arguments)]
pub async fn run_http(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&str>,
    expected_status: u16,
    context: &TaskContext,
    log_cap: usize,
    cancel: CancellationToken,
) -> Outcome {
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(e) => return Outcome::failed(format!("method {method:?}: {e}"), String::new()),
    };
    let mut request = client
        .request(method, url)
        .header("Herald-Run-Id", &context.run_id)
        .header("Herald-Task", &context.task)
        .header("Herald-Run-Token", &context.run_token);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let call = async {
        let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let mut tail = TailBuffer::new(log_cap);
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
        {
            tail.push(&chunk);
        }
        Ok::<_, String>((status, tail.text()))
    };
    tokio::select! {
        () = cancel.cancelled() => Outcome::failed("stopped", String::new()),
        result = call => match result {
            Ok((status, log)) if status.as_u16() == expected_status => Outcome {
                exit_status: Some(i64::from(status.as_u16())),
                ..Outcome::succeeded(log)
            },
            Ok((status, log)) => Outcome {
                success: false,
                exit_status: Some(i64::from(status.as_u16())),
                error: Some(format!("{url} answered {status}; expected {expected_status}")),
                log_tail: log,
            },
            Err(e) => Outcome::failed(e, String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_buffer_keeps_the_end() {
        let mut t = TailBuffer::new(4);
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        for _ in 0..1000 {
            t.push(b"0123456789");
        }
        t.push(b"wxyz");
        assert_eq!(t.text(), "[10003 earlier bytes not kept]\nwxyz");
        assert!(t.bytes.len() <= 8);
    }
}
