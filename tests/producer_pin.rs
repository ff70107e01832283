//! An operator's pins and unpins written while a producer runs.

use crate::common::*;
use burrow::announcer::{AnnounceKind, AnnouncementLog};
use burrow::blobstore::BlobStore;
use burrow::producer::Populate;
use burrow::schema::examples::movies_capnp::movie;

/// Adds every record of `model`.
fn add_all(p: &mut Populate<'_>, model: &Model) -> burrow::Result<()> {
    for (id, (title, year, tags)) in model {
        p.add::<movie::Owned>(|mut m| {
            m.set_id(*id);
            m.set_title(title.as_str());
            m.set_year(*year);
            let mut t = m.init_tags(tags.len() as u32);
            for (i, tag) in tags.iter().enumerate() {
                t.set(i as u32, tag.as_str());
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Writes a pin as an operator would: from another process (here another
/// thread with its own runtime), while the caller is blocked.
fn pin_elsewhere(log: &AnnouncementLog, version: u64) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(log.pin(version, "operator")).unwrap();
        })
        .join()
        .unwrap();
    });
}

#[tokio::test]
async fn operator_pin_during_cycle_is_not_not_primary() {
    // Invariant: only another producer's announcement makes a producer
    // "not the primary producer"; an operator's pin written during a cycle
    // does not stop it, and the pin holds consumers until an unpin.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = producer(&store, "p");
    let v1: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    publish(&p, &v1).await.unwrap();
    let mut v2 = v1.clone();
    v2.insert(3, movie_value(3, 2));
    publish(&p, &v2).await.unwrap();
    let reader = consumer(&store, &dir.path().join("cache"));
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(2));

    // A pin to version 1 lands while the producer populates version 3.
    let log = AnnouncementLog::new(store.clone());
    let mut v3 = v2.clone();
    v3.insert(4, movie_value(4, 3));
    let report = p
        .run_cycle(|pop| {
            pin_elsewhere(&log, 1);
            add_all(pop, &v3)
        })
        .await
        .expect("a pin is not another producer");
    assert!(report.published);
    assert_eq!(report.version, 3);

    // The announcement went after the pin and carries it.
    let newest = log.latest().await.unwrap().unwrap();
    assert_eq!(newest.kind, AnnounceKind::Announce);
    assert_eq!(newest.version, 3);
    assert_eq!(newest.seq, 4, "announce 1, announce 2, pin, announce 3");
    assert_eq!(newest.pinned_version, Some(1));
    assert_eq!(log.read(3).await.unwrap().unwrap().kind, AnnounceKind::Pin);

    // Consumers stay pinned at version 1, across further cycles.
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(1));
    assert_eq!(snapshot_of(&reader), v1);
    let mut v4 = v3.clone();
    v4.remove(&5);
    assert_eq!(publish(&p, &v4).await.unwrap().version, 4);
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(1), "the pin holds until an unpin");

    // An unpin written between cycles releases them; the producer goes on.
    log.unpin("operator").await.unwrap();
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(4));
    assert_eq!(snapshot_of(&reader), v4);
    let mut v5 = v4.clone();
    v5.insert(6, movie_value(6, 5));
    assert_eq!(publish(&p, &v5).await.unwrap().version, 5);
    reader.refresh().await.unwrap();
    assert_eq!(snapshot_of(&reader), v5);
}

#[tokio::test]
async fn another_producers_announcement_during_cycle_is_not_primary() {
    // Invariant: an announcement by another producer during a cycle stops
    // the cycle with NotPrimary and publishes nothing that is announced.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let a = producer(&store, "a");
    let v1: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&a, &v1).await.unwrap();
    let mut v2 = v1.clone();
    v2.insert(1, movie_value(1, 2));
    let b_store = store.clone();
    let v2_for_b = v2.clone();
    let err = a
        .run_cycle(|pop| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let b = producer(&b_store, "b");
                        b.restore().await.unwrap();
                        publish(&b, &v2_for_b).await.unwrap();
                    });
                })
                .join()
                .unwrap();
            });
            add_all(pop, &v2)
        })
        .await
        .expect_err("b announced first");
    assert!(
        err.to_string().contains("not the primary producer"),
        "{err}"
    );
    assert_eq!(a.version().await, Some(1));
}
