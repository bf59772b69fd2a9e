//! A virtual Socket.IO client over Engine.IO v4 long-polling, as socket.io-client does it
//! without WebSocket:
//!
//! 1. `GET /socket.io/?EIO=4&transport=polling` → the open packet `0{"sid": …}`;
//! 2. `POST` `40` (connect to namespace `/`) with that `sid`;
//! 3. `GET` polls with the `sid` in a loop; an answer holds packets separated by `\x1e`:
//!    `40{…}` (namespace connected), `42["tick",{…}]` (an event), `2` (ping: answered with a
//!    `POST` of `3`), `6` (noop), `1` (close).
//!
//! All on one connection, one request at a time, like the simpleio client: the pong goes out
//! between two polls (a ping ends the poll it came in, so nothing else is waiting then).

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::sleep;

use crate::fleet::{ClientCtx, ClientStats, RETRY_PAUSE};
use crate::http::Conn;
use crate::servers::Tick;

const PATH: &str = "/socket.io/?EIO=4&transport=polling";
const TEXT: &str = "text/plain;charset=UTF-8";

#[derive(Deserialize)]
struct Open {
    sid: String,
}

/// Runs one client until the fleet stops; returns what it saw.
pub async fn run(mut ctx: ClientCtx) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut connected = false;
    loop {
        // A lost session cannot be resumed in Engine.IO: a reconnect is a new session (and
        // misses what was sent meanwhile, which the report shows as lost).
        let mut permit = if connected {
            None
        } else {
            ctx.connect_permit().await
        };
        let session = tokio::select! {
            s = open(ctx.addr) => s,
            _ = ctx.stop.changed() => break,
        };
        let (mut conn, sid) = match session {
            Ok(s) => s,
            Err(e) => {
                stats.on_error(&e);
                sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let poll_path = format!("{PATH}&sid={sid}");
        loop {
            let answer = tokio::select! {
                a = conn.get(&poll_path) => a,
                _ = ctx.stop.changed() => return stats,
            };
            let result = match answer {
                Ok((status, body)) if status.is_success() => {
                    handle(&body, &mut stats, &ctx, &mut connected)
                }
                Ok((status, body)) => Err(anyhow::anyhow!(
                    "poll answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )),
                Err(e) => Err(e),
            };
            if connected {
                // Connected: let the next client in.
                permit.take();
            }
            let pong = match result {
                Ok(pong) => pong,
                Err(e) => {
                    stats.on_error(&e);
                    sleep(RETRY_PAUSE).await;
                    break;
                }
            };
            if pong && let Err(e) = post(&mut conn, &poll_path, "3").await {
                stats.on_error(&e);
                break;
            }
        }
    }
    stats
}

/// Opens a session and connects namespace `/`.
async fn open(addr: std::net::SocketAddr) -> Result<(Conn, String)> {
    let mut conn = Conn::connect(addr).await?;
    let (status, body) = conn.get(PATH).await?;
    if !status.is_success() {
        bail!("open answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let open = body
        .strip_prefix(b"0")
        .with_context(|| format!("not an open packet: {:?}", String::from_utf8_lossy(&body)))?;
    let open: Open = serde_json::from_slice(open).context("parsing the open packet")?;
    post(&mut conn, &format!("{PATH}&sid={}", open.sid), "40").await?;
    Ok((conn, open.sid))
}

async fn post(conn: &mut Conn, path: &str, packet: &'static str) -> Result<()> {
    let (status, body) = conn
        .post(path, TEXT, Bytes::from_static(packet.as_bytes()))
        .await?;
    if !status.is_success() {
        bail!(
            "POST {packet} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Handles one poll's packets; tells whether a ping wants a pong.
fn handle(
    body: &[u8],
    stats: &mut ClientStats,
    ctx: &ClientCtx,
    connected: &mut bool,
) -> Result<bool> {
    let mut pong = false;
    for packet in body.split(|&b| b == 0x1e) {
        match packet {
            [b'2', ..] => pong = true,
            [b'6', ..] | [] => {}
            [b'1', ..] => bail!("the server closed the session"),
            [b'4', b'0', ..] => {
                if !*connected {
                    *connected = true;
                    ctx.progress
                        .connected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            [b'4', b'2', event @ ..] => {
                let (name, tick): (String, Tick) =
                    serde_json::from_slice(event).context("parsing an event packet")?;
                if name == "tick" {
                    stats.on_tick(tick, &ctx.progress);
                }
            }
            other => bail!("unexpected packet {:?}", String::from_utf8_lossy(other)),
        }
    }
    Ok(pong)
}
