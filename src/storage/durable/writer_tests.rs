//! The writer's rarer paths, made to happen: a checkpoint that falls behind the log and is
//! finished at once at twice its size, a frame that fails while a checkpoint is being written,
//! and a failed frame whose storage is dropped before the files can be read back. Each ends
//! with the files reopened and holding exactly what was confirmed stored and not delivered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::writer::Tuning;
use super::{DurableStorage, log, test_folder};
use crate::id::{ClientId, UserId};
use crate::storage::{
    AppendOutcome, Epoch, FetchRequest, NewMessage, Position, QueueLimits, Storage, StorageError,
    now_millis,
};

/// A checkpoint from 64 KiB of log, 64 changes after each frame and none while the writer
/// idles: with every append larger than that, it falls behind as it does under a load that
/// never lets the writer idle, and is finished at once at 128 KiB.
fn falling_behind() -> Tuning {
    Tuning {
        checkpoint_bytes: 64 << 10,
        slice: Duration::ZERO,
        idle_steps: false,
    }
}

fn limits() -> QueueLimits {
    QueueLimits {
        per_user: 100_000,
        per_sender: 100_000,
        bytes_per_user: 64 << 20,
        bytes_per_sender: 64 << 20,
    }
}

fn message(user: &str, text: &str) -> NewMessage {
    NewMessage {
        user: UserId::from(user),
        client: None,
        namespace: "/".into(),
        event: "line".into(),
        data: Arc::from(RawValue::from_string(format!("\"{text}\"")).expect("JSON")),
        expires_at: now_millis() + 3_600_000,
        sender: Some(UserId::from("sender")),
        origin: None,
        ack: false,
    }
}

/// Reads `user`'s log as `client`, confirming `cursor` first: the texts read.
async fn read(
    s: &DurableStorage,
    user: &str,
    client: &str,
    cursor: Option<(Epoch, Position)>,
) -> Vec<String> {
    let batch = s
        .fetch(FetchRequest {
            user: UserId::from(user),
            client: ClientId::new(client).expect("a client id"),
            cursor,
            namespaces: vec!["/".into()],
            limit: 100_000,
            presence_ttl: Duration::from_secs(60),
            announce: None,
            max_clients: 64,
        })
        .await
        .expect("a fetch");
    batch
        .messages
        .iter()
        .map(|m| m.data.get().trim_matches('"').to_owned())
        .collect()
}

const USERS: usize = 10;

/// What each user holds, as the test made it: (position, text), in order.
#[derive(Clone, Default)]
struct Held(BTreeMap<String, Vec<(Position, String)>>);

impl Held {
    /// One append of `count` messages spread over the users, in one frame.
    async fn append(&mut self, s: &DurableStorage, round: usize, count: usize) {
        let texts: Vec<(String, String)> = (0..count)
            .map(|i| (format!("u{}", i % USERS), format!("r{round}-{i}")))
            .collect();
        let batch = texts.iter().map(|(u, t)| message(u, t)).collect();
        let appended = s.append(batch, limits()).await.expect("stored");
        for ((user, text), outcome) in texts.into_iter().zip(appended.outcomes) {
            let AppendOutcome::Stored(pos) = outcome else {
                panic!("not stored: {outcome:?}");
            };
            self.0.entry(user).or_default().push((pos, text));
        }
    }

    /// `user`'s one client confirms all it holds: delivered, so removed.
    async fn deliver(&mut self, s: &DurableStorage, epoch: &Epoch, user: &str) {
        let Some(last) = self.0.get(user).and_then(|m| m.last()).map(|(pos, _)| *pos) else {
            return;
        };
        read(s, user, "tab", Some((epoch.clone(), last))).await;
        self.0.remove(user);
    }

    /// Fails unless each user's one client, reading from the cursor recorded for it (or, for a
    /// user it never read, from the start), reads exactly what the user holds, in order. (A
    /// client of its own would hold back what the next deliveries remove.)
    async fn check(&self, s: &DurableStorage, what: &str) {
        for u in 0..USERS {
            let user = format!("u{u}");
            let expected: Vec<&str> = self
                .0
                .get(&user)
                .map(|m| m.iter().map(|(_, t)| t.as_str()).collect())
                .unwrap_or_default();
            let got = read(s, &user, "tab", None).await;
            assert_eq!(got, expected, "{what}: {user} reads other messages");
        }
    }
}

/// A copy of the storage's files at `file` in a new folder, as a crash now would leave them:
/// the log copied before the file (so that a checkpoint committing in between leaves the file
/// newer than the log, as the writer's own order does).
fn crash_copy(file: &Path, name: &str) -> PathBuf {
    let copy = test_folder(name).join("store.redb");
    std::fs::copy(log::path_for(file), log::path_for(&copy)).expect("the log copied");
    std::fs::copy(file, &copy).expect("the file copied");
    copy
}

/// Waits until the writer is idle after the last operation (it then updates the probe).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_checkpoint_that_falls_behind_is_finished_at_twice_its_size_and_loses_nothing() {
    let file = test_folder("forced").join("store.redb");
    let s = DurableStorage::open_tuned(file.clone(), falling_behind())
        .await
        .expect("a new file");
    let epoch = s.epoch().await.expect("an epoch");
    let mut held = Held::default();
    let mut copies = Vec::new();
    for round in 0..40 {
        // About 20 KiB and 200 changes a frame, 64 written after each: behind from the first
        // checkpoint on. Half of each user's messages are delivered while one is being
        // written, some of them written into it already, some not.
        held.append(&s, round, 200).await;
        held.deliver(&s, &epoch, &format!("u{}", round % USERS))
            .await;
        if round % 6 == 5 {
            copies.push((crash_copy(&file, "forced-copy"), held.clone()));
        }
    }
    let forced = s.inner.queue.probe.forced.load(Ordering::SeqCst);
    assert!(
        forced >= 2,
        "{forced} checkpoints were finished at twice their size"
    );
    held.check(&s, "before closing").await;
    drop(s);
    for (copy, held) in &copies {
        let reopened = DurableStorage::open(copy).await.expect("the copy");
        assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
        held.check(&reopened, &format!("copy {}", copy.display()))
            .await;
    }
    let reopened = DurableStorage::open(&file).await.expect("the file");
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    held.check(&reopened, "reopened").await;
}

#[tokio::test]
async fn a_frame_that_fails_while_a_checkpoint_is_written_gives_it_up_and_loses_nothing() {
    let file = test_folder("failed-frame").join("store.redb");
    let s = DurableStorage::open_tuned(file.clone(), falling_behind())
        .await
        .expect("a new file");
    let probe = &s.inner.queue.probe;
    let epoch = s.epoch().await.expect("an epoch");
    let mut held = Held::default();
    let mut round = 0;
    loop {
        held.append(&s, round, 200).await;
        held.deliver(&s, &epoch, &format!("u{}", round % USERS))
            .await;
        round += 1;
        settle().await;
        if probe.checkpointing.load(Ordering::SeqCst) {
            break;
        }
        assert!(round < 20, "no checkpoint was begun in {round} rounds");
    }

    probe.fail_next_frame.store(true, Ordering::SeqCst);
    let refused = s
        .append(vec![message("u0", "lost")], limits())
        .await
        .expect_err("the failed frame was reported stored");
    assert!(
        matches!(refused, StorageError::Unavailable(_)),
        "a failed frame is not `Unavailable` (503): {refused}"
    );
    settle().await;
    assert!(
        !probe.checkpointing.load(Ordering::SeqCst),
        "the checkpoint being written was not given up"
    );
    held.check(&s, "rebuilt from the files").await;

    // Writing goes on, and later checkpoints are begun, fall behind and are finished.
    let forced_before = probe.forced.load(Ordering::SeqCst);
    for more in 0..20 {
        held.append(&s, round + more, 200).await;
        held.deliver(&s, &epoch, &format!("u{}", more % USERS))
            .await;
    }
    assert!(
        probe.forced.load(Ordering::SeqCst) > forced_before,
        "no checkpoint was finished after the failed frame"
    );
    held.check(&s, "after writing again").await;
    drop(s);
    let reopened = DurableStorage::open(&file).await.expect("the file");
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    held.check(&reopened, "reopened").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::await_holding_lock,
    reason = "the gate holds the writer thread, which the awaited appends do not wait for"
)]
async fn a_failed_frame_of_a_storage_dropped_meanwhile_is_not_followed_by_any_write() {
    let file = test_folder("abandoned").join("store.redb");
    let s = DurableStorage::open(&file).await.expect("a new file");
    let epoch = s.epoch().await.expect("an epoch");
    let mut held = Held::default();
    held.append(&s, 0, 20).await;
    held.deliver(&s, &epoch, "u1").await;

    // The writer is held before its next frame, which is to fail; another batch queues behind.
    let queue = s.inner.queue.clone();
    let probe = &queue.probe;
    let gate = probe.gate.lock().expect("the gate");
    probe.fail_next_frame.store(true, Ordering::SeqCst);
    let (_, first) = s
        .append_ordered(vec![message("u0", "failed")], limits())
        .await
        .expect("ordered");
    let (_, second) = s
        .append_ordered(vec![message("u2", "after")], limits())
        .await
        .expect("ordered");

    // The storage is dropped, its memory first; the drop then waits for the writer to end.
    let memory = s.memory.downgrade();
    let dropping = std::thread::spawn(move || drop(s));
    let since = Instant::now();
    while memory.upgrade().is_some() {
        assert!(since.elapsed() < Duration::from_secs(10), "memory kept");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(gate);
    dropping.join().expect("the storage dropped");

    first
        .wait()
        .await
        .expect_err("the failed frame was reported stored");
    second
        .wait()
        .await
        .expect_err("a batch after the failed one was written");
    let reopened = DurableStorage::open(&file).await.expect("the file");
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    held.check(&reopened, "reopened").await;
    // And it writes: what it holds and is given now comes back after another reopen.
    held.append(&reopened, 1, 20).await;
    drop(reopened);
    let again = DurableStorage::open(&file).await.expect("the file");
    held.check(&again, "reopened again").await;
}
