//! One announcement entry and its bytes: an envelope (kind announcement,
//! to-version = seq) around an `Announcement` message of
//! `schema/burrow.capnp`.

use crate::blobstore::BlobName;
use crate::error::FormatError;
use crate::schema::burrow_capnp::announcement;
use crate::schema::dataset_id::{check_same, DatasetId};
use crate::schema::envelope::{frame, BlobKind, Envelope};

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceKind {
    /// A producer published `version`.
    Announce,
    /// Consumers should move to `pinned_version` and stay there.
    Pin,
    /// The pin is lifted.
    Unpin,
}

impl AnnounceKind {
    /// The kind's name as the CLI and JSON output show it: `announce`,
    /// `pin` or `unpin`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceKind::Announce => "announce",
            AnnounceKind::Pin => "pin",
            AnnounceKind::Unpin => "unpin",
        }
    }
}

/// One entry of the log. Every entry carries the log's whole resolved
/// state, so the newest entry alone says where consumers should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The dataset the log belongs to: every entry of one log carries the
    /// same id, as does every blob the entries name.
    pub dataset_id: DatasetId,
    /// The entry's position in the log (`announce/<seq>`), from 1, dense:
    /// entry `seq + 1` is only written after `seq` was read.
    pub seq: u64,
    /// What the entry does: a publication, a pin or an unpin.
    pub kind: AnnounceKind,
    /// Newest version the producer published.
    pub version: u64,
    /// The version `version`'s delta starts from; 0 if it has none (the
    /// first version).
    pub from_version: u64,
    /// Nearest version at or below `version` that has a snapshot.
    pub snapshot_version: u64,
    /// Whether `snapshot/<version>` exists.
    pub has_snapshot: bool,
    /// Consumers should be at this version instead of `version`.
    pub pinned_version: Option<u64>,
    /// Who wrote this entry: the producer's id for an announcement, the
    /// operator's or tool's id for a pin or unpin.
    pub producer_id: String,
    /// When the entry was written, in microseconds since the Unix epoch
    /// (the writer's clock).
    pub timestamp_micros: i64,
    /// Size in bytes of `snapshot/<version>`; 0 if `version` has no
    /// snapshot.
    pub snapshot_bytes: u64,
    /// Size in bytes of the delta from `from_version` to `version`; 0 for
    /// the first version.
    pub delta_bytes: u64,
    /// Size in bytes of the reverse delta from `version` back to
    /// `from_version`; 0 for the first version.
    pub reverse_bytes: u64,
}

impl Announcement {
    /// The version consumers should be at: the pin if there is one.
    pub fn target(&self) -> u64 {
        self.pinned_version.unwrap_or(self.version)
    }

    /// The next entry after this one, of another kind, with the same
    /// published state (and so the same dataset id).
    pub fn follow_up(&self, kind: AnnounceKind, pinned: Option<u64>, writer_id: &str) -> Self {
        Announcement {
            seq: self.seq + 1,
            kind,
            pinned_version: pinned,
            producer_id: writer_id.to_string(),
            timestamp_micros: now_micros(),
            ..self.clone()
        }
    }

    /// The entry's bytes: envelope and message.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut a = message.init_root::<announcement::Builder>();
            a.set_seq(self.seq);
            a.set_dataset_id_hi(self.dataset_id.hi());
            a.set_dataset_id_lo(self.dataset_id.lo());
            a.set_kind(match self.kind {
                AnnounceKind::Announce => announcement::Kind::Announce,
                AnnounceKind::Pin => announcement::Kind::Pin,
                AnnounceKind::Unpin => announcement::Kind::Unpin,
            });
            a.set_version(self.version);
            a.set_from_version(self.from_version);
            a.set_snapshot_version(self.snapshot_version);
            a.set_has_snapshot(self.has_snapshot);
            a.set_pinned_version(self.pinned_version.unwrap_or(0));
            a.set_producer_id(self.producer_id.as_str());
            a.set_timestamp_micros(self.timestamp_micros);
            a.set_snapshot_bytes(self.snapshot_bytes);
            a.set_delta_bytes(self.delta_bytes);
            a.set_reverse_bytes(self.reverse_bytes);
        }
        let body = capnp::serialize::write_message_to_words(&message);
        frame(BlobKind::Announcement, 0, self.seq, &body)
    }

    /// Decodes and checks an entry; `blob` names it in errors.
    pub fn decode(bytes: &[u8], blob: &str) -> Result<Self, FormatError> {
        let (envelope, body) = Envelope::open(bytes, blob)?;
        let corrupt = |reason: String| FormatError::Corrupt {
            blob: blob.to_string(),
            reason,
        };
        if envelope.kind != BlobKind::Announcement {
            return Err(corrupt(format!(
                "expected an announcement, found a {}",
                envelope.kind.as_str()
            )));
        }
        let options = capnp::message::ReaderOptions {
            traversal_limit_in_words: Some(1 << 16),
            nesting_limit: 8,
        };
        let words = aligned_words(body);
        let message = capnp::serialize::read_message_from_flat_slice(
            &mut capnp::Word::words_to_bytes(&words),
            options,
        )
        .map_err(|e| FormatError::capnp(blob, "announcement message", e))?;
        let a = message
            .get_root::<announcement::Reader>()
            .map_err(|e| FormatError::capnp(blob, "announcement root", e))?;
        let kind = match a.get_kind() {
            Ok(announcement::Kind::Announce) => AnnounceKind::Announce,
            Ok(announcement::Kind::Pin) => AnnounceKind::Pin,
            Ok(announcement::Kind::Unpin) => AnnounceKind::Unpin,
            Err(e) => return Err(corrupt(format!("unknown announcement kind {}", e.0))),
        };
        if a.get_seq() != envelope.to_version {
            return Err(corrupt(format!(
                "entry says seq {} but its envelope says {}",
                a.get_seq(),
                envelope.to_version
            )));
        }
        let producer_id = a
            .get_producer_id()
            .and_then(|t| t.to_string().map_err(Into::into))
            .map_err(|e| FormatError::capnp(blob, "producer id", e))?;
        let pinned = a.get_pinned_version();
        let entry = Announcement {
            dataset_id: DatasetId::read(a.get_dataset_id_hi(), a.get_dataset_id_lo(), blob)?,
            seq: a.get_seq(),
            kind,
            version: a.get_version(),
            from_version: a.get_from_version(),
            snapshot_version: a.get_snapshot_version(),
            has_snapshot: a.get_has_snapshot(),
            pinned_version: (pinned != 0).then_some(pinned),
            producer_id,
            timestamp_micros: a.get_timestamp_micros(),
            snapshot_bytes: a.get_snapshot_bytes(),
            delta_bytes: a.get_delta_bytes(),
            reverse_bytes: a.get_reverse_bytes(),
        };
        if entry.from_version >= entry.version && entry.from_version != 0 {
            return Err(corrupt(format!(
                "version {} claims a delta from the later version {}",
                entry.version, entry.from_version
            )));
        }
        if entry.snapshot_version > entry.version {
            return Err(corrupt(format!(
                "nearest snapshot {} is after version {}",
                entry.snapshot_version, entry.version
            )));
        }
        Ok(entry)
    }
}

/// Checks that `next`, the entry read after `prev` (the one before it in
/// the log), belongs to the same dataset. Entries of one log all carry one
/// id: an entry with another is a store recreated under the readers, or two
/// datasets' entries mixed under one prefix, and the log is corrupt from
/// there on ([`FormatError::DatasetMismatch`] naming `announce/<next.seq>`
/// and both ids).
pub fn check_next(prev: &Announcement, next: &Announcement) -> Result<(), FormatError> {
    check_same(
        &format!(
            "{} (the log's dataset changes after {})",
            BlobName::Announce(next.seq),
            BlobName::Announce(prev.seq)
        ),
        prev.dataset_id,
        next.dataset_id,
    )
}

/// Copies a small body into word-aligned memory (entries are tiny; blobs
/// that are mapped are aligned by construction and never copied).
fn aligned_words(body: &[u8]) -> Vec<capnp::Word> {
    let mut words = capnp::Word::allocate_zeroed_vec(body.len() / 8);
    let len = words.len() * 8;
    capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(&body[..len]);
    words
}

/// The system clock as microseconds since the Unix epoch, the unit of
/// [`Announcement::timestamp_micros`]; 0 if the clock is before the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch (an entry's `timestamp_micros`, a
/// header's cycle start) as UTC, `2026-01-02T03:04:05Z`: what the CLI and
/// the web explorer print.
pub fn utc(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Announcement {
        Announcement {
            dataset_id: DatasetId::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210).unwrap(),
            seq: 7,
            kind: AnnounceKind::Announce,
            version: 70,
            from_version: 60,
            snapshot_version: 50,
            has_snapshot: false,
            pinned_version: None,
            producer_id: "p1".into(),
            timestamp_micros: 123,
            snapshot_bytes: 1,
            delta_bytes: 2,
            reverse_bytes: 3,
        }
    }

    #[test]
    fn round_trip() {
        let e = entry();
        assert_eq!(Announcement::decode(&e.encode(), "a").unwrap(), e);
        let pinned = e.follow_up(AnnounceKind::Pin, Some(50), "op");
        let back = Announcement::decode(&pinned.encode(), "a").unwrap();
        assert_eq!(back.target(), 50);
        assert_eq!(back.seq, 8);
        // A pin carries the dataset of the entry it follows.
        assert_eq!(back.dataset_id, e.dataset_id);
        check_next(&e, &back).unwrap();
    }

    /// An entry of another dataset after this one is refused, naming it and
    /// both datasets.
    #[test]
    fn an_entry_of_another_dataset_does_not_follow() {
        let e = entry();
        let mut next = e.follow_up(AnnounceKind::Unpin, None, "op");
        next.dataset_id = DatasetId::from_u128(0xb).unwrap();
        let err = check_next(&e, &next).unwrap_err().to_string();
        for part in [
            "announce/00000000000000000008",
            "announce/00000000000000000007",
            &e.dataset_id.to_string(),
            &next.dataset_id.to_string(),
        ] {
            assert!(err.contains(part), "{err}");
        }
    }

    #[test]
    fn truncated_entries_are_errors() {
        let bytes = entry().encode();
        for len in 0..bytes.len() {
            assert!(
                Announcement::decode(&bytes[..len], "a").is_err(),
                "len {len}"
            );
        }
    }
}
