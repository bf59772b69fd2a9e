//! Metrics (feature `metrics`): what a node reports through the `metrics` facade, read back
//! from a recorder that keeps everything it is given. The recorder is global to this test
//! process, so each test holds [`LOCK`]; and reading it zeroes what it read, so each reading
//! holds what changed since the one before.

#![cfg(feature = "metrics")]

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use simpleio::metrics as names;
use simpleio::{Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, finish, start};
use tokio::sync::Mutex;
use tower::{BoxError, service_fn};

static LOCK: Mutex<()> = Mutex::const_new(());

/// The process's recorder, installed once, before any layer is built.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this process");
        snapshotter
    })
}

/// What changed since the last reading: each metric's name, labels (sorted) and value.
struct Reading(Vec<Metric>);

/// A metric's name, its labels as `(key, value)` sorted, and its value.
type Metric = (String, Vec<(String, String)>, DebugValue);

fn read() -> Reading {
    let all = snapshotter().snapshot().into_vec();
    Reading(
        all.into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                (key.name().to_owned(), labels, value)
            })
            .collect(),
    )
}

impl Reading {
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(n, l, v)| {
            let matches = n == name
                && labels
                    .iter()
                    .all(|(k, want)| l.iter().any(|(lk, lv)| lk == k && lv == want));
            matches.then_some(v)
        })
    }

    /// How much a counter grew (0 if never registered).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        match self.find(name, &[]) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            _ => None,
        }
    }

    /// How many values a histogram received.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.find(name, labels) {
            Some(DebugValue::Histogram(values)) => values.len(),
            _ => 0,
        }
    }
}

fn builder() -> simpleio::Builder {
    let _ = snapshotter();
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .handler(service_fn(|msg: Incoming| async move {
            if msg.event == "fail" {
                return Err::<Reply, BoxError>("it broke".into());
            }
            Ok(Reply::json(&msg.event)?)
        }))
}

#[tokio::test]
async fn a_confirmed_message_counts_as_stored_then_delivered_with_its_delivery_time() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    read();

    let sending = start(server.io.to_user("ann").emit("news", &1)).await;
    tab.receive().await;
    tab.receive().await;
    finish(sending, "the emit").await.expect("delivered to ann");

    let after = read();
    assert_eq!(after.counter(names::MESSAGES_STORED, &[]), 1);
    assert_eq!(after.counter(names::MESSAGES_DELIVERED, &[]), 1);
    assert_eq!(after.counter(names::MESSAGES_EXPIRED, &[]), 0);
    assert_eq!(after.samples(names::DELIVERY_SECONDS, &[]), 1);
    let ok_polls = [("method", "GET"), ("outcome", "ok")];
    assert_eq!(after.counter(names::REQUESTS, &ok_polls), 2);
    // Each poll read the log; the emit appended once.
    assert!(after.samples(names::STORAGE_SECONDS, &[("op", "fetch")]) >= 2);
    assert_eq!(
        after.samples(names::STORAGE_SECONDS, &[("op", "append")]),
        1
    );
    assert!(after.counter(names::SIGNALS_RECEIVED, &[("kind", "appended")]) >= 1);
    assert!(after.counter(names::SIGNALS_RECEIVED, &[("kind", "confirmed")]) >= 1);
}

#[tokio::test]
async fn a_message_nobody_confirms_counts_as_expired() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder()).await;
    read();
    let outcome = server
        .io
        .to_user("nobody")
        .ttl(Duration::from_millis(50))
        .emit("news", &1)
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    let after = read();
    assert_eq!(after.counter(names::MESSAGES_EXPIRED, &[]), 1);
    assert_eq!(after.counter(names::MESSAGES_DELIVERED, &[]), 0);
}

#[tokio::test]
async fn a_poll_over_the_users_bound_counts_as_a_bound_hit_named_after_its_setting() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder().max_polls_per_user(1)).await;
    let wire = Wire::new(&server);
    let mut tab1 = wire.tab("bob", "tab1");
    tab1.receive().await;
    read();
    // tab1 waits out its hold; tab2's poll meanwhile is one too many for bob.
    let waiting = {
        let tab1 = tab1.clone();
        tokio::spawn(async move { tab1.peek().await })
    };
    let bound = [("bound", "max_polls_per_user")];
    let refused = [("method", "GET"), ("outcome", "too_many_polls")];
    let mut answered = false;
    for _ in 0..20 {
        let answer = wire.get(Some("bob"), "client=tab2").await;
        if answer.status.as_u16() == 429 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "a second poll of bob was never refused");
    waiting.await.expect("tab1's poll");
    let after = read();
    assert_eq!(after.counter(names::BOUNDS_HIT, &bound), 1);
    assert_eq!(after.counter(names::REQUESTS, &refused), 1);
}

#[tokio::test]
async fn a_retried_message_is_a_dedup_hit_and_the_handler_is_timed_and_counted_per_event() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder()).await;
    let tab = Wire::new(&server).tab("cy", "tab1");
    read();
    let first = tab.send(json!([{"id": "m1", "event": "echo"}])).await;
    let again = tab.send(json!([{"id": "m1", "event": "echo"}])).await;
    assert_eq!(first, again, "a retry is answered with the first outcome");
    tab.send(json!([{"id": "m2", "event": "fail"}])).await;

    let after = read();
    let done = [("state", "done")];
    assert_eq!(after.counter(names::DEDUP_HITS, &done), 1);
    // Handled once, though sent twice.
    assert_eq!(
        after.samples(names::HANDLER_SECONDS, &[("event", "echo")]),
        1
    );
    let failed = [("event", "fail"), ("kind", "failed")];
    assert_eq!(after.counter(names::HANDLER_ERRORS, &failed), 1);
    let echo_failed = [("event", "echo"), ("kind", "failed")];
    assert_eq!(after.counter(names::HANDLER_ERRORS, &echo_failed), 0);
}

#[tokio::test]
async fn a_waiting_poll_shows_in_the_gauge_until_it_is_answered() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder().hold_time(Duration::from_secs(2))).await;
    let mut tab = Wire::new(&server).tab("dee", "tab1");
    tab.receive().await;
    read();
    let waiting = {
        let tab = tab.clone();
        tokio::spawn(async move { tab.peek().await })
    };
    support::wire::eventually("the poll is waiting", || server.io.waiting_polls() == 1).await;
    assert_eq!(read().gauge(names::POLLS_WAITING), Some(1.0));
    server
        .io
        .to_user("dee")
        .volatile()
        .emit("ping", &1)
        .await
        .expect("published");
    waiting.await.expect("the poll");
    support::wire::eventually("the poll is answered", || server.io.waiting_polls() == 0).await;
    // One down since the reading above (which zeroed the gauge).
    assert_eq!(read().gauge(names::POLLS_WAITING), Some(-1.0));
}

#[tokio::test]
async fn each_append_reports_how_full_the_fullest_recipient_queue_is() {
    let _serial = LOCK.lock().await;
    let server = TestServer::start(builder().max_queue(3)).await;
    read();
    // Nobody of cara's confirms: her queue fills to its bound of 3, then a send is refused.
    for n in 0..3 {
        let stored = server.io.to_user("cara").emit("n", &n).stored().await;
        drop(stored.expect("stored"));
    }
    let refused = server.io.to_user("cara").emit("n", &3).stored().await;
    assert!(refused.is_err(), "the fourth fits no queue of 3");

    let after = read();
    let depths = match after.find(names::QUEUE_DEPTH, &[]) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        _ => Vec::new(),
    };
    assert_eq!(depths, [1.0, 2.0, 3.0, 3.0], "one sample per append");
    assert_eq!(
        after.counter(names::BOUNDS_HIT, &[("bound", "max_queue")]),
        1
    );
}
