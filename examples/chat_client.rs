//! A terminal chat client on `simpleio::client`: reads lines from stdin and sends each as a
//! `chat` message; prints what arrives.
//!
//! Start the chat server (`cargo run --example chat`), then in as many terminals as you like:
//!
//! ```text
//! cargo run --features client --example chat_client -- --url http://127.0.0.1:3000 --name ann
//! ```
//!
//! The server's demo identity trusts a `user` cookie, so that is how the name is sent. Stop the
//! server and start it again: the client reconnects, and lines typed meanwhile are sent once it
//! is back. End with Ctrl-D (or Ctrl-C). `RUST_LOG=simpleio=debug` shows what the client does.

use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use simpleio::client::{Client, EmitError, Event, Events, Message};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: chat_client --name NAME [--url http://127.0.0.1:3000]";

/// How long unsent lines may take to go out after stdin ends.
const FLUSH: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Args {
    url: String,
    name: String,
}

/// A chat line as the chat server relays it.
#[derive(Deserialize)]
struct Chat {
    from: String,
    text: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let connected = Client::builder(route_url(&args.url))
        .header("cookie", &format!("user={}", args.name))
        .connect();
    let (client, events) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("cannot start the client: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "* chatting as {} on {}; Ctrl-D to quit",
        args.name, args.url
    );
    let printer = tokio::spawn(print_events(events));

    let mut sending = JoinSet::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    // Spawned, so typing goes on while a line waits for the server; the client
                    // sends them in order.
                    sending.spawn(client.emit("chat", &serde_json::json!({ "text": line })));
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("* cannot read stdin: {e}");
                    break;
                }
            },
            Some(sent) = sending.join_next() => report(sent),
            _ = tokio::signal::ctrl_c() => break,
        }
    }

    // Give lines still on their way a moment to be acknowledged.
    let flushed = tokio::time::timeout(FLUSH, async {
        while let Some(sent) = sending.join_next().await {
            report(sent);
        }
    })
    .await;
    if flushed.is_err() {
        eprintln!("* {} line(s) not acknowledged; giving up", sending.len());
    }
    client.close().await;
    let _ = printer.await;
    ExitCode::SUCCESS
}

fn report(sent: Result<Result<serde_json::Value, EmitError>, tokio::task::JoinError>) {
    match sent {
        Ok(Ok(_reply)) => {}
        Ok(Err(EmitError::Ack { message, .. })) => eprintln!("* refused: {message}"),
        Ok(Err(e)) => eprintln!("* not sent: {e}"),
        Err(e) => eprintln!("* sending failed: {e}"),
    }
}

async fn print_events(mut events: Events) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) => print_message(&m),
            Event::Connected => eprintln!("* connected"),
            Event::Disconnected(why) => eprintln!("* disconnected ({why}); reconnecting"),
            Event::Resynced => eprintln!("* the server lost its messages; some may be missing"),
            other => eprintln!("* {other:?}"),
        }
    }
}

fn print_message(m: &Message) {
    match m.json::<Chat>() {
        Ok(chat) if m.event == "chat" => println!("{}: {}", chat.from, chat.text),
        _ => println!("[{}] {}", m.event, m.data),
    }
}

/// The route's URL from the server's base URL (`http://host:port`), or the route's own.
fn route_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/simpleio") {
        url.to_owned()
    } else {
        format!("{url}/simpleio")
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut url = "http://127.0.0.1:3000".to_owned();
    let mut name = None;
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--url" => url = value()?,
            "--name" => name = Some(value()?),
            "-h" | "--help" => return Err("a terminal chat client for examples/chat.rs".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    // It travels in a cookie, and the chat server takes names of at most 32 bytes.
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(format!(
            "the name {name:?} must be 1 to 32 characters from A-Z a-z 0-9 _ - ."
        ));
    }
    Ok(Args { url, name })
}
