//! A lost response never surfaces a duplicate or a gap (guarantee 2): nothing is confirmed until
//! the client says so with a later cursor, so a response lost mid-wait or mid-response is simply
//! asked for again and comes back with the same positions; a replayed old cursor repeats
//! positions, which the spec's rule (drop `pos <= cursor`) removes.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use simpleio::SimpleIoLayer;
use support::server::TestServer;
use support::wire::{
    Wire, assert_pending, eventually, finish, get_request, raw_request, read_at_least, start,
};

fn builder() -> simpleio::Builder {
    SimpleIoLayer::builder()
        .hold_time(Duration::from_millis(300))
        .recheck_interval(Duration::from_secs(20))
}

#[tokio::test]
async fn a_response_lost_mid_response_comes_again_with_the_same_positions() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;
    let mut sends = Vec::new();
    for n in 0..3 {
        sends.push(start(server.io.to_user("ann").emit("n", &n)).await);
    }

    // The connection breaks after the first bytes of the response.
    let path = format!("/simpleio?{}", tab.query());
    let mut stream = raw_request(server.addr, &get_request(&path, "ann")).await;
    let head = read_at_least(&mut stream, 12).await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    drop(stream);

    // Asked again with the same cursor: the same positions. Then that response is lost too.
    let first = tab.peek().await;
    assert_eq!(first.data(), [json!(0), json!(1), json!(2)]);
    let again = tab.peek().await;
    assert_eq!(again.positions(), first.positions());
    for send in &mut sends {
        assert_pending(send, "an emit whose responses were all lost").await;
    }

    // The third answer arrives; the next poll confirms it.
    let got = tab.receive().await;
    assert_eq!(got.positions(), first.positions());
    tab.receive().await;
    for send in sends {
        assert!(finish(send, "an emit, confirmed").await.is_ok());
    }
}

#[tokio::test]
async fn a_poll_dropped_mid_wait_confirms_nothing_new() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    // A poll waits, then its connection is dropped before anything arrives.
    let path = format!("/simpleio?{}", tab.query());
    let stream = raw_request(server.addr, &get_request(&path, "ann")).await;
    let io = server.io.clone();
    eventually("the raw poll is waiting", || io.waiting_polls() == 1).await;
    drop(stream);

    // The message arrives while the dropped poll may still be waiting and answer into nothing.
    let mut sending = start(server.io.to_user("ann").emit("news", &"hello")).await;
    assert_pending(&mut sending, "the emit after the dropped poll").await;

    let got = tab.receive().await;
    assert_eq!(got.data(), [json!("hello")]);
    tab.receive().await;
    assert!(finish(sending, "the emit, confirmed").await.is_ok());
}

#[tokio::test]
async fn replaying_an_old_cursor_repeats_positions_that_the_client_drops() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let start_batch = tab.receive().await;
    // A second tab that has not read on keeps the confirmed messages in the log (a storage may
    // trim what every client of the user is past), so the replay below has them to repeat.
    Wire::new(&server).tab("ann", "tab2").receive().await;
    let old = (start_batch.epoch.clone(), start_batch.cursor);

    let a = start(server.io.to_user("ann").emit("n", &"a")).await;
    let b = start(server.io.to_user("ann").emit("n", &"b")).await;
    let mut visible = tab.receive().await.messages;
    tab.receive().await;
    assert!(finish(a, "a, confirmed").await.is_ok());
    assert!(finish(b, "b, confirmed").await.is_ok());

    // A request built with the old cursor (say, a retry sent late) reaches the server.
    let mut c = start(server.io.to_user("ann").emit("n", &"c")).await;
    let replay = tab.poll_from(Some((&old.0, old.1))).await;
    assert_eq!(replay.data(), [json!("a"), json!("b"), json!("c")]);
    assert_eq!(
        replay.positions()[..2],
        visible.iter().map(|m| m.pos).collect::<Vec<_>>()
    );
    assert_pending(&mut c, "c, after a poll whose cursor lies below it").await;

    // The client applies the rule: what is at or below its cursor is dropped.
    let taken = tab.take(replay);
    assert_eq!(taken.data(), [json!("c")]);
    visible.extend(taken.messages);
    let data: Vec<Value> = visible.iter().map(|m| m.data.clone()).collect();
    assert_eq!(data, [json!("a"), json!("b"), json!("c")]);

    tab.receive().await;
    assert!(finish(c, "c, confirmed").await.is_ok());
}

#[tokio::test]
async fn a_client_that_keeps_losing_responses_sees_each_message_once_in_order() {
    let server = TestServer::start(builder()).await;
    let mut tab = Wire::new(&server).tab("ann", "tab1");
    let first = tab.receive().await;
    let oldest = (first.epoch.clone(), first.cursor);

    let mut visible = Vec::new();
    let mut sends = Vec::new();
    for n in 0..12 {
        sends.push(start(server.io.to_user("ann").emit("n", &n)).await);
        match n % 4 {
            // The response breaks off after its first bytes.
            0 => {
                let path = format!("/simpleio?{}", tab.query());
                let mut stream = raw_request(server.addr, &get_request(&path, "ann")).await;
                read_at_least(&mut stream, 12).await;
            }
            // The whole response arrives but never reaches the application.
            1 => {
                tab.peek().await;
            }
            // A stale request with the very first cursor comes through, and is taken in.
            2 => {
                let replay = tab.poll_from(Some((&oldest.0, oldest.1))).await;
                visible.extend(tab.take(replay).messages);
            }
            _ => {}
        }
        visible.extend(tab.receive().await.messages);
    }

    let data: Vec<Value> = visible.iter().map(|m| m.data.clone()).collect();
    let expected: Vec<Value> = (0..12).map(|n| json!(n)).collect();
    assert_eq!(data, expected, "no duplicates, no gaps, in order");
    let positions: Vec<u64> = visible.iter().map(|m| m.pos).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    tab.receive().await;
    for send in sends {
        assert!(finish(send, "an emit, confirmed").await.is_ok());
    }
}
