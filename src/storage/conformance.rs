//! The storage conformance suite: the [`Storage`] contract as runnable checks.
//!
//! Every check takes a fresh, empty storage and panics with a sentence saying which rule was
//! broken. Run them all against your implementation with [`storage_conformance_tests!`]:
//!
//! ```ignore
//! // tests/my_storage.rs, with the `conformance` feature of simpleio enabled
//! async fn fresh() -> MyStorage { MyStorage::connect_to_a_fresh_database().await }
//! simpleio::storage_conformance_tests!(fresh);
//! ```
//!
//! The checks use short real timeouts (a few hundred milliseconds) for expiry and leases, since
//! a networked store keeps its own clock.
//!
//! [`storage_conformance_tests!`]: crate::storage_conformance_tests

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::*;

/// Generates one `#[tokio::test]` per conformance check, each on a storage made by `$fresh`, an
/// async function returning a new, empty storage.
///
/// With `optional`, `$fresh` returns an `Option` of a storage, and each check passes without
/// running when it is `None` (say, the database server is not installed on this machine; print
/// why in `$fresh`).
#[macro_export]
macro_rules! storage_conformance_tests {
    (@each $fresh:path, $mode:ident; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let made = $fresh().await;
                if let Some(storage) = $crate::storage_conformance_tests!(@some $mode, made) {
                    $crate::storage::conformance::$check(&storage).await;
                }
            }
        )*
    };
    (@some optional, $made:ident) => { $made };
    (@some required, $made:ident) => { Some($made) };
    (@checks $fresh:path, $mode:ident) => {
        $crate::storage_conformance_tests!(@each $fresh, $mode;
            epoch_is_stable,
            appended_messages_are_read_in_order,
            positions_keep_increasing_across_appends,
            ordered_appends_keep_their_order_once_written,
            an_offline_user_reads_everything_unconfirmed,
            confirming_a_cursor_delivers_and_signals,
            a_cursor_beyond_the_log_confirms_nothing_later,
            a_new_client_starts_at_the_watermark,
            every_client_of_a_user_reads_every_message,
            a_message_for_one_client_is_read_and_confirmed_by_it_alone,
            a_new_client_still_gets_messages_addressed_to_it,
            a_client_confirming_its_own_message_behind_the_watermark_signals,
            the_read_limit_holds_and_the_cursor_continues,
            a_stale_epoch_cursor_confirms_nothing,
            a_cursor_is_resumed_when_the_client_sends_none,
            expired_messages_are_skipped_and_reported_expired,
            a_full_queue_refuses_then_evicts_delivered_first,
            an_append_reports_the_deepest_queue_of_its_recipients,
            delivery_under_another_epoch_is_lost,
            users_are_isolated,
            dedup_claims_complete_and_expire,
            dedup_keys_are_scoped_by_user_and_client,
            appends_and_completions_are_signalled,
            published_signals_reach_subscribers,
            a_fetch_announces_its_poll,
            live_users_follow_presence,
            concurrent_appends_keep_positions_unique_and_ordered,
            a_client_reads_only_its_namespaces,
            confirmation_counts_only_in_the_namespaces_a_client_reads,
            a_new_client_starts_at_its_lowest_namespace_watermark,
            the_first_fetch_reports_an_arrival_once,
            reaping_reports_each_departure_once,
            reaping_drops_a_clients_rooms_and_data,
            rooms_hold_users_and_clients,
            data_is_kept_per_member,
            a_client_known_only_from_data_starts_at_the_watermark,
            a_client_known_only_from_join_or_data_arrives_on_its_first_poll,
            a_client_that_never_polled_is_reaped_without_a_departure,
            a_long_history_reads_and_confirms_from_any_point,
            a_broadcast_to_thousands_reaches_each_once_with_one_signal,
            a_lagging_subscriber_is_told_and_storage_still_answers,
            a_sender_fills_only_its_share_of_a_queue,
            dedup_records_are_bounded_per_client_and_per_user,
            a_record_completed_with_no_ttl_is_handled_again,
            a_user_has_at_most_max_clients,
            a_cursor_beyond_the_log_reads_from_its_end,
            a_queue_is_bounded_in_bytes_too,
            a_claim_is_resumed_by_its_owner_and_renewed_while_held,
            a_send_with_a_known_origin_is_stored_once,
            a_message_asking_for_replies_is_read_with_ack_and_takes_one_per_client,
            a_reply_is_refused_for_an_unknown_message_another_client_or_another_user,
            replies_outlive_delivery_and_are_signalled,
            replies_are_bounded_per_message_and_per_user,
        );
    };
    (optional $fresh:path) => {
        $crate::storage_conformance_tests!(@checks $fresh, optional);
    };
    ($fresh:path) => {
        $crate::storage_conformance_tests!(@checks $fresh, required);
    };
}

const LONG: Duration = Duration::from_secs(600);
const PRESENCE: Duration = Duration::from_secs(60);

fn user(name: &str) -> UserId {
    UserId::from(name)
}

fn client(name: &str) -> ClientId {
    ClientId::new(name).expect("valid client id")
}

fn data(json: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(json.to_owned()).expect("valid JSON"))
}

fn message(to: &str, event: &str, ttl: Duration) -> NewMessage {
    NewMessage {
        user: user(to),
        client: None,
        namespace: DEFAULT_NAMESPACE.into(),
        event: event.into(),
        data: data(&format!("\"{event}\"")),
        expires_at: millis_after(ttl),
        sender: None,
        origin: None,
        ack: false,
    }
}

fn from(sender: &str, mut m: NewMessage) -> NewMessage {
    m.sender = Some(user(sender));
    m
}

/// A new claim owner, as each request has its own.
fn owner() -> u64 {
    fastrand::u64(..)
}

/// A bound no check reaches unless it means to.
const MANY: usize = 1_000_000;

/// Dedup limits no check reaches unless it means to, with this lease.
fn lease(lease: Duration) -> DedupLimits {
    DedupLimits {
        lease,
        per_client: MANY,
        per_user: MANY,
    }
}

fn queue(per_user: usize) -> QueueLimits {
    QueueLimits {
        per_user,
        per_sender: MANY,
        bytes_per_user: MANY,
        bytes_per_sender: MANY,
    }
}

fn in_namespace(mut m: NewMessage, ns: &str) -> NewMessage {
    m.namespace = ns.into();
    m
}

fn namespaces(list: &[&str]) -> Arc<[Arc<str>]> {
    list.iter().map(|ns| Arc::from(*ns)).collect()
}

fn positions(outcomes: &[AppendOutcome]) -> Vec<Position> {
    outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(p) => *p,
            AppendOutcome::QueueFull => panic!("append refused a message below the queue limit"),
        })
        .collect()
}

async fn append(s: &impl Storage, messages: Vec<NewMessage>) -> (Epoch, Vec<Position>) {
    append_with_queue(s, messages, 1000).await
}

async fn append_with_queue(
    s: &impl Storage,
    messages: Vec<NewMessage>,
    max_queue: usize,
) -> (Epoch, Vec<Position>) {
    let a = s.append(messages, queue(max_queue)).await.expect("append");
    (a.epoch, positions(&a.outcomes))
}

async fn fetch(
    s: &impl Storage,
    u: &str,
    c: &str,
    cursor: Option<(&Epoch, Position)>,
) -> FetchBatch {
    fetch_limit(s, u, c, cursor, 100).await
}

async fn fetch_limit(
    s: &impl Storage,
    u: &str,
    c: &str,
    cursor: Option<(&Epoch, Position)>,
    limit: usize,
) -> FetchBatch {
    s.fetch(FetchRequest {
        user: user(u),
        client: client(c),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: namespaces(&[DEFAULT_NAMESPACE]),
        limit,
        presence_ttl: PRESENCE,
        announce: None,
        max_clients: MANY,
    })
    .await
    .expect("fetch")
}

fn events(batch: &FetchBatch) -> Vec<&str> {
    batch.messages.iter().map(|m| &*m.event).collect()
}

async fn delivery(
    s: &impl Storage,
    epoch: &Epoch,
    u: &str,
    c: Option<&str>,
    pos: Position,
) -> DeliveryState {
    s.delivery(
        epoch,
        &[DeliveryTarget {
            user: user(u),
            client: c.map(client),
            namespace: DEFAULT_NAMESPACE.into(),
            pos,
        }],
    )
    .await
    .expect("delivery")[0]
}

/// Waits up to two seconds for a signal matching `want`, skipping others.
async fn expect_signal(
    rx: &mut broadcast::Receiver<Signal>,
    what: &str,
    want: impl Fn(&Signal) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match rx.recv().await {
                Ok(s) if want(&s) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("signal channel closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {what} signal arrived within 2 s");
}

/// The epoch does not change while the data is intact.
pub async fn epoch_is_stable(s: &impl Storage) {
    let a = s.epoch().await.expect("epoch");
    append(s, vec![message("ann", "x", LONG)]).await;
    assert_eq!(
        a,
        s.epoch().await.expect("epoch"),
        "the epoch changed with no data loss"
    );
}

/// Messages come back in append order, with increasing positions, with their event and data.
pub async fn appended_messages_are_read_in_order(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![
            message("ann", "a", LONG),
            message("ann", "b", LONG),
            message("ann", "c", LONG),
        ],
    )
    .await;
    assert!(
        pos[0] > 0 && pos[0] < pos[1] && pos[1] < pos[2],
        "positions must increase: {pos:?}"
    );
    assert!(pos[2] < (1 << 53), "positions must stay below 2^53");
    let b = fetch(s, "ann", "tab1", None).await;
    assert_eq!(b.epoch, epoch);
    assert_eq!(events(&b), ["a", "b", "c"]);
    assert_eq!(b.messages.iter().map(|m| m.pos).collect::<Vec<_>>(), pos);
    assert_eq!(b.messages[1].data.get(), "\"b\"");
    assert_eq!(b.cursor, pos[2], "the cursor is the last position read");
}

/// [`Storage::append_ordered`]: each call's positions come after the previous call's before
/// either is written, and once every [`Persisting`] resolved, all are read,
/// in that order.
pub async fn ordered_appends_keep_their_order_once_written(s: &impl Storage) {
    let mut written = Vec::new();
    let mut order = Vec::new();
    for event in ["a", "b", "c", "d"] {
        let (appended, persisting) = s
            .append_ordered(vec![message("ann", event, LONG)], queue(1000))
            .await
            .expect("append_ordered");
        order.extend(positions(&appended.outcomes));
        written.push(persisting);
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "each ordered append must come after the one before: {order:?}"
    );
    for persisting in written {
        persisting.wait().await.expect("written");
    }
    let b = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&b), ["a", "b", "c", "d"]);
    assert_eq!(b.messages.iter().map(|m| m.pos).collect::<Vec<_>>(), order);
}

/// Positions of one user keep increasing across separate appends, even after the log emptied.
pub async fn positions_keep_increasing_across_appends(s: &impl Storage) {
    let (_, first) = append(s, vec![message("ann", "a", Duration::from_millis(200))]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, second) = append(s, vec![message("ann", "b", LONG)]).await;
    assert!(
        second[0] > first[0],
        "a position was reused or went back: {first:?} then {second:?}"
    );
}

/// A user with no client receives, on first fetch, every message nobody confirmed.
pub async fn an_offline_user_reads_everything_unconfirmed(s: &impl Storage) {
    append(
        s,
        vec![message("bob", "m1", LONG), message("bob", "m2", LONG)],
    )
    .await;
    let b = fetch(s, "bob", "phone", None).await;
    assert_eq!(events(&b), ["m1", "m2"]);
}

/// A confirmed cursor makes messages up to it delivered, and publishes `Confirmed`.
pub async fn confirming_a_cursor_delivers_and_signals(s: &impl Storage) {
    let mut rx = s.subscribe();
    let (epoch, pos) = append(
        s,
        vec![message("ann", "a", LONG), message("ann", "b", LONG)],
    )
    .await;
    let b = fetch(s, "ann", "tab1", None).await;
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Pending,
        "reading is not confirming"
    );
    fetch(s, "ann", "tab1", Some((&b.epoch, pos[0]))).await;
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Delivered
    );
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[1]).await,
        DeliveryState::Pending
    );
    let confirmed = pos[0];
    expect_signal(&mut rx, "Confirmed with its cursor", |s| {
        matches!(s, Signal::Confirmed { epoch: e, user, client, cursor, namespaces }
            if *e == epoch && user.as_str() == "ann" && client.as_str() == "tab1"
                && *cursor == confirmed && namespaces.iter().any(|n| &**n == "/"))
    })
    .await;
}

/// A cursor past the end of the log cannot confirm messages appended later.
pub async fn a_cursor_beyond_the_log_confirms_nothing_later(s: &impl Storage) {
    let (epoch, _) = append(s, vec![message("ann", "a", LONG)]).await;
    fetch(s, "ann", "tab1", Some((&epoch, (1 << 53) - 1))).await;
    let (_, later) = append(s, vec![message("ann", "b", LONG)]).await;
    assert_eq!(
        delivery(s, &epoch, "ann", None, later[0]).await,
        DeliveryState::Pending,
        "a cursor beyond the log confirmed a message appended after it"
    );
}

/// A client seen for the first time skips what another client of the user already confirmed.
pub async fn a_new_client_starts_at_the_watermark(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![message("ann", "a", LONG), message("ann", "b", LONG)],
    )
    .await;
    fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab1", Some((&epoch, pos[0]))).await;
    let b = fetch(s, "ann", "tab2", None).await;
    assert_eq!(
        events(&b),
        ["b"],
        "a new client must start after the user's watermark"
    );
}

/// Two clients of one user both read every message, each by its own cursor.
pub async fn every_client_of_a_user_reads_every_message(s: &impl Storage) {
    fetch(s, "ann", "tab1", None).await;
    let start2 = fetch(s, "ann", "tab2", None).await;
    let (epoch, pos) = append(
        s,
        vec![message("ann", "a", LONG), message("ann", "b", LONG)],
    )
    .await;
    let b1 = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&b1), ["a", "b"]);
    fetch(s, "ann", "tab1", Some((&epoch, pos[1]))).await;
    let b2 = fetch(s, "ann", "tab2", Some((&epoch, start2.cursor))).await;
    assert_eq!(
        events(&b2),
        ["a", "b"],
        "another client's confirmation hid messages from this one"
    );
}

/// A message addressed to one client is read only by that client and confirmed only by it.
pub async fn a_message_for_one_client_is_read_and_confirmed_by_it_alone(s: &impl Storage) {
    let c1 = fetch(s, "ann", "tab1", None).await;
    let c2 = fetch(s, "ann", "tab2", None).await;
    let mut only_tab1 = message("ann", "private", LONG);
    only_tab1.client = Some(client("tab1"));
    let (epoch, pos) = append(s, vec![only_tab1, message("ann", "all", LONG)]).await;
    let b2 = fetch(s, "ann", "tab2", Some((&epoch, c2.cursor))).await;
    assert_eq!(events(&b2), ["all"]);
    assert_eq!(b2.cursor, pos[1]);
    fetch(s, "ann", "tab2", Some((&epoch, b2.cursor))).await;
    assert_eq!(
        delivery(s, &epoch, "ann", Some("tab1"), pos[0]).await,
        DeliveryState::Pending,
        "another client's cursor confirmed a message addressed to tab1"
    );
    let b1 = fetch(s, "ann", "tab1", Some((&epoch, c1.cursor))).await;
    assert_eq!(events(&b1), ["private", "all"]);
    fetch(s, "ann", "tab1", Some((&epoch, pos[0]))).await;
    assert_eq!(
        delivery(s, &epoch, "ann", Some("tab1"), pos[0]).await,
        DeliveryState::Delivered
    );
}

/// A message addressed to a client that has not polled yet still reaches it on its first fetch,
/// even if another client moved the watermark past it.
pub async fn a_new_client_still_gets_messages_addressed_to_it(s: &impl Storage) {
    let mut for_late = message("ann", "for-late", LONG);
    for_late.client = Some(client("late"));
    let (epoch, pos) = append(s, vec![for_late, message("ann", "all", LONG)]).await;
    fetch(s, "ann", "early", None).await;
    fetch(s, "ann", "early", Some((&epoch, pos[1]))).await;
    let b = fetch(s, "ann", "late", None).await;
    assert_eq!(events(&b)[0], "for-late");
}

/// A client confirming a message addressed to it publishes `Confirmed` even when another client
/// already moved the user's watermark past it: its sender waits on that client's cursor.
pub async fn a_client_confirming_its_own_message_behind_the_watermark_signals(s: &impl Storage) {
    let c1 = fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab2", None).await;
    let mut for_tab1 = message("ann", "private", LONG);
    for_tab1.client = Some(client("tab1"));
    let (epoch, pos) = append(s, vec![for_tab1, message("ann", "all", LONG)]).await;
    fetch(s, "ann", "tab2", Some((&epoch, pos[1]))).await;
    let mut rx = s.subscribe();
    fetch(s, "ann", "tab1", Some((&epoch, c1.cursor))).await;
    fetch(s, "ann", "tab1", Some((&epoch, pos[0]))).await;
    let own = pos[0];
    expect_signal(&mut rx, "Confirmed by tab1", |s| {
        matches!(s, Signal::Confirmed { user, client, cursor, .. }
            if user.as_str() == "ann" && client.as_str() == "tab1" && *cursor == own)
    })
    .await;
    assert_eq!(
        delivery(s, &epoch, "ann", Some("tab1"), pos[0]).await,
        DeliveryState::Delivered
    );
}

/// A fetch returns at most `limit` messages, and the cursor picks up where it stopped.
pub async fn the_read_limit_holds_and_the_cursor_continues(s: &impl Storage) {
    let msgs = (0..5)
        .map(|i| message("ann", &format!("m{i}"), LONG))
        .collect();
    let (epoch, pos) = append(s, msgs).await;
    let b = fetch_limit(s, "ann", "tab1", None, 2).await;
    assert_eq!(events(&b), ["m0", "m1"]);
    assert_eq!(b.cursor, pos[1]);
    let b = fetch_limit(s, "ann", "tab1", Some((&epoch, b.cursor)), 2).await;
    assert_eq!(events(&b), ["m2", "m3"]);
    let b = fetch_limit(s, "ann", "tab1", Some((&epoch, b.cursor)), 2).await;
    assert_eq!(events(&b), ["m4"]);
    assert_eq!(b.cursor, pos[4]);
}

/// A cursor from another epoch is not trusted: it confirms nothing.
pub async fn a_stale_epoch_cursor_confirms_nothing(s: &impl Storage) {
    let (epoch, pos) = append(s, vec![message("ann", "a", LONG)]).await;
    let stale = Epoch::new("not-the-current-epoch");
    let b = fetch(s, "ann", "tab1", Some((&stale, pos[0]))).await;
    assert_eq!(b.epoch, epoch, "the fetch must report the current epoch");
    assert_eq!(events(&b), ["a"], "a stale cursor must not skip messages");
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Pending
    );
}

/// A known client that sends no cursor resumes from its recorded one.
pub async fn a_cursor_is_resumed_when_the_client_sends_none(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![message("ann", "a", LONG), message("ann", "b", LONG)],
    )
    .await;
    fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab1", Some((&epoch, pos[0]))).await;
    let b = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&b), ["b"]);
}

/// Expired messages are not read, and a sender learns they expired.
pub async fn expired_messages_are_skipped_and_reported_expired(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![
            message("ann", "short", Duration::from_millis(200)),
            message("ann", "long", LONG),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&b), ["long"]);
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Expired
    );
    assert_eq!(
        delivery(s, &epoch, "nobody", None, 12345).await,
        DeliveryState::Expired
    );
}

/// A log full of undelivered messages refuses more; delivered ones make room first.
pub async fn a_full_queue_refuses_then_evicts_delivered_first(s: &impl Storage) {
    let a = s
        .append(
            vec![
                message("ann", "a", LONG),
                message("ann", "b", LONG),
                message("ann", "c", LONG),
            ],
            queue(2),
        )
        .await
        .expect("append");
    assert!(matches!(a.outcomes[0], AppendOutcome::Stored(_)));
    assert!(matches!(a.outcomes[1], AppendOutcome::Stored(_)));
    assert_eq!(a.outcomes[2], AppendOutcome::QueueFull);
    let pos = positions(&a.outcomes[..2]);
    fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab1", Some((&a.epoch, pos[0]))).await;
    let again = s
        .append(vec![message("ann", "d", LONG)], queue(2))
        .await
        .expect("append");
    assert!(
        matches!(again.outcomes[0], AppendOutcome::Stored(_)),
        "a delivered message was not evicted to make room"
    );
    let b = fetch(s, "ann", "fresh", None).await;
    assert_eq!(events(&b), ["b", "d"]);
}

/// An append tells how many messages the fullest queue among its recipients holds, refused
/// sends included (a storage may not tell: `None`).
pub async fn an_append_reports_the_deepest_queue_of_its_recipients(s: &impl Storage) {
    let a = s
        .append(
            vec![
                message("ann", "a", LONG),
                message("bob", "b", LONG),
                message("ann", "c", LONG),
                message("ann", "d", LONG),
            ],
            queue(10),
        )
        .await
        .expect("append");
    if let Some(deepest) = a.deepest {
        assert_eq!(deepest, 3, "ann's queue holds three");
    }
    let full = s
        .append(
            vec![message("ann", "e", LONG), message("bob", "f", LONG)],
            queue(3),
        )
        .await
        .expect("append");
    assert_eq!(full.outcomes[0], AppendOutcome::QueueFull);
    if a.deepest.is_some() {
        assert_eq!(
            full.deepest,
            Some(3),
            "ann's full queue, though nothing was added to it"
        );
    }
}

/// Delivery asked under an epoch that is not current reports the message lost.
pub async fn delivery_under_another_epoch_is_lost(s: &impl Storage) {
    let (_, pos) = append(s, vec![message("ann", "a", LONG)]).await;
    let other = Epoch::new("some-older-epoch");
    assert_eq!(
        delivery(s, &other, "ann", None, pos[0]).await,
        DeliveryState::Lost
    );
}

/// One user's fetch never reads, nor confirms, another user's log, whatever client id it uses.
pub async fn users_are_isolated(s: &impl Storage) {
    let (epoch, pos) = append(s, vec![message("ann", "secret", LONG)]).await;
    fetch(s, "ann", "tab1", None).await;
    let b = fetch(s, "eve", "tab1", Some((&epoch, pos[0]))).await;
    assert!(b.messages.is_empty(), "eve read ann's messages");
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Pending,
        "eve confirmed ann's message"
    );
    assert_eq!(
        delivery(s, &epoch, "ann", Some("tab1"), pos[0]).await,
        DeliveryState::Pending
    );
}

/// Claim, complete, claim again: the outcome comes back; a lease held blocks; a lapsed lease frees.
pub async fn dedup_claims_complete_and_expire(s: &impl Storage) {
    let key = DedupKey {
        user: user("ann"),
        client: client("tab1"),
        id: MessageId::new("m1").expect("id"),
    };
    assert_eq!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired
    );
    assert!(matches!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::InProgress { .. }
    ));
    s.complete(&key, r#"{"reply":1}"#, Duration::from_millis(300))
        .await
        .expect("complete");
    assert_eq!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::Done(r#"{"reply":1}"#.into())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.claim(&key, owner(), lease(Duration::from_millis(200)))
            .await
            .expect("claim"),
        Claim::Acquired,
        "a dedup record outlived its ttl"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired,
        "a lapsed lease still blocked the message"
    );
}

/// The same message id under another user or client is another record.
pub async fn dedup_keys_are_scoped_by_user_and_client(s: &impl Storage) {
    let id = MessageId::new("m1").expect("id");
    let ann = DedupKey {
        user: user("ann"),
        client: client("tab1"),
        id: id.clone(),
    };
    s.claim(&ann, owner(), lease(LONG)).await.expect("claim");
    s.complete(&ann, "\"done\"", LONG).await.expect("complete");
    let eve = DedupKey {
        user: user("eve"),
        client: client("tab1"),
        id: id.clone(),
    };
    assert_eq!(
        s.claim(&eve, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired,
        "eve saw ann's dedup record"
    );
    let tab2 = DedupKey {
        user: user("ann"),
        client: client("tab2"),
        id,
    };
    assert_eq!(
        s.claim(&tab2, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired
    );
}

/// An append publishes one `Appended` naming each user once, and completions publish
/// `Completed`, for the right user.
pub async fn appends_and_completions_are_signalled(s: &impl Storage) {
    let mut rx = s.subscribe();
    append(
        s,
        vec![
            message("ann", "a", LONG),
            message("bob", "a", LONG),
            message("ann", "b", LONG),
        ],
    )
    .await;
    expect_signal(&mut rx, "one Appended for ann and bob", |s| {
        matches!(s, Signal::Appended { users } if {
            let mut names: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
            names.sort_unstable();
            names == ["ann", "bob"]
        })
    })
    .await;
    let key = DedupKey {
        user: user("bob"),
        client: client("tab1"),
        id: MessageId::new("m1").expect("id"),
    };
    s.claim(&key, owner(), lease(LONG)).await.expect("claim");
    s.complete(&key, "null", LONG).await.expect("complete");
    expect_signal(
        &mut rx,
        "Completed",
        |s| matches!(s, Signal::Completed { user } if user.as_str() == "bob"),
    )
    .await;
}

/// Published signals, with their payloads, reach subscribers.
pub async fn published_signals_reach_subscribers(s: &impl Storage) {
    let mut rx = s.subscribe();
    let recipients: Arc<[Member]> = Arc::from([
        Member::client("ann", client("tab1")),
        Member::User(user("bob")),
    ]);
    s.publish(Signal::Volatile {
        recipients: recipients.clone(),
        namespace: "/chat".into(),
        event: "typing".into(),
        data: data(r#"{"x":1}"#),
    })
    .await
    .expect("publish");
    expect_signal(&mut rx, "Volatile", |s| {
        matches!(s, Signal::Volatile { recipients: r, namespace, event, data }
            if **r == *recipients && &**namespace == "/chat"
                && &**event == "typing" && data.get() == r#"{"x":1}"#)
    })
    .await;
    s.publish(Signal::PollStarted {
        user: user("ann"),
        client: client("tab1"),
        poll: 7,
    })
    .await
    .expect("publish");
    expect_signal(&mut rx, "PollStarted", |s| {
        matches!(s, Signal::PollStarted { poll: 7, .. })
    })
    .await;
}

/// A fetch marks its user live for the presence TTL, and only for it.
pub async fn live_users_follow_presence(s: &impl Storage) {
    s.fetch(FetchRequest {
        user: user("ann"),
        client: client("tab1"),
        cursor: None,
        namespaces: namespaces(&[DEFAULT_NAMESPACE]),
        limit: 10,
        presence_ttl: Duration::from_millis(300),
        announce: None,
        max_clients: MANY,
    })
    .await
    .expect("fetch");
    fetch(s, "bob", "tab1", None).await;
    let mut live = s.live_users().await.expect("live users");
    live.sort();
    assert_eq!(live, [user("ann"), user("bob")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.live_users().await.expect("live users"),
        [user("bob")],
        "presence outlived its ttl"
    );
}

/// Concurrent appends to one user get unique positions, and each call's messages stay in order.
pub async fn concurrent_appends_keep_positions_unique_and_ordered(s: &impl Storage) {
    let sends = (0..8).map(|w| async move {
        let msgs = (0..10)
            .map(|i| message("ann", &format!("w{w}-{i}"), LONG))
            .collect();
        append(s, msgs).await.1
    });
    let all: Vec<Vec<Position>> = futures_util::future::join_all(sends).await;
    let mut flat: Vec<Position> = all.iter().flatten().copied().collect();
    for run in &all {
        assert!(
            run.windows(2).all(|w| w[0] < w[1]),
            "one append's positions are out of order"
        );
    }
    flat.sort_unstable();
    flat.dedup();
    assert_eq!(flat.len(), 80, "two messages got the same position");
    let b = fetch_limit(s, "ann", "tab1", None, 1000).await;
    assert_eq!(b.messages.len(), 80);
    for w in 0..8 {
        let mine: Vec<&str> = b
            .messages
            .iter()
            .map(|m| &*m.event)
            .filter(|e| e.starts_with(&format!("w{w}-")))
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(mine, expected, "a sender's messages were read out of order");
    }
}

async fn fetch_in(
    s: &impl Storage,
    u: &str,
    c: &str,
    cursor: Option<(&Epoch, Position)>,
    ns: &[&str],
) -> FetchBatch {
    s.fetch(FetchRequest {
        user: user(u),
        client: client(c),
        cursor: cursor.map(|(e, p)| (e.clone(), p)),
        namespaces: namespaces(ns),
        limit: 100,
        presence_ttl: PRESENCE,
        announce: None,
        max_clients: MANY,
    })
    .await
    .expect("fetch")
}

async fn fetch_with_presence(s: &impl Storage, u: &str, c: &str, presence: Duration) -> FetchBatch {
    s.fetch(FetchRequest {
        user: user(u),
        client: client(c),
        cursor: None,
        namespaces: namespaces(&[DEFAULT_NAMESPACE]),
        limit: 100,
        presence_ttl: presence,
        announce: None,
        max_clients: MANY,
    })
    .await
    .expect("fetch")
}

/// A client reads the messages of the namespaces it asks for, and skips the others.
pub async fn a_client_reads_only_its_namespaces(s: &impl Storage) {
    append(
        s,
        vec![
            message("ann", "root", LONG),
            in_namespace(message("ann", "chat", LONG), "/chat"),
            in_namespace(message("ann", "news", LONG), "/news"),
        ],
    )
    .await;
    let b = fetch_in(s, "ann", "tab1", None, &["/", "/chat"]).await;
    assert_eq!(events(&b), ["root", "chat"]);
    assert_eq!(
        &*b.messages[1].ns, "/chat",
        "a message must say its namespace"
    );
    let b = fetch_in(s, "ann", "tab2", None, &["/news"]).await;
    assert_eq!(events(&b), ["news"]);
}

/// A client's cursor confirms only messages of namespaces it reads: skipping a namespace's
/// message is not receiving it.
pub async fn confirmation_counts_only_in_the_namespaces_a_client_reads(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![
            in_namespace(message("ann", "news", LONG), "/news"),
            message("ann", "root", LONG),
        ],
    )
    .await;
    fetch_in(s, "ann", "tab1", None, &["/"]).await;
    fetch_in(s, "ann", "tab1", Some((&epoch, pos[1])), &["/"]).await;
    let news = DeliveryTarget {
        user: user("ann"),
        client: None,
        namespace: "/news".into(),
        pos: pos[0],
    };
    let root = DeliveryTarget {
        user: user("ann"),
        client: None,
        namespace: "/".into(),
        pos: pos[1],
    };
    let states = s.delivery(&epoch, &[news, root]).await.expect("delivery");
    assert_eq!(
        states,
        [DeliveryState::Pending, DeliveryState::Delivered],
        "a client confirmed a namespace it does not read"
    );
    let b = fetch_in(s, "ann", "tab2", None, &["/news"]).await;
    assert_eq!(
        events(&b),
        ["news"],
        "a client of the namespace must still receive it"
    );
}

/// A new client subscribed to several namespaces starts at the lowest of their watermarks, so
/// it misses nothing unconfirmed in any of them.
pub async fn a_new_client_starts_at_its_lowest_namespace_watermark(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![
            in_namespace(message("ann", "chat", LONG), "/chat"),
            message("ann", "root", LONG),
        ],
    )
    .await;
    fetch_in(s, "ann", "tab1", None, &["/"]).await;
    fetch_in(s, "ann", "tab1", Some((&epoch, pos[1])), &["/"]).await;
    let b = fetch_in(s, "ann", "tab2", None, &["/", "/chat"]).await;
    // "root" was confirmed: a storage may have trimmed it, or may still hand it out after
    // "chat". What no new client may miss is the unconfirmed "chat".
    let got = events(&b);
    assert!(
        got == ["chat", "root"] || got == ["chat"],
        "expected the unconfirmed message first, got {got:?}"
    );
}

/// The fetch that makes a client live reports its arrival, and whether its user came online;
/// later fetches report nothing.
pub async fn the_first_fetch_reports_an_arrival_once(s: &impl Storage) {
    let first = fetch(s, "ann", "tab1", None).await;
    assert_eq!(
        first.arrival,
        Some(Arrival {
            user_came_online: true
        })
    );
    let again = fetch(s, "ann", "tab1", Some((&first.epoch, first.cursor))).await;
    assert_eq!(again.arrival, None, "an arrival was reported twice");
    let second_tab = fetch(s, "ann", "tab2", None).await;
    assert_eq!(
        second_tab.arrival,
        Some(Arrival {
            user_came_online: false
        })
    );
}

/// Clients whose presence passed are reaped once, the last of a user marked as the user going
/// offline; a client that keeps polling is not reaped.
pub async fn reaping_reports_each_departure_once(s: &impl Storage) {
    let short = Duration::from_millis(300);
    fetch_with_presence(s, "ann", "tab1", short).await;
    fetch_with_presence(s, "ann", "tab2", short).await;
    fetch_with_presence(s, "bob", "tab1", short).await;
    fetch(s, "cat", "tab1", None).await;
    assert!(
        s.reap().await.expect("reap").is_empty(),
        "live clients were reaped"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (first, second) = tokio::join!(s.reap(), s.reap());
    let mut gone: Vec<Departure> = first
        .expect("reap")
        .into_iter()
        .chain(second.expect("reap"))
        .collect();
    gone.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
    assert_eq!(
        gone.len(),
        3,
        "each departure must be reported exactly once: {gone:?}"
    );
    assert_eq!(
        gone.iter()
            .filter(|d| d.user.as_str() == "ann" && d.user_went_offline)
            .count(),
        1,
        "ann went offline once: {gone:?}"
    );
    assert!(
        gone.iter()
            .any(|d| d.user.as_str() == "bob" && d.user_went_offline)
    );
    assert!(
        s.reap().await.expect("reap").is_empty(),
        "a departure was reported again"
    );
    assert_eq!(s.live_users().await.expect("live"), [user("cat")]);
    let back = fetch(s, "ann", "tab1", None).await;
    assert_eq!(
        back.arrival,
        Some(Arrival {
            user_came_online: true
        }),
        "a reaped client that returns arrives again"
    );
}

/// A reaped client leaves its rooms and loses its data; a user's own memberships stay, and the
/// user's data goes when their last client does.
pub async fn reaping_drops_a_clients_rooms_and_data(s: &impl Storage) {
    let short = Duration::from_millis(300);
    fetch_with_presence(s, "ann", "tab1", short).await;
    let tab = Member::Client(user("ann"), client("tab1"));
    s.join("lobby", &tab, short).await.expect("join");
    s.join("lobby", &Member::User(user("ann")), short)
        .await
        .expect("join");
    s.set_data(&tab, "nick", Some("\"annie\""), short)
        .await
        .expect("set");
    s.set_data(&Member::User(user("ann")), "lang", Some("\"fr\""), short)
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.reap().await.expect("reap");
    assert_eq!(
        s.members("lobby").await.expect("members"),
        [Member::User(user("ann"))]
    );
    assert_eq!(
        s.get_data(&tab, "nick").await.expect("get"),
        None,
        "a reaped client kept its data"
    );
    assert_eq!(
        s.get_data(&Member::User(user("ann")), "lang")
            .await
            .expect("get"),
        None,
        "an offline user kept their data"
    );
}

/// Rooms hold users and single clients; joining twice is once; leaving removes.
pub async fn rooms_hold_users_and_clients(s: &impl Storage) {
    let tab = Member::Client(user("bob"), client("tab9"));
    s.join("lobby", &Member::User(user("ann")), PRESENCE)
        .await
        .expect("join");
    s.join("lobby", &Member::User(user("ann")), PRESENCE)
        .await
        .expect("join");
    s.join("lobby", &tab, PRESENCE).await.expect("join");
    s.join("games", &Member::User(user("ann")), PRESENCE)
        .await
        .expect("join");
    let mut members = s.members("lobby").await.expect("members");
    members.sort();
    assert_eq!(members, [Member::User(user("ann")), tab.clone()]);
    let mut rooms: Vec<String> = s
        .rooms(&Member::User(user("ann")))
        .await
        .expect("rooms")
        .iter()
        .map(|r| r.to_string())
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["games", "lobby"]);
    s.leave("lobby", &Member::User(user("ann")))
        .await
        .expect("leave");
    assert_eq!(s.members("lobby").await.expect("members"), [tab]);
    assert!(s.members("nowhere").await.expect("members").is_empty());
}

/// Data is set, read, replaced and removed per member and key, and members do not share it.
pub async fn data_is_kept_per_member(s: &impl Storage) {
    fetch(s, "ann", "tab1", None).await;
    let tab = Member::Client(user("ann"), client("tab1"));
    let other = Member::Client(user("ann"), client("tab2"));
    s.set_data(&tab, "nick", Some("\"annie\""), PRESENCE)
        .await
        .expect("set");
    s.set_data(&tab, "nick", Some("\"ann\""), PRESENCE)
        .await
        .expect("set");
    assert_eq!(
        s.get_data(&tab, "nick").await.expect("get").as_deref(),
        Some("\"ann\"")
    );
    assert_eq!(s.get_data(&other, "nick").await.expect("get"), None);
    assert_eq!(
        s.get_data(&Member::User(user("ann")), "nick")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        s.get_data(&Member::Client(user("eve"), client("tab1")), "nick")
            .await
            .expect("get"),
        None,
        "another user's client with the same id saw the data"
    );
    s.set_data(&tab, "nick", None, PRESENCE)
        .await
        .expect("remove");
    assert_eq!(s.get_data(&tab, "nick").await.expect("get"), None);
}

/// A client that a room or data was attached to before its first poll is not live, and arrives
/// with that poll; `live_clients` lists exactly the clients that polled within their TTL.
pub async fn a_client_known_only_from_join_or_data_arrives_on_its_first_poll(s: &impl Storage) {
    let tab1 = Member::Client(user("ann"), client("tab1"));
    let tab2 = Member::Client(user("ann"), client("tab2"));
    s.join("lobby", &tab1, PRESENCE).await.expect("join");
    s.set_data(&tab2, "nick", Some("\"ann\""), PRESENCE)
        .await
        .expect("set");
    assert!(
        s.live_clients(&user("ann")).await.expect("live").is_empty(),
        "a client that never polled counts as live"
    );
    assert!(s.live_users().await.expect("live").is_empty());
    let first = fetch(s, "ann", "tab1", None).await;
    assert_eq!(
        first.arrival,
        Some(Arrival {
            user_came_online: true
        }),
        "a client known only from join must arrive with its first poll"
    );
    let second = fetch(s, "ann", "tab2", None).await;
    assert_eq!(
        second.arrival,
        Some(Arrival {
            user_came_online: false
        })
    );
    assert_eq!(
        s.get_data(&tab2, "nick").await.expect("get").as_deref(),
        Some("\"ann\""),
        "data set before the first poll was lost"
    );
    assert_eq!(s.members("lobby").await.expect("members"), [tab1]);
    fetch_with_presence(s, "ann", "tab3", Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut live = s.live_clients(&user("ann")).await.expect("live");
    live.sort();
    assert_eq!(
        live,
        [client("tab1"), client("tab2")],
        "live clients must be those that polled within their presence TTL"
    );
    assert!(s.live_clients(&user("bob")).await.expect("live").is_empty());
}

/// A client known only from `join` or `set_data` whose TTL passed is removed with its rooms and
/// data, but reported as no departure: it never arrived.
pub async fn a_client_that_never_polled_is_reaped_without_a_departure(s: &impl Storage) {
    let short = Duration::from_millis(300);
    let tab = Member::Client(user("bob"), client("tab1"));
    s.join("lobby", &tab, short).await.expect("join");
    s.set_data(&tab, "nick", Some("1"), short)
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.reap().await.expect("reap").is_empty(),
        "a client that never polled departed"
    );
    assert!(
        s.members("lobby").await.expect("members").is_empty(),
        "a reaped client stayed in its room"
    );
    assert!(s.rooms(&tab).await.expect("rooms").is_empty());
    assert_eq!(s.get_data(&tab, "nick").await.expect("get"), None);
}

/// A client whose record was made by `set_data` (or `join`) before its first poll still starts
/// that poll at the watermark, like any client seen for the first time.
pub async fn a_client_known_only_from_data_starts_at_the_watermark(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![message("ann", "a", LONG), message("ann", "b", LONG)],
    )
    .await;
    fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab1", Some((&epoch, pos[1]))).await;
    let tab2 = Member::Client(user("ann"), client("tab2"));
    s.set_data(&tab2, "nick", Some("\"annie\""), PRESENCE)
        .await
        .expect("set");
    let b = fetch(s, "ann", "tab2", None).await;
    assert!(
        b.messages.is_empty(),
        "a client known only from its data replayed the log: {:?}",
        events(&b)
    );
}

/// A fetch with an announcement publishes `PollStarted` for its user, client and poll id; one
/// without publishes none.
pub async fn a_fetch_announces_its_poll(s: &impl Storage) {
    let mut rx = s.subscribe();
    let request = |announce| FetchRequest {
        user: user("ann"),
        client: client("tab1"),
        cursor: None,
        namespaces: namespaces(&[DEFAULT_NAMESPACE]),
        limit: 10,
        presence_ttl: PRESENCE,
        announce,
        max_clients: MANY,
    };
    for announce in [Some(41), None, Some(42)] {
        s.fetch(request(announce)).await.expect("fetch");
    }
    let mut announced = Vec::new();
    while announced.len() < 2 {
        let signal = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("the announcements arrive within 2 s")
            .expect("the signal channel is open");
        if let Signal::PollStarted { user, client, poll } = signal {
            assert_eq!((user.as_str(), client.as_str()), ("ann", "tab1"));
            announced.push(poll);
        }
    }
    assert_eq!(
        announced,
        [41, 42],
        "a fetch without an announcement announced something"
    );
}

/// With thousands of messages in a log, a fetch from any cursor reads just what follows it, and
/// confirmations and delivery answers stay exact at both ends.
pub async fn a_long_history_reads_and_confirms_from_any_point(s: &impl Storage) {
    const N: usize = 3_000;
    let mut pos = Vec::with_capacity(N);
    let mut epoch = None;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let msgs = chunk
            .iter()
            .map(|i| message("ann", &format!("m{i}"), LONG))
            .collect();
        let (e, p) = append_with_queue(s, msgs, N).await;
        epoch = Some(e);
        pos.extend(p);
    }
    let epoch = epoch.expect("appended");
    let first = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&first).first(), Some(&"m0"));
    let middle = fetch_limit(s, "ann", "tab1", Some((&epoch, pos[N / 2])), 3).await;
    assert_eq!(
        events(&middle),
        [
            format!("m{}", N / 2 + 1),
            format!("m{}", N / 2 + 2),
            format!("m{}", N / 2 + 3)
        ]
    );
    assert_eq!(middle.cursor, pos[N / 2 + 3]);
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[N / 2]).await,
        DeliveryState::Delivered
    );
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[N / 2 + 1]).await,
        DeliveryState::Pending
    );
    let end = fetch(s, "ann", "tab1", Some((&epoch, pos[N - 2]))).await;
    assert_eq!(events(&end), [format!("m{}", N - 1)]);
    fetch(s, "ann", "tab1", Some((&epoch, pos[N - 1]))).await;
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[N - 1]).await,
        DeliveryState::Delivered
    );
    let fresh = fetch(s, "ann", "tab2", None).await;
    assert!(fresh.messages.is_empty(), "a new client starts past it all");
}

/// One append to thousands of users gives each exactly one message and publishes one
/// `Appended` that names every one of them.
pub async fn a_broadcast_to_thousands_reaches_each_once_with_one_signal(s: &impl Storage) {
    const USERS: usize = 2_000;
    let mut rx = s.subscribe();
    let shared = data(r#"{"text":"to all"}"#);
    let msgs: Vec<NewMessage> = (0..USERS)
        .map(|i| NewMessage {
            data: shared.clone(),
            ..message(&format!("u{i}"), "news", LONG)
        })
        .collect();
    let (epoch, pos) = append(s, msgs).await;
    assert_eq!(pos.len(), USERS);
    let mut named = std::collections::HashSet::new();
    let mut appended_signals = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while named.len() < USERS {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(Signal::Appended { users })) => {
                appended_signals += 1;
                named.extend(users.iter().map(|u| u.as_str().to_owned()));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("signals: {e}"),
            Err(_) => panic!("only {} of {USERS} users were signalled", named.len()),
        }
    }
    assert_eq!(appended_signals, 1, "one append call, one signal");
    for i in [0, USERS / 2, USERS - 1] {
        let u = format!("u{i}");
        let b = fetch(s, &u, "tab1", None).await;
        assert_eq!(events(&b), ["news"], "{u} reads the broadcast once");
        assert_eq!(b.messages[0].data.get(), shared.get());
        fetch(s, &u, "tab1", Some((&epoch, b.cursor))).await;
        assert_eq!(
            delivery(s, &epoch, &u, None, pos[i]).await,
            DeliveryState::Delivered
        );
    }
    assert_eq!(
        delivery(s, &epoch, "u1", None, pos[1]).await,
        DeliveryState::Pending,
        "the others are still waiting"
    );
}

/// A subscriber that stops reading falls behind and is told so (`Lagged`, which simpleio turns
/// into a resync), while storage keeps answering exactly: nothing stored depends on signals. A
/// storage may first wait a while for it to read (`DurableStorage` does, up to a second), but
/// not for ever.
pub async fn a_lagging_subscriber_is_told_and_storage_still_answers(s: &impl Storage) {
    const MESSAGES: usize = 1_000;
    // More signals than any subscription here holds; published 100 at a time.
    const FLOOD: usize = 20_000;
    let mut rx = s.subscribe();
    let mut last = (None, 0);
    for i in 0..MESSAGES {
        let msg = message("ann", &format!("m{i}"), LONG);
        let (epoch, pos) = append_with_queue(s, vec![msg], 10_000).await;
        last = (Some(epoch), pos[0]);
    }
    for round in 0..FLOOD / 100 {
        let signals = (0..100).map(|i| {
            s.publish(Signal::PollStarted {
                user: user("bob"),
                client: client("tab1"),
                poll: (round * 100 + i) as u64,
            })
        });
        for published in futures_util::future::join_all(signals).await {
            published.expect("publish");
        }
    }
    let (epoch, pos) = (last.0.expect("appended"), last.1);
    // Storage answers while the subscriber still reads nothing.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let b = fetch_limit(s, "ann", "tab1", None, 10_000).await;
        assert_eq!(b.messages.len(), MESSAGES);
        fetch(s, "ann", "tab1", Some((&epoch, b.cursor))).await;
        assert_eq!(
            delivery(s, &epoch, "ann", None, pos).await,
            DeliveryState::Delivered
        );
        b.cursor
    })
    .await;
    let Ok(cursor) = answered else {
        panic!("storage stopped answering for a subscriber that reads nothing");
    };
    let lagged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(
        lagged,
        Ok(true),
        "20,000 unread signals must overflow a bounded subscription"
    );
    // And once it lagged: a new message is stored and read after the ones read before.
    let (_, after) = append_with_queue(s, vec![message("ann", "after", LONG)], 10_000).await;
    let b = fetch(s, "ann", "tab1", Some((&epoch, cursor))).await;
    assert_eq!(
        b.messages.iter().map(|m| m.pos).collect::<Vec<_>>(),
        after,
        "after the lag"
    );
}

/// A sender at its share of a recipient's queue is refused while others still get in, and
/// its delivered messages make room for more of its own.
pub async fn a_sender_fills_only_its_share_of_a_queue(s: &impl Storage) {
    let limits = QueueLimits {
        per_sender: 3,
        ..queue(10)
    };
    let flood: Vec<NewMessage> = (0..5)
        .map(|i| from("eve", message("ann", &format!("e{i}"), LONG)))
        .collect();
    let a = s.append(flood, limits).await.expect("append");
    let stored = a
        .outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Stored(_)))
        .count();
    assert_eq!(
        stored, 3,
        "a sender got more than its share of a queue: {:?}",
        a.outcomes
    );
    assert_eq!(a.outcomes[3], AppendOutcome::QueueFull);
    let others = s
        .append(
            vec![
                from("bob", message("ann", "b0", LONG)),
                message("ann", "server", LONG),
            ],
            limits,
        )
        .await
        .expect("append");
    assert!(
        others
            .outcomes
            .iter()
            .all(|o| matches!(o, AppendOutcome::Stored(_))),
        "one sender's flood kept others out: {:?}",
        others.outcomes
    );
    // ann reads and confirms eve's first message: eve may send one more.
    let first = positions(&a.outcomes[..1])[0];
    fetch(s, "ann", "tab1", None).await;
    fetch(s, "ann", "tab1", Some((&a.epoch, first))).await;
    let again = s
        .append(vec![from("eve", message("ann", "e5", LONG))], limits)
        .await
        .expect("append");
    assert!(
        matches!(again.outcomes[0], AppendOutcome::Stored(_)),
        "a delivered message did not free its sender's share"
    );
    let refused = s
        .append(vec![from("eve", message("ann", "e6", LONG))], limits)
        .await
        .expect("append");
    assert_eq!(refused.outcomes[0], AppendOutcome::QueueFull);
    let b = fetch(s, "ann", "fresh", None).await;
    assert!(!events(&b).contains(&"e6"), "a refused message was stored");
}

fn dedup_key(u: &str, c: &str, id: &str) -> DedupKey {
    DedupKey {
        user: user(u),
        client: client(c),
        id: MessageId::new(id).expect("id"),
    }
}

/// A client (or user) at its dedup limit forgets its oldest completed record for a new one,
/// and refuses a new one while that oldest is still in progress.
pub async fn dedup_records_are_bounded_per_client_and_per_user(s: &impl Storage) {
    let limits = DedupLimits {
        lease: LONG,
        per_client: 3,
        per_user: 5,
    };
    for i in 0..3 {
        let key = dedup_key("ann", "tab1", &format!("m{i}"));
        assert_eq!(
            s.claim(&key, owner(), limits).await.expect("claim"),
            Claim::Acquired
        );
        s.complete(&key, "1", LONG).await.expect("complete");
    }
    let m3 = dedup_key("ann", "tab1", "m3");
    assert_eq!(
        s.claim(&m3, owner(), limits).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s.claim(&dedup_key("ann", "tab1", "m1"), owner(), limits)
            .await
            .expect("claim"),
        Claim::Done("1".into()),
        "a record was forgotten before the oldest"
    );
    assert_eq!(
        s.claim(&dedup_key("ann", "tab1", "m0"), owner(), limits)
            .await
            .expect("claim"),
        Claim::Acquired,
        "the oldest record of a client at its limit was not forgotten"
    );
    // tab1 now holds m1 (done), m3 and m0 (in progress). m1 goes for m4; then m3 is the
    // oldest, in progress, and a new one is refused.
    assert_eq!(
        s.claim(&dedup_key("ann", "tab1", "m4"), owner(), limits)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    match s
        .claim(&dedup_key("ann", "tab1", "m5"), owner(), limits)
        .await
    {
        Err(StorageError::Limit(Limit::DedupRecords(_))) => {}
        other => panic!("a claim past a client's limit with its oldest in progress gave {other:?}"),
    }
    // Per user: tab2 and tab3 add records until ann holds 5; then ann's oldest (tab1's m3,
    // in progress) refuses a new one from any client.
    for (c, id) in [("tab2", "n0"), ("tab2", "n1")] {
        let key = dedup_key("ann", c, id);
        assert_eq!(
            s.claim(&key, owner(), limits).await.expect("claim"),
            Claim::Acquired
        );
        s.complete(&key, "2", LONG).await.expect("complete");
    }
    match s
        .claim(&dedup_key("ann", "tab3", "o0"), owner(), limits)
        .await
    {
        Err(StorageError::Limit(Limit::DedupRecords(_))) => {}
        other => panic!("a claim past a user's limit with their oldest in progress gave {other:?}"),
    }
    assert_eq!(
        s.claim(&dedup_key("bob", "tab1", "m9"), owner(), limits)
            .await
            .expect("claim"),
        Claim::Acquired,
        "one user's records limited another's"
    );
}

/// Completing a record with a ttl of zero forgets it: the message is handled again.
pub async fn a_record_completed_with_no_ttl_is_handled_again(s: &impl Storage) {
    let key = dedup_key("ann", "tab1", "m1");
    let mut signals = s.subscribe();
    assert_eq!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired
    );
    s.complete(&key, "null", Duration::ZERO)
        .await
        .expect("complete");
    assert_eq!(
        s.claim(&key, owner(), lease(LONG)).await.expect("claim"),
        Claim::Acquired,
        "a record completed with no ttl was kept"
    );
    expect_signal(
        &mut signals,
        "Completed for ann",
        |sig| matches!(sig, Signal::Completed { user } if user.as_str() == "ann"),
    )
    .await;
}

/// A user at `max_clients` gets no new client, while known ones keep polling.
pub async fn a_user_has_at_most_max_clients(s: &impl Storage) {
    let request = |c: &str| FetchRequest {
        user: user("ann"),
        client: client(c),
        cursor: None,
        namespaces: namespaces(&[DEFAULT_NAMESPACE]),
        limit: 10,
        presence_ttl: PRESENCE,
        announce: None,
        max_clients: 2,
    };
    s.fetch(request("tab1")).await.expect("fetch");
    s.fetch(request("tab2")).await.expect("fetch");
    match s.fetch(request("tab3")).await {
        Err(StorageError::Limit(Limit::ClientsPerUser(2))) => {}
        other => panic!("a third client of a user limited to two gave {other:?}"),
    }
    s.fetch(request("tab1"))
        .await
        .expect("a known client is still served");
    let mut eve = request("tab3");
    eve.user = user("eve");
    s.fetch(eve)
        .await
        .expect("another user is not limited by ann's clients");
    let live = s.live_clients(&user("ann")).await.expect("live");
    assert_eq!(live.len(), 2, "the refused client was recorded: {live:?}");
}

/// A cursor beyond the log's last position reads as that position: the client does not skip
/// messages appended after it, and its cursor comes back at the log's end.
pub async fn a_cursor_beyond_the_log_reads_from_its_end(s: &impl Storage) {
    let (epoch, pos) = append(s, vec![message("ann", "a", LONG)]).await;
    fetch(s, "ann", "tab1", None).await;
    let b = fetch(s, "ann", "tab1", Some((&epoch, (1 << 53) - 1))).await;
    assert!(b.messages.is_empty());
    assert_eq!(
        b.cursor, pos[0],
        "the cursor came back beyond the log's end"
    );
    append(s, vec![message("ann", "b", LONG)]).await;
    let b = fetch(s, "ann", "tab1", Some((&epoch, b.cursor))).await;
    assert_eq!(
        events(&b),
        ["b"],
        "a message after a far cursor was skipped"
    );
}

/// A message of `size` bytes of data (a JSON string), to `to`.
fn sized(to: &str, event: &str, size: usize) -> NewMessage {
    let mut m = message(to, event, LONG);
    m.data = data(&format!("\"{}\"", "x".repeat(size - 2)));
    m
}

/// The bytes of a user's queue are bounded, in all and per sender, as its count is; delivered
/// messages make room.
pub async fn a_queue_is_bounded_in_bytes_too(s: &impl Storage) {
    let limits = QueueLimits {
        bytes_per_user: 1_000,
        bytes_per_sender: 400,
        ..queue(MANY)
    };
    let a = s
        .append(
            vec![
                from("eve", sized("ann", "e0", 200)),
                from("eve", sized("ann", "e1", 200)),
                from("eve", sized("ann", "e2", 200)),
            ],
            limits,
        )
        .await
        .expect("append");
    assert!(matches!(a.outcomes[1], AppendOutcome::Stored(_)));
    assert_eq!(
        a.outcomes[2],
        AppendOutcome::QueueFull,
        "a sender got more than its share of a queue's bytes"
    );
    let b = s
        .append(
            vec![sized("ann", "s0", 500), sized("ann", "s1", 200)],
            limits,
        )
        .await
        .expect("append");
    assert!(matches!(b.outcomes[0], AppendOutcome::Stored(_)));
    assert_eq!(
        b.outcomes[1],
        AppendOutcome::QueueFull,
        "a queue held more bytes than its limit"
    );
    // ann reads and confirms everything: the bytes are free again.
    let first = fetch(s, "ann", "tab1", None).await;
    assert_eq!(events(&first), ["e0", "e1", "s0"]);
    fetch(s, "ann", "tab1", Some((&first.epoch, first.cursor))).await;
    let c = s
        .append(vec![sized("ann", "s2", 900)], limits)
        .await
        .expect("append");
    assert!(
        matches!(c.outcomes[0], AppendOutcome::Stored(_)),
        "delivered messages did not free their bytes"
    );
}

/// The owner of a claim gets it again (its first answer may have been lost); others are told
/// how long its lease has left; renewing keeps it, and only its owner can.
pub async fn a_claim_is_resumed_by_its_owner_and_renewed_while_held(s: &impl Storage) {
    let key = dedup_key("ann", "tab1", "m1");
    let short = lease(Duration::from_millis(400));
    assert_eq!(
        s.claim(&key, 7, short).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s.claim(&key, 7, short).await.expect("claim"),
        Claim::Acquired,
        "the owner of a claim was not given it again"
    );
    match s.claim(&key, 8, short).await.expect("claim") {
        Claim::InProgress { retry_after } => assert!(
            retry_after <= Duration::from_millis(400) && retry_after > Duration::ZERO,
            "retry_after {retry_after:?} is not what the lease has left"
        ),
        other => panic!("another owner got {other:?}"),
    }
    assert!(
        !s.renew(&key, 8, Duration::from_secs(10))
            .await
            .expect("renew"),
        "a claim was renewed by another owner"
    );
    // Renewed past its first lease, it still holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.renew(&key, 7, Duration::from_millis(800))
            .await
            .expect("renew")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        matches!(
            s.claim(&key, 8, short).await.expect("claim"),
            Claim::InProgress { .. }
        ),
        "a renewed lease ended at its first deadline"
    );
    // Not renewed, it lapses; completed, it cannot be renewed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.claim(&key, 8, short).await.expect("claim"),
        Claim::Acquired,
        "a lapsed lease still held"
    );
    s.complete(&key, "1", LONG).await.expect("complete");
    assert!(
        !s.renew(&key, 8, LONG).await.expect("renew"),
        "a completed record was renewed"
    );
    assert_eq!(
        s.claim(&key, 8, short).await.expect("claim"),
        Claim::Done("1".into())
    );
}

/// A message whose origin the user's log remembers is not stored again, even once the first
/// was delivered and trimmed: its append answers the first one's position. Origins are per
/// user, and a log remembers a bounded number of them.
pub async fn a_send_with_a_known_origin_is_stored_once(s: &impl Storage) {
    let named = |to: &str, event: &str, origin: &str| NewMessage {
        origin: Some(origin.into()),
        ..from("ann", message(to, event, LONG))
    };
    let (epoch, first) = append(s, vec![named("bob", "a", "o1"), named("bob", "b", "o2")]).await;
    let (_, again) = append(s, vec![named("bob", "a", "o1"), named("bob", "c", "o3")]).await;
    assert_eq!(again[0], first[0], "a known origin was stored again");
    assert!(
        again[1] > first[1],
        "a new origin was not stored after the others"
    );
    let read = fetch(s, "bob", "b1", None).await;
    assert_eq!(
        events(&read),
        ["a", "b", "c"],
        "a repeated send was stored twice"
    );
    // Delivered and trimmed: still remembered.
    fetch(s, "bob", "b1", Some((&epoch, read.cursor))).await;
    let (_, later) = append(s, vec![named("bob", "a", "o1")]).await;
    assert_eq!(later[0], first[0], "a delivered send was stored again");
    assert!(
        fetch(s, "bob", "b1", Some((&epoch, read.cursor)))
            .await
            .messages
            .is_empty()
    );
    // Another user's log does not know it; a message with no origin is always stored.
    append(s, vec![named("carol", "a", "o1")]).await;
    assert_eq!(
        events(&fetch(s, "carol", "c1", None).await),
        ["a"],
        "an origin of another user's log kept a message from being stored"
    );
    let plain = from("ann", message("bob", "a", LONG));
    let (_, p1) = append(s, vec![plain.clone()]).await;
    let (_, p2) = append(s, vec![plain]).await;
    assert!(
        p2[0] > p1[0],
        "a message without an origin was taken for a repeat"
    );
    // At most `per_user` origins per user: past that, sends are stored but not remembered.
    let two = |m: Vec<NewMessage>| async move {
        let a = s.append(m, queue(2)).await.expect("append");
        positions(&a.outcomes)
    };
    let d = two(vec![named("dan", "x", "d0"), named("dan", "x", "d1")]).await;
    let read = fetch(s, "dan", "d1", None).await;
    fetch(s, "dan", "d1", Some((&epoch, read.cursor))).await;
    let d2 = two(vec![named("dan", "x", "d2")]).await;
    let d2_again = two(vec![named("dan", "x", "d2")]).await;
    assert!(
        d2_again[0] > d2[0],
        "more origins than per_user were remembered"
    );
    assert_eq!(two(vec![named("dan", "x", "d0")]).await, vec![d[0]]);
}

fn asking(m: NewMessage) -> NewMessage {
    NewMessage { ack: true, ..m }
}

fn reply_of(u: &str, c: &str, pos: Position, json: &str) -> NewReply {
    NewReply {
        user: user(u),
        client: client(c),
        pos,
        data: data(json),
    }
}

fn reply_limits(per_message: usize, bytes_per_user: usize) -> ReplyLimits {
    ReplyLimits {
        per_message,
        bytes_per_user,
    }
}

async fn replies_to(
    s: &impl Storage,
    epoch: &Epoch,
    u: &str,
    pos: Position,
) -> Vec<(String, String)> {
    let target = DeliveryTarget {
        user: user(u),
        client: None,
        namespace: DEFAULT_NAMESPACE.into(),
        pos,
    };
    let mut got: Vec<(String, String)> = s
        .replies(epoch, &[target])
        .await
        .expect("replies")
        .remove(0)
        .into_iter()
        .map(|r| (r.client.to_string(), r.data.get().to_owned()))
        .collect();
    got.sort();
    got
}

/// A message that asks for replies is read back with `ack` set (one that does not, without);
/// each client of its user may reply once (the first reply stays), and the replies are read
/// back by position.
pub async fn a_message_asking_for_replies_is_read_with_ack_and_takes_one_per_client(
    s: &impl Storage,
) {
    let (epoch, pos) = append(
        s,
        vec![
            asking(message("ann", "ask", LONG)),
            message("ann", "tell", LONG),
        ],
    )
    .await;
    let read = fetch(s, "ann", "a1", None).await;
    let acks: Vec<bool> = read.messages.iter().map(|m| m.ack).collect();
    assert_eq!(acks, [true, false], "the ack flag did not round-trip");
    let limits = reply_limits(MANY, MANY);
    assert_eq!(
        s.reply(reply_of("ann", "a1", pos[0], "1"), limits)
            .await
            .expect("reply"),
        ReplyOutcome::Recorded
    );
    assert_eq!(
        s.reply(reply_of("ann", "a2", pos[0], "{\"x\":2}"), limits)
            .await
            .expect("reply"),
        ReplyOutcome::Recorded
    );
    assert_eq!(
        s.reply(reply_of("ann", "a1", pos[0], "3"), limits)
            .await
            .expect("reply"),
        ReplyOutcome::Duplicate,
        "a second reply of one client was taken"
    );
    assert_eq!(
        replies_to(s, &epoch, "ann", pos[0]).await,
        [
            ("a1".to_owned(), "1".to_owned()),
            ("a2".to_owned(), "{\"x\":2}".to_owned())
        ]
    );
    assert_eq!(
        s.reply(reply_of("ann", "a1", pos[1], "1"), limits)
            .await
            .expect("reply"),
        ReplyOutcome::Unknown,
        "a message that asked for no reply took one"
    );
    assert!(
        replies_to(s, &Epoch::new("another"), "ann", pos[0])
            .await
            .is_empty(),
        "replies were read under another epoch"
    );
}

/// Only a client of the message's user, to which it was addressed, may reply, while it lives.
pub async fn a_reply_is_refused_for_an_unknown_message_another_client_or_another_user(
    s: &impl Storage,
) {
    let to_tab = NewMessage {
        client: Some(client("b1")),
        ..asking(message("bob", "ask", LONG))
    };
    let (epoch, pos) = append(
        s,
        vec![
            asking(message("ann", "ask", LONG)),
            to_tab,
            asking(message("carol", "ask", Duration::from_millis(300))),
        ],
    )
    .await;
    let limits = reply_limits(MANY, MANY);
    let outcome = |r| async move { s.reply(r, limits).await.expect("reply") };
    assert_eq!(
        outcome(reply_of("bob", "b9", pos[0], "1")).await,
        ReplyOutcome::Unknown,
        "a client replied to another user's message"
    );
    assert_eq!(
        outcome(reply_of("ann", "a1", pos[0] + 1_000_000, "1")).await,
        ReplyOutcome::Unknown,
        "a reply to no message was taken"
    );
    assert_eq!(
        outcome(reply_of("bob", "b2", pos[1], "1")).await,
        ReplyOutcome::Unknown,
        "a client replied to a message addressed to another client"
    );
    assert_eq!(
        outcome(reply_of("bob", "b1", pos[1], "1")).await,
        ReplyOutcome::Recorded
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        outcome(reply_of("carol", "c1", pos[2], "1")).await,
        ReplyOutcome::Unknown,
        "an expired message took a reply"
    );
    assert!(replies_to(s, &epoch, "ann", pos[0]).await.is_empty());
}

/// A message delivered and trimmed from the log still takes replies until it expires, and each
/// recorded reply is signalled with its data.
pub async fn replies_outlive_delivery_and_are_signalled(s: &impl Storage) {
    let mut signals = s.subscribe();
    let (epoch, pos) = append(s, vec![asking(message("ann", "ask", LONG))]).await;
    let read = fetch(s, "ann", "a1", None).await;
    fetch(s, "ann", "a1", Some((&epoch, read.cursor))).await;
    assert_eq!(
        delivery(s, &epoch, "ann", None, pos[0]).await,
        DeliveryState::Delivered
    );
    let limits = reply_limits(MANY, MANY);
    assert_eq!(
        s.reply(reply_of("ann", "a1", pos[0], "\"yes\""), limits)
            .await
            .expect("reply"),
        ReplyOutcome::Recorded,
        "a delivered message took no reply"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let signal = tokio::time::timeout_at(deadline, signals.recv())
            .await
            .expect("no Replied signal")
            .expect("signal");
        if let Signal::Replied {
            epoch: e,
            user: u,
            pos: p,
            client: c,
            data,
        } = signal
        {
            assert_eq!(
                (e, u, p, c),
                (epoch.clone(), user("ann"), pos[0], client("a1"))
            );
            assert_eq!(data.get(), "\"yes\"");
            break;
        }
    }
}

/// At most `per_message` replies to one message and `bytes_per_user` bytes of replies for one
/// user; a refused reply changes nothing. A queue holds at most `per_user` messages asking
/// for replies that have not expired, delivered or not.
pub async fn replies_are_bounded_per_message_and_per_user(s: &impl Storage) {
    let (epoch, pos) = append(
        s,
        vec![
            asking(message("ann", "a", LONG)),
            asking(message("ann", "b", LONG)),
        ],
    )
    .await;
    let limits = reply_limits(2, 10);
    let outcome = |r| async move { s.reply(r, limits).await.expect("reply") };
    assert_eq!(
        outcome(reply_of("ann", "a1", pos[0], "1")).await,
        ReplyOutcome::Recorded
    );
    assert_eq!(
        outcome(reply_of("ann", "a2", pos[0], "2")).await,
        ReplyOutcome::Recorded
    );
    assert_eq!(
        outcome(reply_of("ann", "a3", pos[0], "3")).await,
        ReplyOutcome::Full,
        "more replies than per_message were kept"
    );
    assert_eq!(
        outcome(reply_of("ann", "a1", pos[1], "\"12345\"")).await,
        ReplyOutcome::Recorded
    );
    assert_eq!(
        outcome(reply_of("ann", "a2", pos[1], "12")).await,
        ReplyOutcome::Full,
        "more bytes of replies than bytes_per_user were kept"
    );
    assert_eq!(replies_to(s, &epoch, "ann", pos[0]).await.len(), 2);
    // The queue's bound counts messages asking for replies even once delivered.
    let a = s
        .append(
            vec![
                asking(message("dan", "x", LONG)),
                asking(message("dan", "y", LONG)),
            ],
            queue(1),
        )
        .await
        .expect("append");
    assert!(matches!(a.outcomes[0], AppendOutcome::Stored(_)));
    assert_eq!(a.outcomes[1], AppendOutcome::QueueFull);
    let read = fetch(s, "dan", "d1", None).await;
    fetch(s, "dan", "d1", Some((&a.epoch, read.cursor))).await;
    let again = s
        .append(vec![asking(message("dan", "z", LONG))], queue(1))
        .await
        .expect("append");
    assert_eq!(
        again.outcomes[0],
        AppendOutcome::QueueFull,
        "more messages asking for replies than the queue holds were kept"
    );
    let plain = s
        .append(vec![message("dan", "w", LONG)], queue(1))
        .await
        .expect("append");
    assert!(matches!(plain.outcomes[0], AppendOutcome::Stored(_)));
}
