//! The driver protocol of `docs/client-conformance.md` over the Rust client: commands in as JSON
//! lines, the client's events out as JSON lines.
//!
//! `main.rs` runs it on stdin and stdout; `tests/client_conformance.rs` includes this file and
//! runs it in-process over pipes, on a runtime of its own, so both run the same code.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use simpleio::client::{Client, ConnectionError, EmitError, Event, MessageKind};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What the harness gives an adapter when it starts it (the protocol's environment variables).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SIMPLEIO_URL`: the route's URL.
    pub url: String,
    /// `SIMPLEIO_USER`: sent as `x-user` on every request.
    pub user: String,
    /// `SIMPLEIO_BACKOFF_BASE_MS` and `SIMPLEIO_BACKOFF_MAX_MS`, if given.
    pub backoff: Option<(Duration, Duration)>,
}

impl Settings {
    /// Reads the settings through `var` (such as `std::env::var(name).ok()`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let required = |name: &str| var(name).ok_or_else(|| format!("{name} is not set"));
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            var(name)
                .map(|v| {
                    v.parse()
                        .map(Duration::from_millis)
                        .map_err(|e| format!("{name}={v}: {e}"))
                })
                .transpose()
        };
        let base = millis("SIMPLEIO_BACKOFF_BASE_MS")?;
        let max = millis("SIMPLEIO_BACKOFF_MAX_MS")?;
        // One given alone keeps the client's default for the other, within the one given.
        let backoff = match (base, max) {
            (None, None) => None,
            (base, max) => {
                let max = max.unwrap_or(Duration::from_secs(30).max(base.unwrap_or_default()));
                Some((base.unwrap_or(Duration::from_millis(500).min(max)), max))
            }
        };
        Ok(Settings {
            url: required("SIMPLEIO_URL")?,
            user: required("SIMPLEIO_USER")?,
            backoff,
        })
    }
}

/// One command line.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    Emit {
        tag: Value,
        event: String,
        #[serde(default)]
        data: Value,
        #[serde(default)]
        ns: Option<String>,
    },
    Close,
}

/// Runs one client until `close` or the end of `commands`, writing its events to `out`. The last
/// line written is `{"type":"closed"}`.
pub async fn drive<R, W>(settings: Settings, commands: R, out: W) -> Result<(), String>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (lines, to_write) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(write_lines(to_write, out));

    let mut builder = Client::builder(&settings.url).header("x-user", &settings.user);
    if let Some((base, max)) = settings.backoff {
        builder = builder.backoff(base, max);
    }
    let (client, mut events) = builder.connect().map_err(|e| e.to_string())?;
    let _ = lines.send(json!({"type": "client_id", "id": client.id()}));

    let reporter = {
        let lines = lines.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                for line in describe(event) {
                    let _ = lines.send(line);
                }
            }
        })
    };

    let mut emits = JoinSet::new();
    let mut input = commands.lines();
    loop {
        let line = match input.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(format!("reading commands: {e}")),
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Command>(&line) {
            Ok(Command::Emit {
                tag,
                event,
                data,
                ns,
            }) => {
                let handle = ns.map_or_else(|| client.clone(), |ns| client.of(ns));
                let mut emitting = handle.emit(event, &data);
                // Polled once here, which puts the message in the outbox, before the next command
                // is read: emits keep their order, and those read together can share a POST.
                let first = poll_fn(|cx| Poll::Ready(emitting.poll_unpin(cx))).await;
                let lines = lines.clone();
                emits.spawn(async move {
                    let outcome = match first {
                        Poll::Ready(outcome) => outcome,
                        Poll::Pending => emitting.await,
                    };
                    let _ = lines.send(ack(tag, outcome));
                });
            }
            Ok(Command::Close) => break,
            Err(e) => {
                let _ = lines
                    .send(json!({"type": "bad_command", "line": line, "reason": e.to_string()}));
            }
        }
    }

    // Every emit not yet acknowledged fails with `closed`; then the events end.
    client.close().await;
    while emits.join_next().await.is_some() {}
    let _ = reporter.await;
    let _ = lines.send(json!({"type": "closed"}));
    drop(lines);
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing events: {e}"))
}

/// The protocol's lines for one event of the client.
fn describe(event: Event) -> Vec<Value> {
    match event {
        Event::Message(m) => {
            let pos = match m.kind {
                MessageKind::Stored { pos } => json!(pos),
                _ => Value::Null,
            };
            vec![json!({
                "type": "message",
                "ns": m.namespace,
                "event": m.event,
                "data": m.data,
                "pos": pos,
            })]
        }
        Event::Connected => vec![json!({"type": "connected"})],
        Event::Disconnected(error) => {
            let mut lines = vec![json!({"type": "disconnected", "reason": error.to_string()})];
            if let Some(status) = error.status() {
                let code = match &error {
                    ConnectionError::Rejected { code, .. }
                    | ConnectionError::Server { code, .. } => {
                        json!(code)
                    }
                    _ => Value::Null,
                };
                lines.push(json!({"type": "error", "status": status, "code": code}));
            }
            lines
        }
        Event::Resynced => vec![json!({"type": "resynced"})],
        _ => Vec::new(),
    }
}

/// The line for an emit's outcome.
fn ack(tag: Value, outcome: Result<Value, EmitError>) -> Value {
    match outcome {
        Ok(reply) => json!({"type": "ack", "tag": tag, "reply": reply}),
        Err(error) => {
            let code = match &error {
                EmitError::Ack { code, .. } | EmitError::Rejected { code, .. } => code.clone(),
                EmitError::Unacknowledged { .. } => "unacknowledged".to_owned(),
                EmitError::Closed => "closed".to_owned(),
                _ => "invalid".to_owned(),
            };
            json!({"type": "ack_error", "tag": tag, "code": code, "message": error.to_string()})
        }
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut lines: mpsc::UnboundedReceiver<Value>,
    mut out: W,
) -> std::io::Result<()> {
    while let Some(line) = lines.recv().await {
        let mut text = line.to_string();
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    out.shutdown().await
}
