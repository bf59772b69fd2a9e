//! `DurableStorage` across a reopen of its file: what was confirmed stored comes back, a lost or
//! damaged file comes back as a new epoch, and a full disk answers `Unavailable` and recovers.
//! (The conformance suite runs on it in the crate's unit tests; `tests/durable_restart.rs`
//! kills the chat example with SIGKILL mid-load.)
#![cfg(feature = "durable")]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use simpleio::storage::{
    AppendOutcome, Claim, DedupKey, DedupLimits, Epoch, FetchBatch, FetchRequest, NewMessage,
    Position, QueueLimits, Signal, StorageError, now_millis,
};
use simpleio::{ClientId, DurableStorage, Member, MessageId, SimpleIoLayer, Storage, UserId};

/// A folder of its own under the system's temporary folder, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Folder {
        let path = std::env::temp_dir().join(format!(
            "simpleio-durable-{name}-{}-{}",
            std::process::id(),
            now_millis()
        ));
        std::fs::create_dir_all(&path).expect("a temporary folder");
        Folder(path)
    }

    fn file(&self) -> PathBuf {
        self.0.join("store.redb")
    }

    /// Whether a file was moved aside here as unreadable.
    fn holds_one_moved_aside(&self) -> bool {
        std::fs::read_dir(&self.0)
            .expect("the folder")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".unreadable-"))
    }

    /// What a crash of `s` (whose file is in this folder) would leave now: a copy of its files
    /// in a folder `name` of its own. The log is copied before the file, so that a checkpoint
    /// committing in between finds the file newer than the log (as its own order of writes
    /// makes it), never older.
    fn crash_copy(&self, s: &DurableStorage, name: &str) -> Folder {
        let copy = Folder::new(name);
        std::fs::copy(s.log_path(), copy.log()).expect("the log copied");
        std::fs::copy(self.file(), copy.file()).expect("the file copied");
        copy
    }

    fn log(&self) -> PathBuf {
        self.0.join("store.redb.log")
    }

    /// The storage in this folder's file, made if there is none.
    async fn open(&self) -> DurableStorage {
        DurableStorage::open(self.file()).await.expect("a new file")
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn limits() -> QueueLimits {
    QueueLimits {
        per_user: 10_000,
        per_sender: 10_000,
        bytes_per_user: 64 << 20,
        bytes_per_sender: 64 << 20,
    }
}

fn dedup_limits() -> DedupLimits {
    DedupLimits {
        lease: Duration::from_secs(10),
        per_client: 1_000,
        per_user: 4_000,
    }
}

fn message(to: &str, client: Option<&str>, data: &Arc<RawValue>) -> NewMessage {
    NewMessage {
        user: UserId::from(to),
        client: client.map(|c| ClientId::new(c).expect("a client id")),
        namespace: "/".into(),
        event: "line".into(),
        data: data.clone(),
        expires_at: now_millis() + HOUR.as_millis() as u64,
        sender: Some(UserId::from("sender")),
        origin: None,
        ack: false,
    }
}

fn json(text: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(text.to_owned()).expect("JSON"))
}

async fn fetch(
    s: &DurableStorage,
    user: &str,
    client: &str,
    cursor: Option<(Epoch, Position)>,
) -> FetchBatch {
    s.fetch(FetchRequest {
        user: UserId::from(user),
        client: ClientId::new(client).expect("a client id"),
        cursor,
        namespaces: Arc::from(["/".into()]),
        limit: 1_000,
        presence_ttl: Duration::from_secs(60),
        announce: None,
        max_clients: 64,
    })
    .await
    .expect("a fetch")
}

fn texts(batch: &FetchBatch) -> Vec<String> {
    batch
        .messages
        .iter()
        .map(|m| m.data.get().to_owned())
        .collect()
}

fn positions(outcomes: &[AppendOutcome]) -> Vec<Position> {
    outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(pos) => *pos,
            other => panic!("not stored: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn everything_confirmed_comes_back_after_a_reopen() {
    let folder = Folder::new("reopen");
    let big = json(&format!(r#"{{"text":"{}"}}"#, "x".repeat(2_000)));
    let key = DedupKey {
        user: UserId::from("ann"),
        client: ClientId::new("ann-tab").expect("an id"),
        id: MessageId::new("m1").expect("an id"),
    };
    let (epoch, last, hal_cursor) = {
        let s = folder.open().await;
        let epoch = s.epoch().await.expect("an epoch");
        // Bob reads and confirms two lines; a third stays unconfirmed.
        let first = s
            .append(
                vec![
                    message("bob", None, &json(r#""one""#)),
                    message("bob", None, &json(r#""two""#)),
                ],
                limits(),
            )
            .await
            .expect("stored");
        let read = fetch(&s, "bob", "bob-tab", None).await;
        assert_eq!(texts(&read), [r#""one""#, r#""two""#]);
        fetch(&s, "bob", "bob-tab", Some((epoch.clone(), read.cursor))).await;
        s.append(vec![message("bob", None, &json(r#""three""#))], limits())
            .await
            .expect("stored");
        // A fan-out of a large payload, stored once for all of them, and a line for one client.
        let fanout: Vec<NewMessage> = (0..50)
            .map(|i| message(&format!("fan{i}"), None, &big))
            .collect();
        s.append(fanout, limits()).await.expect("stored");
        let direct = s
            .append(
                vec![message("carol", Some("carol-b"), &json("1"))],
                limits(),
            )
            .await
            .expect("stored");
        // A handled message, rooms, data.
        assert_eq!(
            s.claim(&key, 7, dedup_limits()).await.expect("claimed"),
            Claim::Acquired
        );
        s.complete(&key, r#"{"ok":true}"#, HOUR)
            .await
            .expect("completed");
        let ann_tab = Member::Client(UserId::from("ann"), ClientId::new("ann-tab").expect("id"));
        s.join("lobby", &Member::User(UserId::from("bob")), HOUR)
            .await
            .expect("joined");
        s.join("lobby", &ann_tab, HOUR).await.expect("joined");
        s.set_data(
            &Member::User(UserId::from("bob")),
            "name",
            Some(r#""Bob""#),
            HOUR,
        )
        .await
        .expect("set");
        s.set_data(&ann_tab, "typing", Some("true"), HOUR)
            .await
            .expect("set");
        let _ = first;
        // Hal reads and confirms everything: his log is trimmed empty.
        s.append(vec![message("hal", None, &json("0"))], limits())
            .await
            .expect("stored");
        let read = fetch(&s, "hal", "hal-tab", None).await;
        fetch(&s, "hal", "hal-tab", Some((epoch.clone(), read.cursor))).await;
        (epoch, positions(&direct.outcomes)[0], read.cursor)
    };

    let s = DurableStorage::open(folder.file()).await.expect("reopened");
    assert_eq!(
        s.epoch().await.expect("an epoch"),
        epoch,
        "the epoch changed"
    );
    // Bob's client resumes after what it confirmed; a new client of Bob's starts at the
    // watermark: both read only the unconfirmed line.
    let resumed = fetch(&s, "bob", "bob-tab", None).await;
    assert_eq!(texts(&resumed), [r#""three""#]);
    let other = fetch(&s, "bob", "bob-phone", None).await;
    assert_eq!(texts(&other), [r#""three""#]);
    for i in [0, 49] {
        let got = fetch(&s, &format!("fan{i}"), "t", None).await;
        assert_eq!(got.messages.len(), 1);
        assert_eq!(got.messages[0].data.get(), big.get());
    }
    let carol = fetch(&s, "carol", "carol-b", None).await;
    assert_eq!(texts(&carol), ["1"]);
    assert!(
        fetch(&s, "carol", "carol-a", None)
            .await
            .messages
            .is_empty()
    );
    assert_eq!(
        s.claim(&key, 8, dedup_limits()).await.expect("a claim"),
        Claim::Done(r#"{"ok":true}"#.into()),
        "a handled message would be handled again"
    );
    let mut members: Vec<String> = s
        .members("lobby")
        .await
        .expect("members")
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    members.sort();
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(
        s.get_data(&Member::User(UserId::from("bob")), "name")
            .await
            .expect("data")
            .as_deref(),
        Some(r#""Bob""#)
    );
    let ann_tab = Member::Client(UserId::from("ann"), ClientId::new("ann-tab").expect("id"));
    assert_eq!(
        s.get_data(&ann_tab, "typing")
            .await
            .expect("data")
            .as_deref(),
        Some("true")
    );
    // A cursor into a log trimmed empty before the restart stays where it was.
    let hal = fetch(&s, "hal", "hal-tab", Some((epoch.clone(), hal_cursor))).await;
    assert!(hal.messages.is_empty());
    assert_eq!(hal.cursor, hal_cursor, "a client's cursor moved back");
    // Positions go on growing from where they were.
    let next = s
        .append(vec![message("carol", None, &json("2"))], limits())
        .await
        .expect("stored");
    assert!(positions(&next.outcomes)[0] > last);
}

/// A fetch of `client` reading `namespaces`, live for `ttl`.
async fn fetch_in(
    s: &DurableStorage,
    (user, client): (&str, &str),
    cursor: Option<(Epoch, Position)>,
    namespaces: &[&str],
    ttl: Duration,
) -> FetchBatch {
    s.fetch(FetchRequest {
        user: UserId::from(user),
        client: ClientId::new(client).expect("a client id"),
        cursor,
        namespaces: namespaces.iter().map(|&ns| ns.into()).collect(),
        limit: 1_000,
        presence_ttl: ttl,
        announce: None,
        max_clients: 64,
    })
    .await
    .expect("a fetch")
}

fn message_in(to: &str, namespace: &str, text: &str) -> NewMessage {
    NewMessage {
        namespace: namespace.into(),
        ..message(to, None, &json(text))
    }
}

/// A confirmation writes the client's cursor row alone; the watermarks it raised are rebuilt
/// from it. They must come back as they were, also once the client that raised them stopped
/// reading their namespace or was reaped, and a client must not vouch for namespaces it did
/// not confirm.
#[tokio::test]
async fn watermarks_come_back_after_their_clients_move_on_or_go() {
    let folder = Folder::new("watermarks");
    let ms = Duration::from_millis;
    let epoch = {
        let s = folder.open().await;
        let epoch = s.epoch().await.expect("an epoch");
        s.append(
            vec![message_in("dee", "/a", "1"), message_in("dee", "/b", "2")],
            limits(),
        )
        .await
        .expect("stored");
        // A client that confirms nothing keeps every message in the log.
        fetch_in(&s, ("dee", "dee-0"), None, &["/b"], HOUR).await;
        // dee-1 confirms both positions for "/a", then reads "/b" instead, confirming nothing
        // there: "/a"'s watermark is past both, "/b"'s is not.
        let read = fetch_in(&s, ("dee", "dee-1"), None, &["/a"], HOUR).await;
        assert_eq!(texts(&read), ["1"]);
        fetch_in(
            &s,
            ("dee", "dee-1"),
            Some((epoch.clone(), read.cursor)),
            &["/a"],
            HOUR,
        )
        .await;
        fetch_in(&s, ("dee", "dee-1"), None, &["/b"], HOUR).await;

        // eve-1 confirms "/" and is reaped; eve-0 keeps the message in the log.
        s.append(vec![message_in("eve", "/", "3")], limits())
            .await
            .expect("stored");
        fetch_in(&s, ("eve", "eve-0"), None, &["/"], HOUR).await;
        let read = fetch_in(&s, ("eve", "eve-1"), None, &["/"], ms(50)).await;
        assert_eq!(texts(&read), ["3"]);
        fetch_in(
            &s,
            ("eve", "eve-1"),
            Some((epoch.clone(), read.cursor)),
            &["/"],
            ms(50),
        )
        .await;
        tokio::time::sleep(ms(120)).await;
        let gone = s.reap().await.expect("reaped");
        assert!(
            gone.iter().any(|d| d.client.as_str() == "eve-1"),
            "eve-1 was not reaped: {gone:?}"
        );
        epoch
    };

    let s = DurableStorage::open(folder.file()).await.expect("reopened");
    assert_eq!(s.epoch().await.expect("an epoch"), epoch);
    // New clients start at the watermarks of their namespaces.
    let a = fetch_in(&s, ("dee", "dee-2"), None, &["/a"], HOUR).await;
    assert!(
        a.messages.is_empty(),
        "\"/a\"'s watermark went back: {:?}",
        texts(&a)
    );
    let b = fetch_in(&s, ("dee", "dee-3"), None, &["/b"], HOUR).await;
    assert_eq!(texts(&b), ["2"], "\"/b\" got a watermark nobody confirmed");
    let e = fetch_in(&s, ("eve", "eve-2"), None, &["/"], HOUR).await;
    assert!(
        e.messages.is_empty(),
        "the watermark of a reaped client went back: {:?}",
        texts(&e)
    );
    // The client that stayed resumes where it was.
    let zero = fetch_in(&s, ("eve", "eve-0"), None, &["/"], HOUR).await;
    assert_eq!(texts(&zero), ["3"]);
}

#[tokio::test]
async fn the_file_keeps_only_what_is_held() {
    let folder = Folder::new("bounded");
    let s = folder.open().await;
    let epoch = s.epoch().await.expect("an epoch");
    let mut cursor = None;
    let mut sizes = Vec::new();
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let commits = s.commits();
    for round in 0..24 {
        for _ in 0..20 {
            // Each its own payload, so that each is written to the log whole.
            let batch: Vec<NewMessage> = (0..50)
                .map(|i| {
                    let line = json(&format!(r#""{i} {}""#, "y".repeat(500)));
                    message("dan", None, &line)
                })
                .collect();
            s.append(batch, limits()).await.expect("stored");
            let read = fetch(&s, "dan", "dan-tab", cursor.clone()).await;
            cursor = Some((epoch.clone(), read.cursor));
        }
        // Confirm the last read, so every message is delivered and trimmed.
        fetch(&s, "dan", "dan-tab", cursor.clone()).await;
        let (file, log) = (size(&folder.file()), size(&s.log_path()));
        sizes.push(file + log);
        eprintln!(
            "round {round}: {} messages sent, file {file} B, log {log} B",
            (round + 1) * 1_000
        );
    }
    // 24,000 messages of 500 B went through (12 MB, three times the log's 4 MiB between
    // checkpoints); the files hold none of them at the end: the log is written over from its
    // start after each checkpoint, and the file's freed pages are reused.
    let most = sizes.iter().max().copied().unwrap_or(0);
    assert!(
        most < 8 << 20,
        "the files grow with what was ever sent: {sizes:?}"
    );
    assert!(
        sizes[23] <= sizes[11] + sizes[11] / 2,
        "the files grow with what was ever sent: {sizes:?}"
    );
    assert!(s.commits() > commits);
    drop(s);
    // Closed with a checkpoint: everything confirmed is gone from the file too.
    let s = folder.open().await;
    let read = fetch(&s, "dan", "dan-tab", cursor).await;
    assert!(read.messages.is_empty(), "a confirmed message came back");
}

/// What a crash leaves: a copy of the files taken while the storage runs. Each message stored
/// is there, from the log; a frame torn by the crash (its checksum fails) is not replayed, and
/// the frames before it are.
#[tokio::test]
async fn a_crash_keeps_what_the_log_holds_and_not_a_torn_frame() {
    let folder = Folder::new("crash");
    let s = folder.open().await;
    let epoch = s.epoch().await.expect("an epoch");
    for i in 0..5 {
        s.append(vec![message("hal", None, &json(&i.to_string()))], limits())
            .await
            .expect("stored");
    }
    let crashed = folder.crash_copy(&s, "crash-copy");
    s.append(vec![message("hal", None, &json("5"))], limits())
        .await
        .expect("stored");
    let torn = folder.crash_copy(&s, "crash-torn");
    drop(s);

    let reopened = crashed.open().await;
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    let read = fetch(&reopened, "hal", "t", None).await;
    assert_eq!(texts(&read), ["0", "1", "2", "3", "4"]);

    // The last frame is the last "SIOL" in the log: a byte of its body flipped.
    let log = torn.log();
    let mut bytes = std::fs::read(&log).expect("the log");
    let last = bytes
        .windows(4)
        .rposition(|w| w == b"SIOL")
        .expect("a frame in the log");
    bytes[last + 30] ^= 0xff;
    std::fs::write(&log, &bytes).expect("torn");
    let reopened = torn.open().await;
    assert_eq!(reopened.epoch().await.expect("an epoch"), epoch);
    let read = fetch(&reopened, "hal", "t", None).await;
    assert_eq!(texts(&read), ["0", "1", "2", "3", "4"]);
}

/// A crash tears at most the last frame: a frame in the middle of the log that fails its
/// checksum, with whole frames after it, was synced and then damaged. The storage comes back
/// with a new epoch and the files moved aside, never with the frames before the damage alone
/// under the old epoch (which would drop the later messages in silence).
#[tokio::test]
async fn a_damaged_frame_in_the_middle_of_the_log_is_a_new_epoch() {
    let folder = Folder::new("mid-log");
    let s = folder.open().await;
    let epoch = s.epoch().await.expect("an epoch");
    for i in 0..5 {
        s.append(vec![message("ivy", None, &json(&i.to_string()))], limits())
            .await
            .expect("stored");
    }
    let copy = folder.crash_copy(&s, "mid-log-copy");
    let log = copy.log();
    drop(s);

    let mut bytes = std::fs::read(&log).expect("the log");
    let frames: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"SIOL")
        .map(|(at, _)| at)
        .collect();
    assert!(frames.len() >= 5, "one frame per append: {frames:?}");
    bytes[frames[2] + 30] ^= 0xff;
    std::fs::write(&log, &bytes).expect("damaged");

    let reopened = copy.open().await;
    assert_ne!(
        reopened.epoch().await.expect("an epoch"),
        epoch,
        "a log damaged in its middle was read as ending there, under the old epoch"
    );
    assert!(fetch(&reopened, "ivy", "t", None).await.messages.is_empty());
    assert!(
        copy.holds_one_moved_aside(),
        "the damaged files were not kept aside"
    );
}

/// The log is part of the store: a file whose log was deleted may have lost what only the log
/// held, so it comes back as a new epoch, moved aside, never silently short.
#[tokio::test]
async fn a_deleted_log_is_a_new_epoch() {
    let folder = Folder::new("no-log");
    let first = {
        let s = folder.open().await;
        s.append(vec![message("ida", None, &json("1"))], limits())
            .await
            .expect("stored");
        std::fs::remove_file(s.log_path()).expect("the log removed");
        s.epoch().await.expect("an epoch")
    };
    let s = folder.open().await;
    assert_ne!(s.epoch().await.expect("an epoch"), first);
    assert!(fetch(&s, "ida", "t", None).await.messages.is_empty());
    let aside = folder.holds_one_moved_aside();
    assert!(aside, "the file without its log was not kept aside");
}

#[tokio::test]
async fn a_missing_file_is_a_new_epoch() {
    let folder = Folder::new("missing");
    let first = {
        let s = folder.open().await;
        s.append(vec![message("eve", None, &json("1"))], limits())
            .await
            .expect("stored");
        s.epoch().await.expect("an epoch")
    };
    std::fs::remove_file(folder.file()).expect("removed");
    let s = folder.open().await;
    assert_ne!(s.epoch().await.expect("an epoch"), first);
    assert!(fetch(&s, "eve", "t", None).await.messages.is_empty());
}

#[tokio::test]
async fn a_damaged_file_is_moved_aside_and_a_new_epoch_starts() {
    for (name, damage) in [
        ("garbage", Damage::Garbage),
        ("torn", Damage::Truncated),
        ("flipped", Damage::Flipped),
    ] {
        let folder = Folder::new(name);
        let first = {
            let s = DurableStorage::open(folder.file())
                .await
                .expect("a new file");
            let lines: Vec<NewMessage> = (0..200)
                .map(|i| message("fay", None, &json(&i.to_string())))
                .collect();
            s.append(lines, limits()).await.expect("stored");
            s.epoch().await.expect("an epoch")
        };
        let bytes = std::fs::read(folder.file()).expect("the file");
        let damaged = match damage {
            Damage::Garbage => vec![0x5a; bytes.len()],
            Damage::Truncated => bytes[..bytes.len() / 3].to_vec(),
            Damage::Flipped => {
                // Every byte of the header region and the first pages.
                let mut b = bytes.clone();
                for x in b.iter_mut().take(8192) {
                    *x ^= 0xff;
                }
                b
            }
        };
        std::fs::write(folder.file(), damaged).expect("damaged");
        let s = DurableStorage::open(folder.file())
            .await
            .unwrap_or_else(|e| panic!("{name}: not reopened: {e}"));
        assert_ne!(
            s.epoch().await.expect("an epoch"),
            first,
            "{name}: a damaged file kept its epoch"
        );
        assert!(fetch(&s, "fay", "t", None).await.messages.is_empty());
        let aside = std::fs::read_dir(&folder.0)
            .expect("the folder")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".unreadable-"));
        assert!(aside, "{name}: the damaged file was not kept aside");
    }
}

enum Damage {
    Garbage,
    Truncated,
    Flipped,
}

/// A 2 MiB tmpfs: a real full disk. Needs root (to mount); skipped loudly without, failed
/// without under `CI=true`.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let path = std::env::temp_dir().join(format!("simpleio-full-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&path);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true: this test needs to mount a tmpfs (run as root)");
            }
            eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk(path))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_unavailable_and_recovers() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let file = disk.0.join("store.redb");
    let s = DurableStorage::open(&file).await.expect("a new file");
    let epoch = s.epoch().await.expect("an epoch");
    s.append(vec![message("gil", None, &json(r#""kept""#))], limits())
        .await
        .expect("stored");
    // Written now, its `Persisting` awaited only after later writes failed: the outcome is its
    // own batch's, not the failure that came after.
    let (_, early) = s
        .append_ordered(vec![message("gil", None, &json(r#""early""#))], limits())
        .await
        .expect("ordered");
    let committed = s.commits();
    for _ in 0..200 {
        if s.commits() > committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fill the disk with another file, then send until a write is refused.
    let filler = disk.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=64"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let line = json(&format!(r#""{}""#, "z".repeat(4_000)));
    // An ordered append has its place at once: the first refused write reaches it through its
    // `Persisting`, and the message is gone with it (counted below: nothing but what was
    // stored).
    let mut failed_late = None;
    let mut stored = 0;
    for _ in 0..2_000 {
        let (_, written) = s
            .append_ordered(vec![message("gil", None, &line)], limits())
            .await
            .expect("an ordered append refused before any write failed");
        match written.wait().await {
            Ok(()) => stored += 1,
            Err(e) => {
                failed_late = Some(e);
                break;
            }
        }
    }
    let failed_late = failed_late.expect("a full disk refused nothing");
    assert!(
        matches!(failed_late, StorageError::Unavailable(_)),
        "a refused write is not `Unavailable` (503): {failed_late}"
    );
    // Until the disk has room again (rebuilding memory writes the log into the file), every
    // write is refused at once.
    let refused = s
        .append(vec![message("gil", None, &line)], limits())
        .await
        .expect_err("a write on a full disk was not refused");
    assert!(
        matches!(refused, StorageError::Unavailable(_)),
        "a full disk is not `Unavailable` (503): {refused}"
    );
    early
        .wait()
        .await
        .expect("a message written before the failures is told it failed");
    stored += 1;
    // Over HTTP, with the disk still full: a new client's first poll must be written, and is
    // answered 503 with the spec's code, not an empty read.
    let app = support::server::TestServer::start(SimpleIoLayer::builder().storage(s.clone())).await;
    let res = reqwest::Client::new()
        .get(format!("{}?client=newtab-0001", app.url()))
        .header("x-user", "ivy")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status().as_u16(), 503);
    let body: serde_json::Value = res.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let mut app = app;
    app.stop().await;
    drop(app);
    // Reads that saw nothing lost still answer, or fail loudly; none return what was refused.
    std::fs::remove_file(&filler).expect("space freed");
    let mut recovered = false;
    for _ in 0..50 {
        if s.append(vec![message("gil", None, &json(r#""after""#))], limits())
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the storage did not recover once space was freed"
    );
    let read = fetch(&s, "gil", "t", None).await;
    assert_eq!(read.epoch, epoch, "the epoch changed");
    let got = texts(&read);
    assert_eq!(got.first().map(String::as_str), Some(r#""kept""#));
    assert_eq!(got.last().map(String::as_str), Some(r#""after""#));
    assert_eq!(
        got.len(),
        stored + 2,
        "lines stored before the refusal were lost"
    );
    drop(s);
    // And all of it is in the file. The server's background tasks hold handles of the storage
    // until they notice the layer is gone, a moment after it was dropped: the file stays open
    // (and refuses a second opening) until the last one goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        match DurableStorage::open(&file).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not reopened yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not reopened: {e}"),
        }
    };
    assert_eq!(texts(&fetch(&s, "gil", "t", None).await).len(), stored + 2);
}

/// `Sending::ordered()`: a sender emits its next message once the last one has its place, not
/// once it is written, so a stream of messages shares a few fsyncs (and polls) instead of
/// taking one each, and its recipient still reads them in order, each once, each confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_sends_keep_their_order_and_share_commits() {
    const SENT: u64 = 200;
    let folder = Folder::new("ordered");
    let s = folder.open().await;
    // A short hold: the last poll, which only confirms, answers soon.
    let server = support::server::TestServer::start(
        SimpleIoLayer::builder()
            .storage(s.clone())
            .hold_time(Duration::from_millis(300)),
    )
    .await;
    let mut tab = support::wire::Wire::new(&server).tab("ann", "tab1");
    tab.receive().await;

    // The control: awaiting `stored()` for each message takes one commit each at least.
    let before = s.commits();
    for n in 0..10 {
        let sending = server.io.to_user("bob").emit("n", &n);
        drop(sending.stored().await.expect("stored"));
    }
    let one_by_one = s.commits() - before;
    assert!(
        one_by_one >= 10,
        "10 messages each awaited to `stored()` took {one_by_one} commits, not one each"
    );

    let before = s.commits();
    let mut confirmations = Vec::new();
    for n in 0..SENT {
        let sending = server.io.to_user("ann").emit("n", &n);
        let ordered = sending.ordered().await.expect("ordered");
        // A receipt of a message not yet written could later tell another's confirmation.
        assert!(ordered.receipts().is_empty(), "receipts before the write");
        confirmations.push(ordered);
    }
    let while_ordering = s.commits() - before;
    // Its receipts once it is written.
    let last = confirmations
        .pop()
        .expect("one")
        .stored()
        .await
        .expect("stored");
    assert_eq!(last.receipts().len(), 1, "no receipt once stored");
    confirmations.push(last);
    let mut got = Vec::new();
    while got.len() < SENT as usize {
        let batch = tab.receive().await;
        assert!(!batch.messages.is_empty(), "a poll answered with nothing");
        got.extend(batch.messages);
    }
    // Confirms the last batch: every emit resolves delivered.
    tab.receive().await;
    for confirmation in confirmations {
        tokio::time::timeout(Duration::from_secs(10), confirmation)
            .await
            .expect("confirmed in time")
            .expect("delivered");
    }
    let numbers: Vec<u64> = got.iter().map(|m| m.data.as_u64().expect("n")).collect();
    assert_eq!(
        numbers,
        (0..SENT).collect::<Vec<_>>(),
        "not in order, or not each once"
    );
    assert!(
        got.windows(2).all(|w| w[0].pos < w[1].pos),
        "positions do not increase"
    );
    eprintln!("{SENT} ordered sends: {while_ordering} commits while they were ordered");
    assert!(
        while_ordering <= SENT / 2,
        "{SENT} ordered sends took {while_ordering} commits: they did not share them"
    );
}

/// `Storage::append_ordered` on the file: the positions at once, and a `Persisting` that
/// resolves only once a commit holding them is done.
#[tokio::test]
async fn an_ordered_append_is_written_when_its_persisting_resolves() {
    let folder = Folder::new("persisting");
    let s = folder.open().await;
    for round in 0..20 {
        let before = s.commits();
        let (appended, written) = s
            .append_ordered(vec![message("hal", None, &json(r#""x""#))], limits())
            .await
            .expect("ordered");
        assert_eq!(positions(&appended.outcomes).len(), 1);
        assert!(!written.is_done(), "nothing to wait for on a file");
        written.wait().await.expect("written");
        assert!(
            s.commits() > before,
            "round {round}: resolved before any commit held the message"
        );
    }
}

#[tokio::test]
async fn concurrent_writes_share_commits() {
    let folder = Folder::new("group");
    let s = folder.open().await;
    let before = s.commits();
    let line = json(r#""hi""#);
    // 500 appends at once, each to a user of its own, as 500 requests would.
    let appends = (0..500).map(|i| {
        let (s, line) = (s.clone(), line.clone());
        async move {
            s.append(vec![message(&format!("u{i}"), None, &line)], limits())
                .await
                .expect("stored")
        }
    });
    let done = futures_util::future::join_all(appends).await;
    assert_eq!(done.len(), 500);
    let commits = s.commits() - before;
    eprintln!("500 concurrent appends: {commits} commits");
    assert!(
        (1..=50).contains(&commits),
        "500 concurrent appends took {commits} commits: one fsync each, no group commit"
    );
}

#[tokio::test]
async fn a_file_in_use_is_refused_and_left_alone() {
    let folder = Folder::new("busy");
    let s = folder.open().await;
    let epoch = s.epoch().await.expect("an epoch");
    let second = DurableStorage::open(folder.file()).await;
    assert!(
        matches!(second, Err(StorageError::Unavailable(_))),
        "a second opening of a file in use: {second:?}"
    );
    let aside = folder.holds_one_moved_aside();
    assert!(
        !aside,
        "a file in use was taken for damaged and moved aside"
    );
    drop(s);
    let s = DurableStorage::open(folder.file()).await.expect("reopened");
    assert_eq!(s.epoch().await.expect("an epoch"), epoch);
}

/// Appends whose changes share a frame are told in one `Appended`, naming each user once:
/// signals wait for their frame, and one each would reach the hub as a burst. Thirty thousand
/// appends (more than the channel holds) made while the runtime's one thread is busy, so that
/// nothing reads until they are all written, reach a subscriber on that thread whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn appends_that_share_a_frame_are_told_in_one_signal() {
    const USERS: usize = 30_000;
    let folder = Folder::new("burst");
    let storage = folder.open().await;
    let mut signals = storage.subscribe();
    let reader = tokio::spawn(async move {
        let mut named = std::collections::HashSet::new();
        let mut appended = 0;
        while named.len() < USERS {
            match signals.recv().await {
                Ok(Signal::Appended { users }) => {
                    appended += 1;
                    named.extend(users.iter().map(|u| u.as_str().to_owned()));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("after {} users: {e}", named.len())),
            }
        }
        Ok(appended)
    });
    let appender = storage.clone();
    tokio::spawn(async move {
        let data = json("1");
        for i in 0..USERS {
            let to = format!("u{i}");
            // Placed in memory at once; none waits for its write.
            let (appended, _written) = appender
                .append_ordered(vec![message(&to, None, &data)], limits())
                .await
                .expect("appended");
            assert_eq!(appended.outcomes.len(), 1);
        }
        // Holds the runtime's thread while the writer writes and publishes: nothing reads
        // meanwhile (what it has not published by then is read after, within the timeout).
        std::thread::sleep(Duration::from_millis(500));
    })
    .await
    .expect("the appending task");
    let appended = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("every user named within 20 s")
        .expect("the reading task")
        .expect("no signal lost to an overflow");
    assert!(
        appended < USERS / 10,
        "{appended} Appended signals for {USERS} appends: one per frame, not per append"
    );
}

/// Signals that no frame merges (here 30,000 announcements, twice what the channel holds) reach
/// a subscriber that reads late, all of them: with the channel full the writer waits for room
/// instead of overflowing it, which would make the hub resync. The runtime's one thread is held
/// while the writer publishes, so nothing reads until the channel is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_subscriber_that_reads_late_loses_no_signal() {
    const SIGNALS: u64 = 30_000;
    let folder = Folder::new("late-reader");
    let storage = folder.open().await;
    let mut signals = storage.subscribe();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < SIGNALS {
            match signals.recv().await {
                Ok(Signal::PollStarted { poll, .. }) => {
                    if poll != seen {
                        return Err(format!("poll {poll} came as number {seen}"));
                    }
                    seen += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(format!("after {seen} signals: {e}")),
            }
        }
        Ok(seen)
    });
    let publisher = storage.clone();
    tokio::spawn(async move {
        for poll in 0..SIGNALS {
            publisher
                .publish(Signal::PollStarted {
                    user: UserId::from("kim"),
                    client: ClientId::new("tab").expect("a client id"),
                    poll,
                })
                .await
                .expect("published");
        }
        // Holds the runtime's thread while the writer publishes: nothing reads meanwhile
        // (well within the second after which the writer stops waiting for a reader).
        std::thread::sleep(Duration::from_millis(200));
    })
    .await
    .expect("the publishing task");
    let seen = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("every signal read within 20 s")
        .expect("the reading task")
        .expect("no signal lost to an overflow");
    assert_eq!(seen, SIGNALS);
}

/// A checkpoint is written a slice at a time, between frames, and holds the frames written
/// meanwhile too. Four writers store 3,200 messages of 4 KB (13 MB of log: several checkpoints,
/// frames written while each is under way) while copies of the files are taken, as a crash
/// would leave them (`Folder::crash_copy`): each copy holds every message stored before it was
/// taken, in order, under the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_taken_while_checkpoints_are_written_hold_every_stored_message() {
    const WRITERS: usize = 4;
    const EACH: usize = 800;
    let folder = Folder::new("slices");
    let s = folder.open().await;
    let epoch = s.epoch().await.expect("an epoch");
    let stored: Arc<Vec<std::sync::atomic::AtomicUsize>> =
        Arc::new((0..WRITERS).map(|_| Default::default()).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (s, stored) = (s.clone(), stored.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let line = json(&format!(r#""{i:05}{}""#, "y".repeat(4_000)));
                    s.append(vec![message(&format!("w{w}"), None, &line)], limits())
                        .await
                        .expect("stored");
                    stored[w].store(i + 1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut copies = Vec::new();
    while !writers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let before: Vec<usize> = stored
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        let copy = folder.crash_copy(&s, &format!("slices-copy-{}", copies.len()));
        copies.push((copy, before));
    }
    for w in writers {
        w.await.expect("a writer");
    }
    drop(s);
    assert!(copies.len() >= 3, "only {} copies taken", copies.len());
    let finished = (folder, vec![EACH; WRITERS]);
    for (copy, before) in copies.iter().chain(std::iter::once(&finished)) {
        let reopened = copy.open().await;
        assert_eq!(
            reopened.epoch().await.expect("an epoch"),
            epoch,
            "a copy came back under a new epoch: {}",
            copy.0.display()
        );
        for (w, &count) in before.iter().enumerate() {
            let read = fetch(&reopened, &format!("w{w}"), "t", None).await;
            let numbers: Vec<usize> = texts(&read)
                .iter()
                .map(|t| t[1..6].parse().expect("a number"))
                .collect();
            assert!(
                numbers.len() >= count && numbers.iter().copied().eq(0..numbers.len()),
                "writer {w}: {count} stored before the copy, {} read back, in order: {}",
                numbers.len(),
                numbers.iter().copied().eq(0..numbers.len())
            );
        }
    }
}
