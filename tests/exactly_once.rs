//! Client → server exactly once (guarantee 3): a retried `POST` reaches the handler once and
//! gets the first outcome again, whether the retry comes after the answer, races the original,
//! or follows a connection that broke while the handler ran. Error outcomes are stored too, and
//! an unexpected handler error is shown to the client without its details.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use simpleio::{HandlerError, Incoming, Reply, SimpleIoLayer};
use support::server::TestServer;
use support::wire::{Wire, eventually, post_request, raw_request};
use tower::{BoxError, service_fn};

/// Counts handler calls: `started` when a call begins, `finished` when it returns.
#[derive(Clone, Default)]
struct Calls {
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Calls {
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().expect("lock").clone()
    }
}

/// A handler that counts its calls and answers by event:
/// `slow` sleeps 500 ms first, `refuse` fails with a chosen error, `crash` fails with an
/// internal one; every other event replies `{"event", "data", "call"}` (`call` counts from 1).
async fn handle(calls: Calls, msg: Incoming) -> Result<Reply, BoxError> {
    let call = calls.started.fetch_add(1, Ordering::SeqCst) + 1;
    calls.events.lock().expect("lock").push(msg.id.to_string());
    let data: Value = msg.json()?;
    let result = match msg.event.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(Reply::json(
                &json!({"event": "slow", "data": data, "call": call}),
            )?)
        }
        "refuse" => Err(HandlerError::new("not_allowed", "you may not do that").into()),
        "crash" => Err("the database password is hunter2".into()),
        event => Ok(Reply::json(
            &json!({"event": event, "data": data, "call": call}),
        )?),
    };
    calls.finished.fetch_add(1, Ordering::SeqCst);
    result
}

async fn server(calls: &Calls) -> TestServer {
    let calls = calls.clone();
    TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .pending_wait(Duration::from_secs(3))
            .handler(service_fn(move |msg| handle(calls.clone(), msg))),
    )
    .await
}

#[tokio::test]
async fn a_retried_post_reaches_the_handler_once() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let message = json!([{"id": "tab1-1", "event": "add", "data": [1, 2]}]);

    let first = tab.send(message.clone()).await;
    assert_eq!(
        first,
        [json!({"id": "tab1-1", "reply": {"event": "add", "data": [1, 2], "call": 1}})]
    );
    // The response was lost, say; the client sends the same message again.
    let retry = tab.send(message.clone()).await;
    assert_eq!(retry, first, "the retry gets the first outcome");
    assert_eq!(calls.started(), 1, "the handler ran once");

    // A new id is a new message.
    let next = tab
        .send(json!([{"id": "tab1-2", "event": "add", "data": [1, 2]}]))
        .await;
    assert_eq!(next[0]["reply"]["call"], 2);
    assert_eq!(calls.started(), 2);
}

#[tokio::test]
async fn a_retry_after_the_connection_broke_mid_handling_gets_the_outcome_of_the_one_call() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let message = json!([{"id": "tab1-7", "event": "slow", "data": "x"}]);

    // The POST reaches the handler, then the connection breaks before the answer.
    let body = json!({"client": "tab1", "messages": message});
    let stream = raw_request(server.addr, &post_request("/simpleio", "ann", &body)).await;
    let started = calls.clone();
    eventually("the handler started", || started.started() == 1).await;
    drop(stream);

    // The client retries with the same id: it must not run the handler again, and it must
    // learn the outcome of the call that ran (not be told `pending` until the lease ends).
    let retry = Wire::new(&server).tab("ann", "tab1").send(message).await;
    assert_eq!(
        retry,
        [json!({"id": "tab1-7", "reply": {"event": "slow", "data": "x", "call": 1}})]
    );
    assert_eq!(calls.started(), 1, "the handler ran once");
    assert_eq!(calls.finished(), 1, "the handler's one call ran to its end");
}

#[tokio::test]
async fn concurrent_posts_of_one_message_reach_the_handler_once() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let message = json!([{"id": "tab1-9", "event": "slow", "data": 9}]);

    let (a, b) = tokio::join!(tab.send(message.clone()), tab.send(message.clone()));
    assert_eq!(calls.started(), 1, "the handler ran once");
    let outcome = json!({"id": "tab1-9", "reply": {"event": "slow", "data": 9, "call": 1}});
    let pending = json!({"id": "tab1-9", "pending": true});
    for acks in [&a, &b] {
        assert!(
            acks[..] == [outcome.clone()] || acks[..] == [pending.clone()],
            "neither the outcome nor pending: {acks:?}"
        );
    }
    assert!(a[0] == outcome || b[0] == outcome, "nobody got the outcome");
    // Whoever was told `pending` gets the outcome by asking again.
    assert_eq!(tab.send(message).await, [outcome]);
    assert_eq!(calls.started(), 1);
}

#[tokio::test]
async fn an_error_ack_is_stored_and_returned_on_retry() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let message = json!([{"id": "tab1-3", "event": "refuse"}]);

    let first = tab.send(message.clone()).await;
    let error =
        json!({"id": "tab1-3", "error": {"code": "not_allowed", "message": "you may not do that"}});
    assert_eq!(first, std::slice::from_ref(&error));
    assert_eq!(tab.send(message).await, [error], "the failure is final");
    assert_eq!(calls.started(), 1);
}

#[tokio::test]
async fn an_unexpected_handler_error_shows_a_generic_code_and_keeps_the_details() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let answer = Wire::new(&server)
        .tab("ann", "tab1")
        .post(json!([{"id": "tab1-4", "event": "crash"}]))
        .await;
    let acks = answer.acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["id"], "tab1-4");
    assert_eq!(acks[0]["error"]["code"], "handler_error");
    assert!(
        acks[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(
        !answer.text.contains("hunter2") && !answer.text.contains("password"),
        "the handler's error leaked: {}",
        answer.text
    );
}

#[tokio::test]
async fn many_messages_in_one_post_are_handled_and_acked_in_order() {
    let calls = Calls::default();
    let server = server(&calls).await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    // `tab1-2` was handled before; the batch repeats it between new messages.
    tab.send(json!([{"id": "tab1-2", "event": "e", "data": "earlier"}]))
        .await;

    let messages: Vec<Value> = (1..=5)
        .map(|n| json!({"id": format!("tab1-{n}"), "event": "e", "data": n}))
        .collect();
    let acks = tab.send(Value::Array(messages)).await;
    let ids: Vec<&str> = acks.iter().map(|a| a["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["tab1-1", "tab1-2", "tab1-3", "tab1-4", "tab1-5"]);
    assert_eq!(acks[1]["reply"]["data"], "earlier", "the stored outcome");
    assert_eq!(acks[0]["reply"]["data"], 1);
    assert_eq!(acks[4]["reply"]["data"], 5);
    assert_eq!(
        calls.events(),
        ["tab1-2", "tab1-1", "tab1-3", "tab1-4", "tab1-5"],
        "the handler saw each message once, in the order sent"
    );
}

#[tokio::test]
async fn a_message_id_repeated_within_one_post_is_refused() {
    let calls = Calls::default();
    let server = server(&calls).await;
    Wire::new(&server)
        .tab("ann", "tab1")
        .post(json!([
            {"id": "tab1-1", "event": "e", "data": 1},
            {"id": "tab1-1", "event": "e", "data": 2},
        ]))
        .await
        .assert_error(400, "duplicate_id");
    assert_eq!(calls.started(), 0, "a refused request reached the handler");
}

#[tokio::test]
async fn a_handler_that_panicked_is_not_run_again_by_a_resend() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(
        SimpleIoLayer::builder()
            .hold_time(Duration::from_millis(300))
            .handler_lease(Duration::from_millis(200))
            .handler(service_fn(move |_msg: Incoming| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if true {
                        panic!("a bug in the handler");
                    }
                    Ok::<_, BoxError>(Reply::from(json!(null)))
                }
            })),
    )
    .await;
    let tab = Wire::new(&server).tab("ann", "tab1");
    let first = tab.send(json!([{"id": "m1", "event": "e"}])).await;
    assert_eq!(first[0]["error"]["code"], "handler_error", "{first:?}");
    // Past the lease, a resend (the first answer was lost, say) gets the recorded outcome.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = tab.send(json!([{"id": "m1", "event": "e"}])).await;
    assert_eq!(again, first);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a resend ran the handler again"
    );
}
