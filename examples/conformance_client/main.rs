//! The Rust client as a client conformance adapter (`docs/client-conformance.md`): commands as
//! JSON lines on stdin, the client's events as JSON lines on stdout. The harness,
//! `tests/client_conformance.rs`, runs the same code (`driver.rs`) in-process.
//!
//! By hand, against a server whose identity reads the `x-user` header:
//!
//! ```text
//! SIMPLEIO_URL=http://127.0.0.1:3000/simpleio SIMPLEIO_USER=ann \
//!     cargo run --quiet --features client --example conformance_client
//! {"cmd":"emit","tag":"1","event":"chat","data":{"text":"hi"}}
//! {"cmd":"close"}
//! ```
//!
//! `RUST_LOG=simpleio=debug` logs what the client does, on stderr.

#[cfg(feature = "client")]
mod driver;

use std::process::ExitCode;

#[cfg(feature = "client")]
fn main() -> ExitCode {
    use tracing_subscriber::EnvFilter;

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match driver::Settings::from_vars(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("conformance_client: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("conformance_client: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let commands = tokio::io::BufReader::new(tokio::io::stdin());
    let outcome = runtime.block_on(driver::drive(settings, commands, tokio::io::stdout()));
    // Not waiting for the blocking read of stdin, which a `close` command leaves open.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conformance_client: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "client"))]
fn main() -> ExitCode {
    eprintln!("conformance_client needs the Rust client: run it with `--features client`");
    ExitCode::from(2)
}
