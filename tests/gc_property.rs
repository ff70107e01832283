//! Invariant: under any interleaving of cycles, pins, unpins, producers
//! killed mid-cycle and restarted, and gc runs (the producer's background
//! step and explicit runs), no consumer at a retained version meets a
//! missing blob on a path the log offers (a fresh consumer opened at each
//! retained version plans no path with a blob gone, and holds that
//! version's records), a follower always reaches the log's target, every
//! blob the policy needs is in the store, after a gc run the store holds
//! nothing else, and `verify` finds no problem (it accepts the retired
//! versions). Run on a local directory and on the S3 test server.

use crate::common::*;
use burrow::announcer::AnnouncementLog;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::gc::{collect_garbage, needed_blobs, RetentionPolicy};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::faults::FaultyStore;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
enum Op {
    /// A cycle that changes `changes` records and adds one.
    Cycle {
        changes: u8,
    },
    /// A cycle whose store fails after `after` calls (a producer killed
    /// mid-cycle), then a new producer restored from the log.
    Kill {
        after: u8,
    },
    /// Pin the retained version `back` from the newest.
    Pin {
        back: u8,
    },
    Unpin,
    /// An explicit gc run (an operator's `burrow gc`).
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..4).prop_map(|changes| Op::Cycle { changes }),
        2 => (0u8..12).prop_map(|after| Op::Kill { after }),
        1 => any::<u8>().prop_map(|back| Op::Pin { back }),
        1 => Just(Op::Unpin),
        2 => Just(Op::Gc),
    ]
}

struct World {
    dir: tempfile::TempDir,
    /// The store as consumers and gc see it.
    store: BlobStore,
    /// The producer's view of the same objects, through a store that can
    /// be made to fail.
    faulty: Arc<FaultyStore>,
    producer_store: BlobStore,
    producer: Producer,
    policy: RetentionPolicy,
    snapshot_every: u32,
    model: Model,
    /// Every announced version's records.
    versions: BTreeMap<u64, Model>,
    pinned: Option<u64>,
    follower: burrow::consumer::Consumer,
    opened: usize,
}

fn build(store: &BlobStore, snapshot_every: u32, policy: RetentionPolicy) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("gc-prop")
        .snapshot_every(snapshot_every)
        .retention(Some(policy))
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

async fn listed(store: &BlobStore) -> BTreeSet<BlobName> {
    let mut out = BTreeSet::new();
    for dir in ["snapshot", "delta", "reverse"] {
        out.extend(store.list(dir).await.unwrap().into_iter().map(|m| m.name));
    }
    out
}

impl World {
    async fn new(store: BlobStore, keep: usize, snapshot_every: u32) -> World {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStore::new(store.object_store().clone()));
        let producer_store = BlobStore::new(faulty.clone(), store.prefix().as_ref());
        let policy = RetentionPolicy {
            keep,
            grace: Duration::ZERO,
            snapshot_spacing: None,
        };
        let producer = build(&producer_store, snapshot_every, policy);
        let follower = consumer(&store, &dir.path().join("follower"));
        World {
            dir,
            store,
            faulty,
            producer_store,
            producer,
            policy,
            snapshot_every,
            model: (0..12).map(|i| (i, movie_value(i, 0))).collect(),
            versions: BTreeMap::new(),
            pinned: None,
            follower,
            opened: 0,
        }
    }

    /// The versions the newest entry retains: the newest `keep` announced
    /// and the pin.
    fn retained(&self) -> BTreeSet<u64> {
        let mut out: BTreeSet<u64> = self
            .versions
            .keys()
            .rev()
            .take(self.policy.keep)
            .copied()
            .collect();
        out.extend(self.pinned);
        out
    }

    fn change(&mut self, changes: u8) {
        let n = self.versions.len() as u64 + 1;
        for c in 0..changes as u64 {
            let id = (n * 5 + c * 3) % 12;
            self.model.insert(id, movie_value(id, n));
        }
        self.model.insert(100 + n, movie_value(100 + n, 0));
    }

    /// Runs a cycle; returns whether it announced, and whether the
    /// producer's retention run after it succeeded.
    async fn cycle(&mut self) -> (bool, bool) {
        match publish(&self.producer, &self.model).await {
            Ok(report) => {
                assert!(report.published);
                self.versions.insert(report.version, self.model.clone());
                let gc = self.producer.wait_for_gc().await.expect("a retention run");
                assert_eq!(gc.after_version, report.version);
                (true, gc.result.is_ok())
            }
            Err(_) => (false, false),
        }
    }

    async fn apply(&mut self, op: &Op) -> bool {
        let log = AnnouncementLog::new(self.store.clone());
        match *op {
            Op::Cycle { changes } => {
                self.change(changes);
                let (announced, gc_ok) = self.cycle().await;
                assert!(announced, "a cycle on a healthy store announces");
                gc_ok
            }
            Op::Kill { after } => {
                let before = self.model.clone();
                self.change(1);
                self.faulty.fail_after(after as u64);
                let (announced, _) = self.cycle().await;
                self.faulty.heal();
                if !announced {
                    self.model = before;
                }
                self.producer = build(&self.producer_store, self.snapshot_every, self.policy);
                let restored = self.producer.restore().await.unwrap();
                assert_eq!(restored, self.versions.keys().next_back().copied());
                false
            }
            Op::Pin { back } => {
                let Some(&newest) = self.versions.keys().next_back() else {
                    return false;
                };
                let candidates: Vec<u64> = self
                    .versions
                    .keys()
                    .rev()
                    .take(self.policy.keep)
                    .copied()
                    .collect();
                let target = candidates[back as usize % candidates.len()];
                log.pin(target, "operator").await.unwrap();
                self.pinned = Some(target);
                let _ = newest;
                false
            }
            Op::Unpin => {
                if self.pinned.take().is_some() {
                    log.unpin("operator").await.unwrap();
                }
                false
            }
            Op::Gc => {
                collect_garbage(&self.store, &self.policy, SystemTime::now(), false)
                    .await
                    .unwrap();
                true
            }
        }
    }

    async fn check(&mut self, gc_ran: bool, retained_before: &BTreeSet<u64>) {
        if self.versions.is_empty() {
            return;
        }
        let needed = needed_blobs(&self.store, &self.policy, SystemTime::now())
            .await
            .unwrap();
        let stored = listed(&self.store).await;
        let missing: Vec<_> = needed.difference(&stored).collect();
        assert!(missing.is_empty(), "needed blobs are gone: {missing:?}");
        if gc_ran {
            let extra: Vec<_> = stored.difference(&needed).collect();
            assert!(extra.is_empty(), "gc left blobs nothing needs: {extra:?}");
        }
        // A fresh consumer at every retained version: no blob gone on its
        // path, and the version's records.
        for v in self.retained() {
            self.opened += 1;
            let fresh = consumer(
                &self.store,
                &self.dir.path().join(format!("fresh-{}", self.opened)),
            );
            let report = fresh
                .refresh_to(v)
                .await
                .unwrap_or_else(|e| panic!("open at retained version {v}: {e}"))
                .expect("a fresh consumer moves");
            assert_eq!(report.replans, 0, "version {v}: {report:?}");
            assert_eq!(snapshot_of(&fresh), self.versions[&v], "version {v}");
        }
        // The follower reaches the target; from a retained version without
        // meeting a gone blob.
        let from = self.follower.version();
        let target = self
            .pinned
            .unwrap_or(*self.versions.keys().next_back().unwrap());
        let report = self
            .follower
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("follower from {from:?} to {target}: {e}"));
        assert_eq!(self.follower.version(), Some(target));
        assert_eq!(snapshot_of(&self.follower), self.versions[&target]);
        if let (Some(report), Some(from)) = (report, from) {
            if retained_before.contains(&from) && self.retained().contains(&from) {
                assert_eq!(report.replans, 0, "follower from {from}: {report:?}");
            }
        }
    }
}

async fn run(store: BlobStore, ops: Vec<Op>, keep: usize, snapshot_every: u32) {
    let mut world = World::new(store, keep, snapshot_every).await;
    // Something to retain from the start.
    world.apply(&Op::Cycle { changes: 1 }).await;
    for op in &ops {
        let retained_before = world.retained();
        let gc_ran = world.apply(op).await;
        world.check(gc_ran, &retained_before).await;
    }
    let report = burrow::verify::verify_store(&world.store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // Announcement entries are never deleted.
    let entries = world.store.list("announce").await.unwrap();
    let seqs: Vec<u64> = entries
        .iter()
        .filter_map(|m| match m.name {
            BlobName::Announce(seq) => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn retention_never_breaks_a_retained_version(
        ops in prop::collection::vec(op(), 1..14),
        keep in 1usize..4,
        snapshot_every in 1u32..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("store")).unwrap();
        runtime().block_on(run(store, ops, keep, snapshot_every));
    }
}

// The conformance suite's moto server (started on first use, or named by
// BURROW_TEST_S3_ENDPOINT): one server serves both.
#[cfg(feature = "s3")]
use crate::conformance::moto;

#[cfg(feature = "s3")]
mod s3 {
    use super::*;

    /// A bucket on the plain moto server (started on first use) and a store
    /// under a prefix of its own.
    fn s3_store() -> BlobStore {
        use burrow::blobstore::StoreOptions;
        let endpoint = super::moto::plain_endpoint();
        let bucket = "burrow-gc-property";
        let options = StoreOptions {
            endpoint: Some(endpoint.clone()),
            path_style: Some(true),
            allow_http: Some(true),
            region: Some("us-east-1".into()),
            s3_settings: vec![
                ("aws_access_key_id".into(), "test".into()),
                ("aws_secret_access_key".into(), "test".into()),
            ],
            ..StoreOptions::default()
        };
        create_bucket(&endpoint, bucket);
        let prefix = format!("gc-{:016x}", rand_u64());
        BlobStore::from_url(&format!("s3://{bucket}/{prefix}"), &options).unwrap()
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        h.finish()
    }

    /// `PUT /bucket` on the unauthenticated server; one that exists is fine.
    fn create_bucket(endpoint: &str, bucket: &str) {
        use std::io::{Read, Write};
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let mut conn = std::net::TcpStream::connect(host)
            .unwrap_or_else(|e| panic!("connect to the S3 server at {endpoint}: {e}"));
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(
            response.split(' ').nth(1) == Some("200")
                || response.contains("BucketAlreadyOwnedByYou"),
            "create bucket {bucket}: {response}"
        );
    }

    /// gc pages through LISTs of more than one page (S3 lists 1,000 keys a
    /// page): 1,500 unannounced blobs beside a real dataset all go, the
    /// dataset's newest version stays whole.
    #[test]
    fn gc_pages_through_thousands_of_blobs() {
        use futures::StreamExt;
        runtime().block_on(async {
            let store = s3_store();
            let producer = build(
                &store,
                1,
                RetentionPolicy {
                    keep: 1,
                    grace: Duration::from_secs(3600),
                    snapshot_spacing: None,
                },
            );
            let mut model: Model = (0..12).map(|i| (i, movie_value(i, 0))).collect();
            publish(&producer, &model).await.unwrap();
            model.insert(1, movie_value(1, 1));
            let newest = publish(&producer, &model).await.unwrap().version;
            producer.wait_for_gc().await;
            let orphans: Vec<BlobName> = (0..1500u64)
                .map(|i| BlobName::Delta(1000 + i, 1001 + i))
                .collect();
            futures::stream::iter(orphans.iter())
                .map(|name| {
                    let store = store.clone();
                    async move {
                        store
                            .create(name, vec![bytes::Bytes::from_static(b"orphan")])
                            .await
                            .unwrap()
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
            let policy = RetentionPolicy {
                keep: 1,
                grace: Duration::ZERO,
                snapshot_spacing: None,
            };
            let later = SystemTime::now() + Duration::from_secs(1);
            let dry = collect_garbage(&store, &policy, later, true).await.unwrap();
            assert_eq!(
                dry.deleted.len(),
                1500 + 3,
                "orphans, and version 1's blobs"
            );
            let report = collect_garbage(&store, &policy, later, false)
                .await
                .unwrap();
            assert_eq!(report.deleted.len(), 1503);
            assert_eq!(
                listed(&store).await,
                [BlobName::Snapshot(newest)].into_iter().collect()
            );
            let fresh_dir = tempfile::tempdir().unwrap();
            let fresh = consumer(&store, fresh_dir.path());
            fresh.refresh().await.unwrap();
            assert_eq!(snapshot_of(&fresh), model);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn retention_never_breaks_a_retained_version_on_s3(
            ops in prop::collection::vec(op(), 1..8),
            keep in 1usize..3,
            snapshot_every in 1u32..3,
        ) {
            runtime().block_on(run(s3_store(), ops, keep, snapshot_every));
        }
    }
}
