//! The write-ahead log in front of the redb file: each batch of changes is one frame appended
//! to `PATH.log` and one `fdatasync`, a few KiB written in one place where a redb commit
//! rewrites every B-tree page the batch touched. The frames are written into the redb file
//! later, many batches at once, by a *checkpoint* ([`super::checkpoint`]), which leaves out
//! what came and went in between (a message delivered since it was stored, a cursor moved
//! again): most of a busy server's changes never reach the B-tree.
//!
//! A frame: `magic` (4 bytes), the body's length (4), its sequence number (8), the log's tag
//! (8), a CRC-32 of all that and the body (4), then the body ([`super::changes`]). Frames are
//! written one after another from the start of the file, each synced before the next is
//! written, so only the last can be torn. After a checkpoint (whose transaction records the
//! last sequence number it holds) the log is written from its start again, over the old
//! frames. Reading stops at the first frame that is not the next one: a bad checksum (torn),
//! another sequence number (an older cycle's frame, or zeros), or another tag (a log that
//! belongs to another file).
//!
//! Where reading stopped, only the last frame may have been torn: a whole frame of this log
//! further on numbered two or more past the last one read means that the frame in between was
//! synced and then damaged (its checksum, magic, tag or length), and the log is reported damaged
//! instead of read as ending there, which would drop that frame and every one after it in
//! silence. A whole frame numbered just one past it can be a frame whose write failed and whose
//! header could not be wiped, its number then given to the next frame: not evidence. A damaged
//! last frame looks like a torn one and cannot be told from it.
//!
//! The file is grown in steps, with zeros, before frames are written into the new part: an
//! `fdatasync` then writes the frame's pages alone, not the file's size as well.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::changes;
use crate::storage::StorageError;
use crate::storage::memory::journal::Change;

/// Marks the start of a frame ("SIOL").
const MAGIC: u32 = 0x5349_4f4c;
/// magic, length, sequence number, tag, checksum.
const HEADER: usize = 4 + 4 + 8 + 8 + 4;
/// How much the file grows at a time.
const GROW: u64 = 256 << 10;
/// A log left larger than this by a checkpoint that could not be written for a while (a full
/// disk) is cut back to it once one is.
const KEEP: u64 = 16 << 20;

/// The log's file, next to the redb file at `db`.
pub(super) fn path_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// Makes an empty log at `path` (in place of any), durably: the file and its folder's entry
/// are synced, so that a file that records a log never finds it missing after a crash.
pub(super) fn create(path: &Path) -> std::io::Result<()> {
    File::create(path)?.sync_all()?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // A folder opened for reading can be synced on Unix; elsewhere this is best effort.
        if let Ok(folder) = File::open(folder) {
            let _ = folder.sync_all();
        }
    }
    Ok(())
}

/// The log, being written.
#[derive(Debug)]
pub(super) struct Log {
    file: File,
    /// Where the next frame goes.
    end: u64,
    /// How long the file is: the bytes before are written (frames or zeros).
    len: u64,
    next_seq: u64,
    tag: u64,
    /// The frame being made: kept for the next one.
    frame: Vec<u8>,
}

impl Log {
    /// Opens (or makes) the log at `path` to write frames from its start, the first numbered
    /// `next_seq`: whatever it held is in the redb file already.
    pub(super) fn open(path: &Path, tag: u64, next_seq: u64) -> std::io::Result<Log> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Log {
            file,
            end: 0,
            len,
            next_seq,
            tag,
            frame: Vec::new(),
        })
    }

    /// How many bytes of frames the log holds since the last checkpoint.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// The sequence number of the last frame appended (or, before any, of the last one the
    /// redb file holds).
    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Appends `changes` as one frame and syncs it: once this returns they survive a crash.
    pub(super) fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let frame = &mut self.frame;
        frame.clear();
        frame.resize(HEADER, 0);
        changes::encode(changes, frame);
        let body = frame.len() - HEADER;
        let body = u32::try_from(body).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a batch of over 4 GiB")
        })?;
        frame[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        frame[4..8].copy_from_slice(&body.to_be_bytes());
        frame[8..16].copy_from_slice(&self.next_seq.to_be_bytes());
        frame[16..24].copy_from_slice(&self.tag.to_be_bytes());
        let crc = checksum(&frame[..24], &frame[HEADER..]);
        frame[24..28].copy_from_slice(&crc.to_be_bytes());

        let need = self.end + frame.len() as u64;
        if need > self.len {
            let grown = need.max(self.len + GROW);
            self.file.seek(SeekFrom::Start(self.len))?;
            write_zeros(&mut self.file, grown - self.len)?;
            self.len = grown;
        }
        let written = self
            .file
            .seek(SeekFrom::Start(self.end))
            .and_then(|_| self.file.write_all(&self.frame))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // The frame may be whole in the file although its writer is told it failed: its
            // header is wiped, so that no later start replays it (written in place, this needs
            // no free space).
            let wiped = self
                .file
                .seek(SeekFrom::Start(self.end))
                .and_then(|_| self.file.write_all(&[0; HEADER]))
                .and_then(|()| self.file.sync_data());
            if let Err(wipe) = wiped {
                tracing::error!(
                    error = %wipe,
                    "simpleio: wiping a frame of the storage's log that failed to write failed: \
                     a restart may replay it"
                );
            }
            return Err(e);
        }
        self.end = need;
        self.next_seq += 1;
        Ok(())
    }

    /// After a checkpoint that holds every frame before `next_seq`: the next frame, numbered
    /// so, goes at the start again.
    pub(super) fn restart(&mut self, next_seq: u64) -> std::io::Result<()> {
        self.end = 0;
        self.next_seq = next_seq;
        if self.len > KEEP {
            self.file.set_len(KEEP)?;
            self.len = KEEP;
        }
        Ok(())
    }
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    crc.update(body);
    crc.finalize()
}

fn write_zeros(file: &mut File, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 64 << 10];
    while n > 0 {
        let step = n.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..step])?;
        n -= step as u64;
    }
    Ok(())
}

/// The frames of a log read back.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Their changes, in order.
    pub(super) changes: Vec<Change>,
    /// The sequence number of the last frame read: `after` if none.
    pub(super) last_seq: u64,
    /// How many frames.
    pub(super) frames: u64,
}

/// Reads the frames of the log at `path` that follow frame `after` (the last one the redb
/// file holds), up to frame `upto` if given. A missing log is `None`. After a checkpoint the
/// log is written from its start again, so the frame after it is the first one in the file.
///
/// A frame that is not the next one ends the log; one that is, whose checksum holds, but whose
/// body cannot be read is damage: an error, never skipped. So is a whole frame after the end
/// numbered two or more past the last one read ([`later_frame`]): the end was not a torn last
/// frame.
pub(super) fn read(
    path: &Path,
    tag: u64,
    after: u64,
    upto: Option<u64>,
) -> Result<Option<Replay>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StorageError::Unavailable(format!(
                "reading the storage's log: {e}"
            )));
        }
    };
    let mut replay = Replay {
        last_seq: after,
        ..Replay::default()
    };
    let mut at = 0;
    while let Some(frame) = whole_frame(&bytes, at, tag) {
        if frame.seq != replay.last_seq.saturating_add(1)
            || upto.is_some_and(|upto| frame.seq > upto)
        {
            break;
        }
        changes::decode(frame.body, &mut replay.changes)?;
        replay.last_seq = frame.seq;
        replay.frames += 1;
        at += HEADER + frame.body.len();
    }
    if let Some(later) = later_frame(&bytes, at, tag, replay.last_seq, upto) {
        return Err(StorageError::Corrupt(format!(
            "frame {} of the storage's log is damaged: frame {later} after it is whole",
            replay.last_seq + 1
        )));
    }
    Ok(Some(replay))
}

/// A frame of a log whose magic, tag, length and checksum hold.
struct Frame<'a> {
    seq: u64,
    body: &'a [u8],
}

/// The frame of the log tagged `tag` that starts at `at` in `bytes`, if one whole one does.
fn whole_frame(bytes: &[u8], at: usize, tag: u64) -> Option<Frame<'_>> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let number = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[8 - range.len()..].copy_from_slice(&header[range]);
        u64::from_be_bytes(b)
    };
    if number(0..4) != u64::from(MAGIC) || number(16..24) != tag {
        return None;
    }
    let body_start = at + HEADER;
    let body = bytes.get(body_start..body_start.checked_add(number(4..8) as usize)?)?;
    (u64::from(checksum(&header[..24], body)) == number(24..28)).then(|| Frame {
        seq: number(8..16),
        body,
    })
}

/// The number of a whole frame of this log at or after `from` numbered two or more past frame
/// `last` (and not past `upto`): frame `last + 1` was then synced before it, and is damaged, not
/// torn.
///
/// What else a log holds past its end has a lower number (an older cycle's frames: numbers
/// only grow), or `last + 1` itself: a frame whose write failed and whose header could not be
/// wiped, left whole where it was while the file was rebuilt and the log started again from
/// its start with the same number. Found by looking for the magic at every offset, as a
/// damaged frame's length cannot say where the next one starts: once per start, linear in the
/// log's size.
fn later_frame(bytes: &[u8], from: usize, tag: u64, last: u64, upto: Option<u64>) -> Option<u64> {
    let past = last.saturating_add(2);
    if upto.is_some_and(|upto| upto < past) {
        return None;
    }
    let magic = MAGIC.to_be_bytes();
    let rest = bytes.get(from..)?;
    rest.windows(magic.len())
        .enumerate()
        .filter(|(_, w)| *w == magic)
        .filter_map(|(offset, _)| whole_frame(bytes, from + offset, tag))
        .map(|frame| frame.seq)
        .find(|&seq| seq >= past && upto.is_none_or(|upto| seq <= upto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::UserId;

    fn dir() -> PathBuf {
        super::super::test_folder("log")
    }

    fn unmessage(user: &str, pos: u64) -> Change {
        Change::Unmessage {
            user: UserId::from(user),
            pos,
        }
    }

    fn positions(replay: &Replay) -> Vec<u64> {
        replay
            .changes
            .iter()
            .map(|c| match c {
                Change::Unmessage { pos, .. } => *pos,
                other => panic!("not written: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn frames_read_back_in_order_from_after_the_checkpoint() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        log.append(&[unmessage("a", 1), unmessage("a", 2)])
            .expect("written");
        log.append(&[unmessage("b", 3)]).expect("written");
        let all = read(&path, 7, 0, None).expect("read").expect("a log");
        assert_eq!((all.frames, all.last_seq), (2, 2));
        assert_eq!(positions(&all), [1, 2, 3]);
        // A file that holds frame 1 started the log again after it: frame 1 at the start is
        // not the next one, so nothing here is read (frame 2 after it, one past, is no
        // evidence of damage: see the next test).
        let rest = read(&path, 7, 1, None).expect("read").expect("a log");
        assert_eq!((rest.frames, rest.last_seq), (0, 1));
        // Up to frame 1 only (a frame written but not synced when a write failed).
        let first = read(&path, 7, 0, Some(1)).expect("read").expect("a log");
        assert_eq!(positions(&first), [1, 2]);
        // Another file's log: nothing.
        let other = read(&path, 8, 0, None).expect("read").expect("a log");
        assert_eq!(other.frames, 0);
        assert!(
            read(&path.with_extension("gone"), 7, 0, None)
                .expect("read")
                .is_none()
        );
    }

    #[test]
    fn after_a_restart_the_older_cycles_frames_are_not_read() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        for pos in 1..=3 {
            log.append(&[unmessage("a", pos)]).expect("written");
        }
        // Checkpointed up to frame 3; frame 4 goes over frame 1.
        log.restart(4).expect("restarted");
        log.append(&[unmessage("a", 4)]).expect("written");
        let read_back = read(&path, 7, 3, None).expect("read").expect("a log");
        assert_eq!(positions(&read_back), [4]);
        assert_eq!(read_back.last_seq, 4);
        // Checkpointed up to 4, nothing after: frame 2 behind it is not the next one.
        let none = read(&path, 7, 4, None).expect("read").expect("a log");
        assert_eq!((none.frames, none.last_seq), (0, 4));
    }

    #[test]
    fn a_torn_last_frame_is_not_read_and_a_damaged_body_is_an_error() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        log.append(&[unmessage("a", 1)]).expect("written");
        let first_end = log.end();
        log.append(&[unmessage("a", 2)]).expect("written");
        let mut bytes = std::fs::read(&path).expect("the log");
        // Torn: the second frame's last byte never made it.
        let end = log.end() as usize;
        bytes[end - 1] ^= 0xff;
        std::fs::write(&path, &bytes).expect("written");
        let torn = read(&path, 7, 0, None).expect("read").expect("a log");
        assert_eq!(positions(&torn), [1]);
        // A frame whose checksum holds but whose body is not changes: damage, reported.
        let mut frame = vec![0u8; HEADER];
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        frame[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        frame[4..8].copy_from_slice(&3u32.to_be_bytes());
        frame[8..16].copy_from_slice(&2u64.to_be_bytes());
        frame[16..24].copy_from_slice(&7u64.to_be_bytes());
        let crc = checksum(&frame[..24], &frame[HEADER..]);
        frame[24..28].copy_from_slice(&crc.to_be_bytes());
        bytes[first_end as usize..first_end as usize + frame.len()].copy_from_slice(&frame);
        std::fs::write(&path, &bytes).expect("written");
        assert!(read(&path, 7, 0, None).is_err());
    }

    /// Three frames, the middle one damaged in its body, its length or its magic: the third
    /// is whole, so the second was synced and is not torn. The log is damaged, not short.
    #[test]
    fn a_damaged_frame_followed_by_a_whole_one_is_an_error_not_the_end() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        log.append(&[unmessage("a", 1)]).expect("written");
        let second = log.end() as usize;
        log.append(&[unmessage("a", 2), unmessage("a", 3)])
            .expect("written");
        log.append(&[unmessage("a", 4)]).expect("written");
        let whole = std::fs::read(&path).expect("the log");
        for (what, offset) in [("body", HEADER + 2), ("length", 6), ("magic", 0)] {
            let mut bytes = whole.clone();
            bytes[second + offset] ^= 0x40;
            std::fs::write(&path, &bytes).expect("written");
            let read_back = read(&path, 7, 0, None);
            let Err(StorageError::Corrupt(why)) = read_back else {
                panic!("a damaged {what} was read as the log's end: {read_back:?}");
            };
            assert!(why.contains("frame 2"), "{what}: {why}");
            // Read up to frame 1 only (after a failed write), the later frames are not asked
            // for: nothing is damaged in what is read.
            let first = read(&path, 7, 0, Some(1)).expect("read").expect("a log");
            assert_eq!(positions(&first), [1], "{what}");
        }
        // The last frame damaged is a torn end: nothing whole follows it.
        let mut bytes = whole.clone();
        let last = log.end() as usize - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).expect("written");
        let torn = read(&path, 7, 0, None).expect("read").expect("a log");
        assert_eq!(positions(&torn), [1, 2, 3]);
    }

    /// A frame whose write failed and whose header could not be wiped stays whole where it
    /// was; the file is rebuilt from the frames before it and the log starts again from its
    /// start, the next frame taking the failed one's number. If that one is torn by a crash,
    /// the log ends there: the stale frame further on is not taken for damage.
    #[test]
    fn a_failed_frames_number_given_again_is_not_taken_for_damage() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        for pos in 1..=3 {
            log.append(&[unmessage("a", pos)]).expect("written");
        }
        // Frame 4 is whole in the file, but its writer was told it failed (its wipe failed
        // too): the file is rebuilt up to frame 3, and the log starts again with number 4.
        log.append(&[unmessage("a", 4)]).expect("written");
        log.restart(4).expect("restarted");
        log.append(&[unmessage("a", 40)]).expect("written");
        let mut bytes = std::fs::read(&path).expect("the log");
        // The new frame 4, at the start, torn.
        bytes[HEADER] ^= 0x40;
        std::fs::write(&path, &bytes).expect("written");
        let read_back = read(&path, 7, 3, None).expect("read").expect("a log");
        assert_eq!((read_back.frames, read_back.last_seq), (0, 3));
    }

    /// After a checkpoint the log starts again over older frames: they have lower numbers, so
    /// a torn first frame of the new cycle is its end, not damage.
    #[test]
    fn older_cycles_frames_after_a_torn_frame_are_not_taken_for_damage() {
        let path = dir().join("store.redb.log");
        let mut log = Log::open(&path, 7, 1).expect("a log");
        for pos in 1..=3 {
            log.append(&[unmessage("a", pos)]).expect("written");
        }
        log.restart(4).expect("restarted");
        log.append(&[unmessage("a", 4)]).expect("written");
        let mut bytes = std::fs::read(&path).expect("the log");
        bytes[HEADER] ^= 0x40;
        std::fs::write(&path, &bytes).expect("written");
        let read_back = read(&path, 7, 3, None).expect("read").expect("a log");
        assert_eq!((read_back.frames, read_back.last_seq), (0, 3));
    }
}
