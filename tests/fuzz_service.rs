//! The `service` fuzz target's checks (`fuzz/common.rs`) on stable, in every `cargo test`: over
//! its committed inputs (the seed corpus and the regressions) and over pseudo-random inputs from
//! a fixed seed. The fuzzer itself (nightly) runs in CI through `.ci/fuzz`.

#[path = "../fuzz/common.rs"]
mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

use common::Seen;

/// Random inputs per run: enough to reach every answer below, few enough for a debug build's
/// few seconds.
const RANDOM_CASES: usize = 2000;
const MAX_RANDOM_LEN: usize = 600;

thread_local! {
    /// Panics on this thread. A case's tasks run on the thread that runs the case (its runtime
    /// has one thread), so a panic a task swallowed — tokio catches them, and so does the
    /// layer around its handler — is still counted against the case.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Runs one input as the fuzz target does; panics, naming the input, on any failed check.
fn run(runtime: &tokio::runtime::Runtime, name: &str, data: &[u8]) -> Vec<Seen> {
    let before = PANICS.with(Cell::get);
    let case = common::decode(data);
    let seen = common::run(runtime, &case);
    let panics = PANICS.with(Cell::get) - before;
    assert_eq!(
        panics, 0,
        "{name}: {panics} panic(s) in the service's tasks: {case:?}"
    );
    seen
}

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(sub)
}

/// The files of `dir` whose name passes `keep`, sorted; none if `dir` does not exist.
fn inputs_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .map(|path| {
            let data = std::fs::read(&path).expect("a readable input");
            (path.display().to_string(), data)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn the_committed_inputs_pass() {
    count_panics();
    let runtime = common::runtime();
    // Only the seeds of the corpus: what libFuzzer added to it locally is not committed, and a
    // long local run leaves thousands.
    let seeds = inputs_in(&fuzz_dir("corpus/service"), |name| {
        name.starts_with("seed-")
    });
    assert!(
        seeds.len() >= 5,
        "the seed corpus is missing (fuzz/corpus/service/seed-*); `cargo test --test fuzz_service -- --ignored` writes it"
    );
    // Inputs that once failed, kept so they never fail again.
    let regressions = inputs_in(&fuzz_dir("regressions/service"), |_| true);
    for (name, data) in seeds.iter().chain(&regressions) {
        run(&runtime, name, data);
    }
}

fn random_input(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = rng.usize(..MAX_RANDOM_LEN);
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

#[test]
fn random_inputs_pass_and_reach_every_kind_of_answer() {
    count_panics();
    let runtime = common::runtime();
    let mut rng = fastrand::Rng::with_seed(0x51_3e_10);
    let mut seen = BTreeSet::new();
    for i in 0..RANDOM_CASES {
        let data = random_input(&mut rng);
        seen.extend(run(&runtime, &format!("random input {i}"), &data));
    }
    let on_route: BTreeSet<(u16, &str)> = seen
        .iter()
        .filter(|s| s.on_route)
        .map(|s| (s.status, s.detail.as_str()))
        .collect();
    // What the generator must reach for the fuzzer to start deep: each error of the spec's
    // table that this service can give (a 503 needs a failing storage), and polls and sends
    // that got through.
    let expected: &[(u16, &str)] = &[
        (200, "empty"),
        (200, "messages"),
        (200, "reply"),
        (200, "error+reply"),
        (200, "pending"),
        (400, "malformed_json"),
        (400, "invalid_query"),
        (400, "invalid_field"),
        (400, "unknown_namespace"),
        (400, "too_many_namespaces"),
        (400, "data_too_deep"),
        (400, "duplicate_id"),
        (400, "body_unreadable"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (405, "method_not_allowed"),
        (408, "body_timeout"),
        (413, "body_too_large"),
        (413, "too_many_messages"),
        (413, "message_too_large"),
        (415, "unsupported_media_type"),
        (429, "too_many_clients"),
        (429, "too_many_polls"),
    ];
    eprintln!("{RANDOM_CASES} random inputs got, on the route: {on_route:?}");
    let missing: Vec<_> = expected.iter().filter(|e| !on_route.contains(e)).collect();
    assert!(
        missing.is_empty(),
        "random inputs never got {missing:?}; they got {on_route:?}"
    );
    assert!(
        seen.iter().any(|s| s.detail == "inner"),
        "nothing passed through"
    );
    assert!(
        seen.iter().any(|s| s.detail == "script"),
        "the client script never served"
    );
}

/// Writes the seed corpus: for each kind of answer the first request of a random input got,
/// the shortest such input. Run by hand after changing how inputs decode:
/// `cargo test --test fuzz_service -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/service; run by hand"]
fn write_seed_corpus() {
    let runtime = common::runtime();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut shortest: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for _ in 0..10_000 {
        let data = random_input(&mut rng);
        let Some(first) = run(&runtime, "seed candidate", &data).into_iter().next() else {
            continue;
        };
        if !first.on_route {
            continue;
        }
        let method = match first.method.as_str() {
            m @ ("GET" | "POST") => m,
            _ => "other",
        };
        let kind = format!("{method}-{}-{}", first.status, first.detail)
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
        let entry = shortest.entry(kind).or_insert_with(|| data.clone());
        if data.len() < entry.len() {
            *entry = data;
        }
    }
    let dir = fuzz_dir("corpus/service");
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for (path, _) in inputs_in(&dir, |name| name.starts_with("seed-")) {
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {path}: {e}"));
    }
    for (kind, data) in &shortest {
        std::fs::write(dir.join(format!("seed-{kind}")), data).expect("a seed written");
    }
    eprintln!("wrote {} seeds to {}", shortest.len(), dir.display());
}
