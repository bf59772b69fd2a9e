//! A virtual client of the `hyper-hold` server: `GET /hello` once, then `GET /hold` on the same
//! connection, again whenever it is answered, as a simpleio client handshakes and then polls.
//! It only makes connections wait; it receives nothing.

use tokio::time::sleep;

use crate::fleet::{ClientCtx, ClientStats, RETRY_PAUSE};
use crate::http::Conn;

/// Runs one client until the fleet stops.
pub async fn run(mut ctx: ClientCtx) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut permit = ctx.connect_permit().await;
    loop {
        let conn = tokio::select! {
            c = Conn::connect(ctx.addr) => c,
            _ = ctx.stop.changed() => break,
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                stats.on_error(&e);
                sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let hello = tokio::select! {
            a = conn.get("/hello") => a,
            _ = ctx.stop.changed() => break,
        };
        if let Err(e) = hello {
            stats.on_error(&e);
            sleep(RETRY_PAUSE).await;
            continue;
        }
        if permit.take().is_some() {
            // The request is sent right after this; the server counts it as waiting.
            ctx.progress
                .connected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        loop {
            let answer = tokio::select! {
                a = conn.get("/hold") => a,
                _ = ctx.stop.changed() => return stats,
            };
            if let Err(e) = answer {
                stats.on_error(&e);
                sleep(RETRY_PAUSE).await;
                break;
            }
        }
    }
    stats
}
