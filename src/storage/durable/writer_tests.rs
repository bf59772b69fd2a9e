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

/// A checkpoint from 64 KiB of log, 64 changes looked at or written after each frame and none
/// while the writer idles: a load that adds more than that per frame makes it fall behind, as
/// a load that never lets the writer idle does, until it is finished at once at 128 KiB.
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

fn request(user: &str, client: &str, cursor: Option<(Epoch, Position)>) -> FetchRequest {
    FetchRequest {
        user: UserId::from(user),
        client: ClientId::new(client).expect("a client id"),
        cursor,
        namespaces: Arc::from([Arc::<str>::from("/")]),
        limit: 100_000,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 64,
    }
}

/// Reads `user`'s log as `client`: the positions and texts read.
async fn read(s: &DurableStorage, user: &str, client: &str) -> Vec<(Position, String)> {
    let batch = s.fetch(request(user, client, None)).await.expect("a fetch");
    batch
        .messages
        .iter()
        .map(|m| (m.pos, m.data.get().trim_matches('"').to_owned()))
        .collect()
}

const USERS: usize = 10;

/// What each user holds, as the test made it: (position, text), in order.
#[derive(Clone, Default)]
struct Held(BTreeMap<String, Vec<(Position, String)>>);

impl Held {
    /// One append of `count` messages spread over the users.
    async fn append(&mut self, s: &DurableStorage, round: usize, count: usize) {
        self.try_round(s, None, round, count).await.expect("stored");
    }

    /// `count` messages spread over the users in one append, then (with the epoch) one user's
    /// client confirms all it holds, which removes them. What fails is not held (but see
    /// [`Held::reconcile`]).
    /// The users delivered to take turns, among the first half of them.
    async fn try_round(
        &mut self,
        s: &DurableStorage,
        epoch: Option<&Epoch>,
        round: usize,
        count: usize,
    ) -> Result<(), StorageError> {
        let texts: Vec<(String, String)> = (0..count)
            .map(|i| (format!("u{}", i % USERS), format!("r{round}-{i}")))
            .collect();
        let batch = texts.iter().map(|(u, t)| message(u, t)).collect();
        let appended = s.append(batch, limits()).await?;
        for ((user, text), outcome) in texts.into_iter().zip(appended.outcomes) {
            let AppendOutcome::Stored(pos) = outcome else {
                panic!("not stored: {outcome:?}");
            };
            self.0.entry(user).or_default().push((pos, text));
        }
        let Some(epoch) = epoch else {
            return Ok(());
        };
        // Half the users are never delivered to: what the file lacks of theirs shows.
        let user = format!("u{}", round % (USERS / 2));
        let Some(last) = self
            .0
            .get(&user)
            .and_then(|m| m.last())
            .map(|(pos, _)| *pos)
        else {
            return Ok(());
        };
        s.fetch(request(&user, "tab", Some((epoch.clone(), last))))
            .await?;
        self.0.remove(&user);
        Ok(())
    }

    /// After round `round` (of `count` messages) failed: an append is atomic per user, not
    /// across them (its users' changes are recorded shard by shard, and may fall in two
    /// frames, of which only the second failed). Fails unless each user holds all its
    /// messages of the round or none; those a user holds are held.
    async fn reconcile(&mut self, s: &DurableStorage, round: usize, count: usize) {
        let prefix = format!("r{round}-");
        for u in 0..USERS {
            let user = format!("u{u}");
            let known = self
                .0
                .get(&user)
                .is_some_and(|m| m.iter().any(|(_, t)| t.starts_with(&prefix)));
            if known {
                continue;
            }
            let of_round: Vec<(Position, String)> = read(s, &user, "tab")
                .await
                .into_iter()
                .filter(|(_, t)| t.starts_with(&prefix))
                .collect();
            let expected: Vec<String> = (u..count)
                .step_by(USERS)
                .map(|i| format!("{prefix}{i}"))
                .collect();
            let texts: Vec<&String> = of_round.iter().map(|(_, t)| t).collect();
            assert!(
                of_round.is_empty() || texts.iter().copied().eq(expected.iter()),
                "{user} holds part of its messages of the failed round: {texts:?}"
            );
            if !of_round.is_empty() {
                self.0.entry(user).or_default().extend(of_round);
            }
        }
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
            let got: Vec<String> = read(s, &user, "tab")
                .await
                .into_iter()
                .map(|(_, t)| t)
                .collect();
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

/// A new storage in a folder `name` of its own, checkpointing [`falling_behind`].
async fn falling_behind_in(name: &str) -> (PathBuf, DurableStorage) {
    let file = test_folder(name).join("store.redb");
    let s = DurableStorage::open_tuned(file.clone(), falling_behind())
        .await
        .expect("a new file");
    (file, s)
}

/// How many messages the next round appends: 20 (about 25 changes) until a checkpoint has
/// written some of its changes, then 400 (about 450 changes), more than it writes after each
/// frame, until it is finished at once.
fn next_round(s: &DurableStorage) -> usize {
    let applied = *s.inner.queue.probe.applied.lock().expect("the probe");
    if applied.unwrap_or(0) > 0 { 400 } else { 20 }
}

/// Fails unless the storage at `file`, reopened, is of `epoch` and reads what `held` holds.
async fn reopened_holds(file: &Path, epoch: &Epoch, held: &Held, what: &str) {
    let reopened = DurableStorage::open(file).await.expect("the file");
    assert_eq!(&reopened.epoch().await.expect("an epoch"), epoch, "{what}");
    held.check(&reopened, what).await;
}

#[tokio::test]
async fn a_checkpoint_that_falls_behind_is_finished_at_twice_its_size_and_loses_nothing() {
    let (file, s) = falling_behind_in("forced").await;
    let probe = &s.inner.queue.probe;
    let epoch = s.epoch().await.expect("an epoch");
    let mut held = Held::default();
    let mut copies = Vec::new();
    // A checkpoint partly written, then forced, with messages stored and delivered on both
    // sides of where each stretch began.
    let mut round = 0;
    while probe.forced_partly_written.load(Ordering::SeqCst) < 2 {
        assert!(
            round < 400,
            "no partly written checkpoint was forced in {round} rounds"
        );
        held.try_round(&s, Some(&epoch), round, next_round(&s))
            .await
            .expect("stored");
        if round % 7 == 6 {
            copies.push((crash_copy(&file, "forced-copy"), held.clone()));
        }
        round += 1;
    }
    held.check(&s, "before closing").await;
    drop(s);
    assert!(copies.len() >= 2, "{} copies taken", copies.len());
    for (copy, held) in &copies {
        reopened_holds(copy, &epoch, held, &format!("copy {}", copy.display())).await;
    }
    reopened_holds(&file, &epoch, &held, "reopened").await;
}

#[tokio::test]
async fn a_frame_that_fails_while_a_checkpoint_is_written_gives_it_up_and_loses_nothing() {
    let (file, s) = falling_behind_in("failed-frame").await;
    let probe = &s.inner.queue.probe;
    let epoch = s.epoch().await.expect("an epoch");
    let mut held = Held::default();
    // The first frame written once a checkpoint has written some of its changes fails.
    probe.fail_mid_checkpoint.store(true, Ordering::SeqCst);
    let mut round = 0;
    let refused = loop {
        assert!(round < 400, "no frame failed in {round} rounds");
        let tried = held.try_round(&s, Some(&epoch), round, 20).await;
        round += 1;
        if let Err(refused) = tried {
            break refused;
        }
    };
    assert!(
        matches!(refused, StorageError::Unavailable(_)),
        "a failed frame is not `Unavailable` (503): {refused}"
    );
    assert!(!probe.fail_mid_checkpoint.load(Ordering::SeqCst));
    // Memory was rebuilt from the files before the failure was told: it holds what the model
    // does, and of the failed round's append each user's messages whole or not at all.
    held.reconcile(&s, round - 1, 20).await;
    held.check(&s, "rebuilt from the files").await;

    // Writing goes on, and later checkpoints are begun, fall behind and are finished.
    let forced_before = probe.forced.load(Ordering::SeqCst);
    let mut more = 0;
    while probe.forced.load(Ordering::SeqCst) == forced_before {
        assert!(
            more < 400,
            "no checkpoint was finished in {more} rounds after the failed frame"
        );
        held.try_round(&s, Some(&epoch), round + more, next_round(&s))
            .await
            .expect("stored");
        more += 1;
    }
    held.check(&s, "after writing again").await;
    drop(s);
    reopened_holds(&file, &epoch, &held, "reopened").await;
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
    held.try_round(&s, Some(&epoch), 1, 20)
        .await
        .expect("stored");

    // The writer is held before its next frame, which is to fail; another batch queues behind.
    let queue = s.inner.queue.clone();
    let probe = &queue.probe;
    let gate = probe.gate.lock().expect("the gate");
    probe.at_gate.store(false, Ordering::SeqCst);
    probe.fail_next_frame.store(true, Ordering::SeqCst);
    let (_, first) = s
        .append_ordered(vec![message("u0", "failed")], limits())
        .await
        .expect("ordered");
    let since = Instant::now();
    while !probe.at_gate.load(Ordering::SeqCst) {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the writer took nothing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
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
    assert_eq!(
        probe.abandoned.load(Ordering::SeqCst),
        1,
        "the batch after the failed one was not dropped unwritten"
    );
    let reopened = DurableStorage::open(&file).await.expect("the file");
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    held.check(&reopened, "reopened").await;
    // And it writes: what it holds and is given now comes back after another reopen.
    held.append(&reopened, 2, 20).await;
    drop(reopened);
    let again = DurableStorage::open(&file).await.expect("the file");
    held.check(&again, "reopened again").await;
}
