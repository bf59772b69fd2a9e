//! A virtual simpleio client (docs/spec.md §3): a handshake `GET` without cursor, then
//! `GET /simpleio?client=ID&cursor=C&epoch=E` in a loop, each confirming the previous answer.
//! Messages are deduplicated by position as the spec says, then checked by sequence number:
//! a tick seen twice is a duplicate, a lower one after a higher one is out of order.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::time::sleep;

use crate::fleet::{ClientCtx, ClientStats, RETRY_PAUSE, client_id};
use crate::http::Conn;
use crate::servers::Tick;

/// The route, the layer's default.
const PATH: &str = "/simpleio";

#[derive(Deserialize)]
struct Answer {
    epoch: String,
    cursor: u64,
    messages: Vec<Message>,
    volatile: Vec<Volatile>,
}

#[derive(Deserialize)]
struct Message {
    pos: u64,
    event: String,
    data: Option<Tick>,
}

#[derive(Deserialize)]
struct Volatile {
    event: String,
    data: Option<Tick>,
}

/// Where the client is in the stream.
#[derive(Default)]
struct Position {
    /// `(epoch, cursor)` of the latest answer; none before the handshake.
    at: Option<(String, u64)>,
}

/// Runs one client until the fleet stops; returns what it saw.
pub async fn run(mut ctx: ClientCtx) -> ClientStats {
    let mut stats = ClientStats::default();
    let id = client_id();
    let user = format!("u{}", ctx.index);
    let mut position = Position::default();
    let mut connected = false;
    'reconnect: loop {
        let mut permit = if connected {
            None
        } else {
            ctx.connect_permit().await
        };
        let mut conn = tokio::select! {
            conn = Conn::connect(ctx.addr) => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    stats.on_error(&e);
                    sleep(RETRY_PAUSE).await;
                    continue 'reconnect;
                }
            },
            _ = ctx.stop.changed() => break 'reconnect,
        };
        loop {
            let query = match &position.at {
                None => format!("{PATH}?client={id}&user={user}"),
                Some((epoch, cursor)) => {
                    format!("{PATH}?client={id}&user={user}&cursor={cursor}&epoch={epoch}")
                }
            };
            let answer = tokio::select! {
                answer = poll(&mut conn, &query) => answer,
                _ = ctx.stop.changed() => break 'reconnect,
            };
            match answer {
                Ok(answer) => {
                    stats.answers += 1;
                    handle(answer, &mut position, &mut stats, &ctx);
                    if !connected {
                        connected = true;
                        permit.take();
                        ctx.progress
                            .connected
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    stats.on_error(&e);
                    sleep(RETRY_PAUSE).await;
                    continue 'reconnect;
                }
            }
        }
    }
    stats
}

async fn poll(conn: &mut Conn, query: &str) -> Result<Answer> {
    let (status, body) = conn.get(query).await?;
    if !status.is_success() {
        bail!("GET answered {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).context("parsing a poll's answer")
}

fn handle(answer: Answer, position: &mut Position, stats: &mut ClientStats, ctx: &ClientCtx) {
    // A new epoch: the storage lost its data; positions start again (spec §3, step 1).
    let mut cursor = match &position.at {
        Some((epoch, cursor)) if *epoch == answer.epoch => Some(*cursor),
        Some(_) => {
            stats.epoch_changes += 1;
            None
        }
        None => None,
    };
    for m in answer.messages {
        if cursor.is_some_and(|c| m.pos <= c) {
            stats.repeats += 1;
            continue;
        }
        cursor = Some(m.pos);
        if let (true, Some(tick)) = (m.event == "tick", m.data) {
            stats.on_tick(tick, &ctx.progress);
        }
    }
    for v in answer.volatile {
        if let (true, Some(tick)) = (v.event == "tick", v.data) {
            stats.on_tick(tick, &ctx.progress);
        }
    }
    position.at = Some((answer.epoch, answer.cursor));
}
