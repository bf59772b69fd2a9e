//! Opening a [`DurableStorage`](super::DurableStorage)'s file and reading it back whole: the
//! records become the changes a [`MemoryStorage`](crate::MemoryStorage) is rebuilt from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::value::RawValue;

use super::codec::{self, MessageRecord, Payload};
use super::tables::{
    ACKS, CLIENTS, CURSORS, DATA, DEDUP, FORMAT, MESSAGES, META, ORIGINS, Open, PAYLOADS,
    PayloadIds, ROOMS, WATERMARKS,
};
use super::{checkpoint, log};
use crate::id::{ClientId, MessageId, UserId};
use crate::storage::memory::journal::Change;
use crate::storage::memory::restore::Restored;
use crate::storage::{DedupKey, Epoch, Member, StorageError};

/// The page cache redb keeps: the storage serves reads from memory, so the file is read only
/// at start and written in appends; a small cache is enough.
const CACHE_BYTES: usize = 16 << 20;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("{what}: {e}"))
}

/// Opens the file at `path`, making it (with a new epoch) if there is none. A file that cannot
/// be read as a store of this format is moved aside (to `PATH.unreadable-MILLIS`, kept for a
/// look) and a new one made, so the storage comes back with a new epoch instead of failing or
/// silently starting empty under the old one.
pub(super) fn open(path: &Path) -> Result<(Database, Loaded), StorageError> {
    if path.exists() {
        match open_existing(path) {
            Ok(opened) => return Ok(opened),
            Err(Unreadable::Busy(e)) => return Err(e),
            Err(Unreadable::Damaged(why)) => {
                let aside = aside_path(path);
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "simpleio: the storage file cannot be read ({why}); it is moved aside and a \
                     new one made: every message, confirmation and dedup record in it is lost, \
                     and clients resync under a new epoch"
                );
                std::fs::rename(path, &aside)
                    .map_err(|e| unavailable("moving the unreadable file aside", e))?;
                let log = log::path_for(path);
                if log.exists() {
                    std::fs::rename(&log, log::path_for(&aside))
                        .map_err(|e| unavailable("moving the unreadable log aside", e))?;
                }
            }
        }
    }
    create(path)
}

/// Why an existing file was not opened.
enum Unreadable {
    /// It may be fine, but cannot be opened now (another process holds it, an I/O error).
    Busy(StorageError),
    /// It is not a store this code can read.
    Damaged(String),
}

/// Opens the existing file at `path`, with the storage's cache size.
pub(super) fn reopen(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).open(path)
}

fn open_existing(path: &Path) -> Result<(Database, Loaded), Unreadable> {
    let db = reopen(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Unreadable::Busy(unavailable(
            "the storage file is open in another process",
            e,
        )),
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) if may_pass(&io) => {
            Unreadable::Busy(unavailable("reading the storage file", io))
        }
        other => Unreadable::Damaged(other.to_string()),
    })?;
    replay(&db, path, None).map_err(|e| match e {
        StorageError::Unavailable(_) => Unreadable::Busy(e),
        e => Unreadable::Damaged(e.to_string()),
    })?;
    let loaded = read_all(&db).map_err(|e| match e {
        StorageError::Unavailable(_) => Unreadable::Busy(e),
        e => Unreadable::Damaged(e.to_string()),
    })?;
    if loaded.restored.epoch.is_none() {
        return Err(Unreadable::Damaged("it holds no epoch".into()));
    }
    Ok((db, loaded))
}

/// Reopens the file after a failed write, its log's frames up to frame `upto` (the last one
/// synced: a later one may have been written whole, but its writer was told it failed)
/// written into it, and reads it back.
pub(super) fn reload(path: &Path, upto: u64) -> Result<(Database, Loaded), StorageError> {
    let db = reopen(path).map_err(|e| unavailable("reopening the storage file", e))?;
    replay(&db, path, Some(upto))?;
    let loaded = read_all(&db)?;
    Ok((db, loaded))
}

/// Writes the frames of the log after the file's last checkpoint (up to `upto`) into the file:
/// a checkpoint, so that the file alone holds everything and the log starts again. A file that
/// had no log yet is given one. A file whose log is gone lost what it held: damage.
fn replay(db: &Database, path: &Path, upto: Option<u64>) -> Result<(), StorageError> {
    let meta = read_meta(db)?;
    let log_path = log::path_for(path);
    let Some(tag) = meta.log_tag else {
        // Format 2, written before the log existed: everything is in the file. It gets a log
        // (made first, so that a file that records one always has it) and format 3, which a
        // version that would not read the log refuses instead of serving the file without it.
        log::create(&log_path).map_err(|e| unavailable("making the storage's log", e))?;
        let write = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut t = Open::new(&txn);
                let meta = t.meta()?;
                meta.insert("log_tag", fastrand::u64(..).to_be_bytes().as_slice())?;
                meta.insert("log_seq", 0u64.to_be_bytes().as_slice())?;
                meta.insert("format", [FORMAT].as_slice())?;
            }
            txn.commit()?;
            Ok(())
        };
        return write().map_err(|e| unavailable("writing the storage file", e));
    };
    let Some(frames) = log::read(&log_path, tag, meta.log_seq, upto)? else {
        return Err(corrupt("no log beside it: it was deleted"));
    };
    if let Some(upto) = upto
        && frames.last_seq != upto
    {
        // Frames that were confirmed are not in the log any more.
        return Err(StorageError::Corrupt(format!(
            "the storage's log ends at frame {}, not at {upto}, the last one written",
            frames.last_seq
        )));
    }
    if frames.frames == 0 {
        return Ok(());
    }
    let mut payloads = PayloadIds::starting_at(meta.next_payload);
    checkpoint::write(
        db,
        &frames.changes,
        &mut payloads,
        meta.last_pos,
        frames.last_seq,
    )
    .map_err(|e| match e {
        redb::Error::Corrupted(why) => StorageError::Corrupt(why),
        e => unavailable("writing the log into the storage file", e),
    })?;
    tracing::info!(
        path = %path.display(),
        frames = frames.frames,
        changes = frames.changes.len(),
        "simpleio: the storage's log written into its file"
    );
    Ok(())
}

/// The numbers the `meta` table keeps.
struct Meta {
    last_pos: u64,
    next_payload: u64,
    log_tag: Option<u64>,
    log_seq: u64,
}

fn read_meta(db: &Database) -> Result<Meta, StorageError> {
    let r = read_error;
    let txn = db.begin_read().map_err(|e| r(e.into()))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        // Made, but killed before its first commit: not a store.
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(corrupt("no meta table")),
        Err(e) => return Err(r(e.into())),
    };
    match meta.get("format").map_err(|e| r(e.into()))? {
        Some(v) if v.value() == [FORMAT] || v.value() == [FORMAT - 1] => {}
        Some(v) => return Err(corrupt(&format!("format {:?}, not {FORMAT}", v.value()))),
        None => return Err(corrupt("no format")),
    }
    let number = |key: &str| -> Result<Option<u64>, StorageError> {
        meta.get(key)
            .map_err(|e| r(e.into()))?
            .map(|v| {
                v.value()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a damaged number"))
            })
            .transpose()
    };
    Ok(Meta {
        last_pos: number("last_pos")?.unwrap_or(0),
        next_payload: number("next_payload")?.unwrap_or(0),
        log_tag: number("log_tag")?,
        log_seq: number("log_seq")?.unwrap_or(0),
    })
}

fn create(path: &Path) -> Result<(Database, Loaded), StorageError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| unavailable("making the storage file", e))?;
    let epoch = Epoch::random();
    // The log first, so that a file that records one always has it. Any log left by a file of
    // the same name is another file's: emptied.
    log::create(&log::path_for(path)).map_err(|e| unavailable("making the storage's log", e))?;
    let log_tag = fastrand::u64(..);
    let write = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut t = Open::new(&txn);
            t.make_all()?;
            t.meta()?.insert("format", [FORMAT].as_slice())?;
            t.meta()?.insert("epoch", epoch.as_str().as_bytes())?;
            t.meta()?
                .insert("log_tag", log_tag.to_be_bytes().as_slice())?;
            t.meta()?.insert("log_seq", 0u64.to_be_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    };
    write().map_err(|e| unavailable("writing the new storage file", e))?;
    tracing::info!(path = %path.display(), epoch = %epoch.as_str(), "simpleio: new storage file");
    let restored = Restored {
        epoch: Some(epoch),
        ..Restored::default()
    };
    Ok((
        db,
        Loaded {
            restored,
            next_payload: 0,
            log_tag,
            log_seq: 0,
        },
    ))
}

fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".unreadable-{}", crate::storage::now_millis()));
    PathBuf::from(name)
}

/// Whether an I/O error of redb's may pass: a file that is not one of its own it reports as
/// invalid data, and a cut one as an unexpected end, which are damage.
fn may_pass(io: &std::io::Error) -> bool {
    !matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
    )
}

/// What a failed read of the file means: an I/O error may pass (the file is then kept, and an
/// open fails for now rather than move it aside); anything else redb says of it is damage.
fn read_error(e: redb::Error) -> StorageError {
    match e {
        redb::Error::Io(io) if may_pass(&io) => unavailable("reading the storage file", io),
        other => StorageError::Corrupt(format!("the storage file cannot be read: {other}")),
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("the storage file holds {what}"))
}

/// What a file holds.
pub(super) struct Loaded {
    pub(super) restored: Restored,
    /// The id the next shared payload gets.
    pub(super) next_payload: u64,
    /// The tag of the file's log, and the last frame of it the file holds: the log is written
    /// from its start, from the frame after.
    pub(super) log_tag: u64,
    pub(super) log_seq: u64,
}

/// Reads every record: what a restart (or a failed write) rebuilds memory from.
pub(super) fn read_all(db: &Database) -> Result<Loaded, StorageError> {
    let r = read_error;
    let txn = db.begin_read().map_err(|e| r(e.into()))?;
    let meta = txn.open_table(META).map_err(|e| r(e.into()))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
        Ok(meta
            .get(key)
            .map_err(|e| r(e.into()))?
            .map(|v| v.value().to_vec()))
    };
    match get("format")?.as_deref() {
        Some([FORMAT]) => {}
        Some(other) => return Err(corrupt(&format!("format {other:?}, not {FORMAT}"))),
        None => return Err(corrupt("no format")),
    }
    let epoch = get("epoch")?
        .map(|bytes| String::from_utf8(bytes).map_err(|_| corrupt("an epoch that is not text")))
        .transpose()?
        .map(Epoch::new);
    let number = |key: &str| -> Result<u64, StorageError> {
        Ok(match get(key)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("a damaged number"))?,
            ),
            None => 0,
        })
    };
    let next_payload = number("next_payload")?;
    let (log_tag, log_seq) = (number("log_tag")?, number("log_seq")?);
    let mut restored = Restored {
        epoch,
        last_pos: number("last_pos")?,
        changes: Vec::new(),
    };
    let changes = &mut restored.changes;

    let payloads = txn.open_table(PAYLOADS).map_err(|e| r(e.into()))?;
    let mut shared: HashMap<u64, Arc<RawValue>> = HashMap::new();
    let messages = txn.open_table(MESSAGES).map_err(|e| r(e.into()))?;
    for row in messages.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        // By position: each user's messages come back in their order.
        let (pos, user) = super::tables::split_message_key(key.value())
            .ok_or_else(|| corrupt("a damaged message key"))?;
        let bytes = value.value();
        let m = MessageRecord::decode(bytes)?;
        let data = match m.payload {
            Payload::Inline(text) => json(text)?,
            Payload::Shared(id) => match shared.get(&id) {
                Some(data) => data.clone(),
                None => {
                    let text = payloads
                        .get(id)
                        .map_err(|e| r(e.into()))?
                        .ok_or_else(|| corrupt("a message whose shared payload is gone"))?;
                    let data = json(text.value())?;
                    shared.insert(id, data.clone());
                    data
                }
            },
        };
        restored.last_pos = restored.last_pos.max(pos);
        changes.push(Change::Message {
            user: UserId::from(user),
            pos,
            client: m.client,
            sender: m.sender,
            namespace: m.namespace.into(),
            event: m.event.into(),
            data,
            expires_at: m.expires_at,
            ack: m.ack,
        });
    }

    let clients = txn.open_table(CLIENTS).map_err(|e| r(e.into()))?;
    for row in clients.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, client) = key.value();
        let (polled, presence_ttl, namespaces) = codec::decode_client(value.value())?;
        changes.push(Change::Client {
            user: UserId::from(user),
            client: client_id(client)?,
            polled,
            namespaces,
            presence_ttl,
        });
    }

    // After the clients: a cursor row is put back into its client's record.
    let cursors = txn.open_table(CURSORS).map_err(|e| r(e.into()))?;
    for row in cursors.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, client) = key.value();
        let (cursor, vouched) = value.value();
        changes.push(Change::Cursor {
            user: UserId::from(user),
            client: client_id(client)?,
            cursor,
            vouched,
        });
    }

    let watermarks = txn.open_table(WATERMARKS).map_err(|e| r(e.into()))?;
    for row in watermarks.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, namespace) = key.value();
        changes.push(Change::Watermark {
            user: UserId::from(user),
            namespace: namespace.into(),
            pos: value.value(),
        });
    }

    let data = txn.open_table(DATA).map_err(|e| r(e.into()))?;
    for row in data.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, client, key) = key.value();
        changes.push(Change::Data {
            member: member(user, client)?,
            key: key.to_owned(),
            value: Some(value.value().to_owned()),
        });
    }

    let dedup = txn.open_table(DEDUP).map_err(|e| r(e.into()))?;
    for row in dedup.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, client, id) = key.value();
        let (seq, owner, until, outcome) = codec::decode_dedup(value.value())?;
        changes.push(Change::Dedup {
            key: DedupKey {
                user: UserId::from(user),
                client: client_id(client)?,
                id: MessageId::new(id).map_err(|_| corrupt("a damaged message id"))?,
            },
            seq,
            owner,
            until,
            outcome,
        });
    }

    let rooms = txn.open_table(ROOMS).map_err(|e| r(e.into()))?;
    for row in rooms.iter().map_err(|e| r(e.into()))? {
        let (key, _) = row.map_err(|e| r(e.into()))?;
        let (room, user, client) = key.value();
        changes.push(Change::Join {
            room: room.into(),
            member: member(user, client)?,
        });
    }
    let origins = txn.open_table(ORIGINS).map_err(|e| r(e.into()))?;
    for row in origins.iter().map_err(|e| r(e.into()))? {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, origin) = key.value();
        let (pos, until) = value.value();
        changes.push(Change::Origin {
            user: UserId::from(user),
            origin: origin.into(),
            pos,
            until,
        });
    }
    // A file written before acks existed has no such table: it holds no ack records.
    let acks = match txn.open_table(ACKS) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(r(e.into())),
    };
    for row in acks
        .iter()
        .map(|t| t.iter())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| r(e.into()))?
        .into_iter()
        .flatten()
    {
        let (key, value) = row.map_err(|e| r(e.into()))?;
        let (user, pos) = key.value();
        let (expires_at, client, replies) = codec::decode_ack(value.value())?;
        changes.push(Change::Ack {
            user: UserId::from(user),
            pos,
            client,
            expires_at,
            replies,
        });
    }
    Ok(Loaded {
        restored,
        next_payload,
        log_tag,
        log_seq,
    })
}

fn json(text: &str) -> Result<Arc<RawValue>, StorageError> {
    RawValue::from_string(text.to_owned())
        .map(Arc::from)
        .map_err(|_| corrupt("a payload that is not JSON"))
}

fn client_id(s: &str) -> Result<ClientId, StorageError> {
    ClientId::new(s).map_err(|_| corrupt("a damaged client id"))
}

fn member(user: &str, client: &str) -> Result<Member, StorageError> {
    Ok(if client.is_empty() {
        Member::User(UserId::from(user))
    } else {
        Member::Client(UserId::from(user), client_id(client)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transient I/O error keeps the file (the open fails for now); damage moves it aside.
    #[test]
    fn an_io_error_while_reading_is_not_damage() {
        let io = |kind| redb::Error::Io(std::io::Error::new(kind, "failed"));
        assert!(matches!(
            read_error(io(std::io::ErrorKind::Other)),
            StorageError::Unavailable(_)
        ));
        for damage in [
            io(std::io::ErrorKind::UnexpectedEof),
            io(std::io::ErrorKind::InvalidData),
            redb::Error::Corrupted("a bad page".into()),
        ] {
            assert!(matches!(read_error(damage), StorageError::Corrupt(_)));
        }
    }

    /// A file of another format (an older version's) is not read as this one: it is moved
    /// aside, and the storage starts a new epoch.
    #[test]
    fn a_file_of_another_format_is_moved_aside() {
        let dir = super::super::test_folder("format");
        let path = dir.join("store.redb");
        let (db, first) = open(&path).expect("a new file");
        let txn = db.begin_write().expect("a transaction");
        txn.open_table(META)
            .expect("meta")
            .insert("format", [1].as_slice())
            .expect("written");
        txn.commit().expect("committed");
        drop(db);

        reopens_moved_aside(&dir, &path, &first);
    }

    /// A file redb reads but finds damaged while the whole of it is read (here: a table
    /// missing) is moved aside, as at opening: the storage starts a new epoch rather than
    /// failing every start.
    #[test]
    fn a_file_damaged_past_its_opening_is_moved_aside() {
        let dir = super::super::test_folder("damaged");
        let path = dir.join("store.redb");
        let (db, first) = open(&path).expect("a new file");
        let txn = db.begin_write().expect("a transaction");
        txn.delete_table(ORIGINS).expect("deleted");
        txn.commit().expect("committed");
        drop(db);

        reopens_moved_aside(&dir, &path, &first);
    }

    /// Opens the file at `path` (in `dir`) again: it must come back new, with an epoch other
    /// than `first`'s, the old file kept aside beside it.
    fn reopens_moved_aside(dir: &Path, path: &Path, first: &Loaded) {
        let (_db, second) = open(path).expect("a new file in its place");
        assert_ne!(first.restored.epoch, second.restored.epoch);
        let aside = std::fs::read_dir(dir)
            .expect("the folder")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".unreadable-"));
        assert!(aside, "the unreadable file was not kept aside");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A file of format 2, written before the log existed, keeps its records and epoch: it is
    /// given a log and format 3 (which a version that ignores the log will not open).
    #[test]
    fn a_file_of_format_2_gets_a_log_and_keeps_its_records() {
        let dir = super::super::test_folder("format2");
        let path = dir.join("store.redb");
        let (db, first) = open(&path).expect("a new file");
        let message = Change::Message {
            user: UserId::from("ann"),
            pos: 7,
            client: None,
            sender: None,
            namespace: "/".into(),
            event: "line".into(),
            data: json("1").expect("JSON"),
            expires_at: u64::MAX,
            ack: false,
        };
        checkpoint::write(&db, &[message], &mut PayloadIds::default(), 0, 0).expect("written");
        let txn = db.begin_write().expect("a transaction");
        {
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert("format", [2].as_slice()).expect("written");
            meta.remove("log_tag").expect("removed");
            meta.remove("log_seq").expect("removed");
        }
        txn.commit().expect("committed");
        drop(db);
        std::fs::remove_file(log::path_for(&path)).expect("no log");

        let (db, second) = open(&path).expect("reopened");
        assert_eq!(first.restored.epoch, second.restored.epoch);
        assert_eq!(second.restored.last_pos, 7);
        assert!(
            matches!(
                second.restored.changes.as_slice(),
                [Change::Message { pos: 7, .. }]
            ),
            "{:?}",
            second.restored.changes
        );
        assert!(log::path_for(&path).exists(), "no log was made");
        let format = read_meta(&db).map(|m| m.log_tag.is_some()).expect("meta");
        assert!(format, "no log tag");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
