//! The announcement log's behaviours, one function each, run on every
//! backend.

use super::support::Backend;
use burrow::announcer::{AnnounceError, AnnounceKind, Announcement, AnnouncementLog, Watcher};
use burrow::blobstore::BlobName;
use burrow::schema::DatasetId;
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};

/// The dataset of every entry these cases append.
pub fn dataset() -> DatasetId {
    DatasetId::from_u128(0xa11_0000_0000_0000_0000_0000_0000_0001).unwrap()
}

pub fn entry(seq: u64, version: u64, producer: &str) -> Announcement {
    Announcement {
        dataset_id: dataset(),
        seq,
        kind: AnnounceKind::Announce,
        version,
        from_version: version.saturating_sub(1),
        snapshot_version: 1.min(version),
        has_snapshot: version == 1,
        pinned_version: None,
        producer_id: producer.to_string(),
        timestamp_micros: 1_700_000_000_000_000 + seq as i64,
        snapshot_bytes: 100,
        delta_bytes: 10,
        reverse_bytes: 10,
    }
}

async fn log_with(b: &Backend, entries: u64) -> AnnouncementLog {
    let log = AnnouncementLog::new(b.store.clone());
    for seq in 1..=entries {
        log.append(&entry(seq, seq * 10, "p")).await.unwrap();
    }
    log
}

/// Appended entries read back; the newest is the latest.
pub async fn append_then_latest(b: &Backend) {
    let log = AnnouncementLog::new(b.store.clone());
    assert_eq!(log.latest().await.unwrap(), None);
    for seq in 1..=3 {
        log.append(&entry(seq, seq * 10, "p")).await.unwrap();
    }
    assert_eq!(log.latest().await.unwrap(), Some(entry(3, 30, "p")));
    assert_eq!(log.read(2).await.unwrap(), Some(entry(2, 20, "p")));
    assert_eq!(log.read(4).await.unwrap(), None);
    let all: Vec<u64> = log
        .entries_from(1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all, [1, 2, 3]);
}

/// Eight producers racing for the same seq: exactly one wins, the rest get
/// `NotPrimary`, and the stored entry is the winner's. Repeated for
/// `rounds` consecutive seqs.
pub async fn race_rounds(b: &Backend, rounds: u64) {
    const RACERS: usize = 8;
    for seq in 1..=rounds {
        let mut tasks = Vec::new();
        for racer in 0..RACERS {
            let log = AnnouncementLog::new(b.store.clone());
            let mine = entry(seq, seq * 10, &format!("producer-{racer}"));
            tasks.push(tokio::spawn(async move {
                let result = log.append(&mine).await;
                (mine, result)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (mine, result) = task.await.unwrap();
            match result {
                Ok(()) => winners.push(mine),
                Err(AnnounceError::NotPrimary { seq: lost }) => assert_eq!(lost, seq),
                Err(other) => panic!("{}: seq {seq}: unexpected {other:?}", b.name),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "{}: seq {seq}: winners {winners:?}",
            b.name
        );
        let log = AnnouncementLog::new(b.store.clone());
        assert_eq!(log.read(seq).await.unwrap().as_ref(), Some(&winners[0]));
    }
}

pub async fn concurrent_appenders_have_one_winner(b: &Backend) {
    race_rounds(b, 3).await;
}

/// Appending the very entry that is already there (a retried request whose
/// first attempt landed) succeeds; any other entry at that seq loses.
pub async fn append_is_idempotent_for_its_own_entry(b: &Backend) {
    let log = AnnouncementLog::new(b.store.clone());
    let mine = entry(1, 10, "p");
    log.append(&mine).await.unwrap();
    log.append(&mine).await.unwrap();
    let other = entry(1, 10, "q");
    let err = log.append(&other).await.unwrap_err();
    assert!(
        matches!(err, AnnounceError::NotPrimary { seq: 1 }),
        "{err:?}"
    );
}

/// A watcher that knows the newest seq spends one GET per idle poll: no
/// LIST, no HEAD.
pub async fn idle_watcher_poll_is_one_get(b: &Backend) {
    let log = log_with(b, 3).await;
    let mut watcher = Watcher::new(log.clone());
    assert_eq!(watcher.poll().await.unwrap().map(|e| e.seq), Some(3));

    let before = b.counts.seen();
    assert_eq!(watcher.poll().await.unwrap(), None);
    let seen = b.counts.seen().since(before);
    assert_eq!(
        (seen.gets, seen.lists, seen.heads),
        (1, 0, 0),
        "{}: {seen:?}",
        b.name
    );

    log.append(&entry(4, 40, "p")).await.unwrap();
    let before = b.counts.seen();
    assert_eq!(watcher.poll().await.unwrap().map(|e| e.seq), Some(4));
    let seen = b.counts.seen().since(before);
    assert_eq!((seen.gets, seen.lists), (2, 0), "{}: {seen:?}", b.name);
}

/// A hint that lags behind the log costs probes, not correctness.
pub async fn stale_hint_is_probed_past(b: &Backend) {
    let log = log_with(b, 4).await;
    b.store
        .overwrite(&BlobName::Latest, Bytes::from_static(b"2"))
        .await
        .unwrap();
    let before = b.counts.seen();
    assert_eq!(log.latest().await.unwrap().map(|e| e.seq), Some(4));
    assert_eq!(b.counts.seen().since(before).lists, 0);
}

/// A missing hint falls back to one LIST.
pub async fn missing_hint_falls_back_to_list(b: &Backend) {
    let log = log_with(b, 3).await;
    b.raw().delete(&b.path("announce/latest")).await.unwrap();
    let before = b.counts.seen();
    assert_eq!(log.latest().await.unwrap().map(|e| e.seq), Some(3));
    assert_eq!(b.counts.seen().since(before).lists, 1);
}

/// A hint that is not a number, or points past the log, is ignored.
pub async fn corrupt_hint_is_ignored(b: &Backend) {
    let log = log_with(b, 3).await;
    for hint in [&b"garbage"[..], b"", b"99999999999999999999999", b"7"] {
        b.store
            .overwrite(&BlobName::Latest, Bytes::copy_from_slice(hint))
            .await
            .unwrap();
        assert_eq!(
            log.latest().await.unwrap().map(|e| e.seq),
            Some(3),
            "{}: hint {:?}",
            b.name,
            String::from_utf8_lossy(hint)
        );
    }
}

/// A damaged entry is a `Corrupt` error naming it, not a panic and not a
/// silently skipped entry.
pub async fn corrupt_entry_is_a_format_error(b: &Backend) {
    let log = log_with(b, 2).await;
    b.raw()
        .put(
            &b.path(&BlobName::Announce(2).to_string()),
            PutPayload::from_static(b"BURROW\r\nbroken"),
        )
        .await
        .unwrap();
    let err = log.read(2).await.unwrap_err();
    match err {
        AnnounceError::Format(burrow::FormatError::Corrupt { blob, .. }) => {
            assert_eq!(blob, BlobName::Announce(2).to_string())
        }
        other => panic!("{}: expected Corrupt, got {other:?}", b.name),
    }
}

/// Pins hold consumers at an announced version; unpin releases them; a
/// version never announced cannot be pinned.
pub async fn pins_and_unpins(b: &Backend) {
    let log = AnnouncementLog::new(b.store.clone());
    let err = log.pin(10, "op").await.unwrap_err();
    assert!(matches!(err, AnnounceError::Empty), "{err:?}");

    let log = log_with(b, 3).await;
    let pinned = log.pin(20, "op").await.unwrap();
    assert_eq!((pinned.seq, pinned.target()), (4, 20));
    assert_eq!(log.latest().await.unwrap().unwrap().target(), 20);

    let err = log.pin(25, "op").await.unwrap_err();
    assert!(
        matches!(err, AnnounceError::NotAnnounced { version: 25 }),
        "{err:?}"
    );

    let unpinned = log.unpin("op").await.unwrap();
    assert_eq!((unpinned.seq, unpinned.kind), (5, AnnounceKind::Unpin));
    assert_eq!(log.latest().await.unwrap().unwrap().target(), 30);
}
