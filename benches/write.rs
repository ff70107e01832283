//! Write-side benches on the anchor workload: a record's canonicalization
//! and hashing as the producer does it, and a whole no-change cycle of 100k
//! records, each beside its baseline in the same group.

mod common;

use burrow::blobstore::BlobStore;
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::record::{
    append_canonical, key_hash, words_as_bytes, KeyBuf, KeySpec, RecordType, TypeInfo,
};
use common::{dataset, producer, runtime, Movie, N};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

const RECORDS: u64 = 1024;

fn record_encode(c: &mut Criterion) {
    let movies: Vec<Movie> = (0..RECORDS).map(|i| Movie::new(i, 2)).collect();
    let info = TypeInfo::of::<movie::Owned>();
    let spec = KeySpec::resolve(&info, &["id"]).expect("key");
    let mut g = c.benchmark_group("record_encode");
    g.throughput(Throughput::Elements(RECORDS));
    // Baseline: only building each record with the generated builder,
    // which every caller of `Populate::add` pays anyway.
    g.bench_function("capnp_build", |b| {
        let mut scratch = capnp::Word::allocate_zeroed_vec(1024);
        b.iter(|| {
            let mut total = 0usize;
            for m in &movies {
                let mut message =
                    capnp::message::Builder::new(capnp::message::ScratchSpaceHeapAllocator::new(
                        capnp::Word::words_to_bytes_mut(&mut scratch),
                    ));
                m.fill(message.init_root());
                total += message.get_segments_for_output()[0].len();
            }
            total
        })
    });
    // The producer's path per record (`Populate::add`): build,
    // canonicalize, read the key through the schema, hash it.
    g.bench_function("build_canonicalize_key_hash", |b| {
        let mut scratch = capnp::Word::allocate_zeroed_vec(1024);
        let mut canon = Vec::new();
        let mut words: Vec<u64> = Vec::with_capacity(16 * RECORDS as usize);
        let mut key = KeyBuf::new();
        b.iter(|| {
            words.clear();
            let mut hashes = 0u64;
            for m in &movies {
                let mut message =
                    capnp::message::Builder::new(capnp::message::ScratchSpaceHeapAllocator::new(
                        capnp::Word::words_to_bytes_mut(&mut scratch),
                    ));
                m.fill(message.init_root());
                let root = message
                    .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
                    .expect("root");
                let start = words.len();
                append_canonical(root, None, &mut canon, &mut words).expect("canonical");
                key.clear();
                let record: movie::Reader<'_> = root.get_as().expect("movie");
                spec.resolved()
                    .and_then(|r| r.encode_record(movie::Owned::dynamic(record), &mut key))
                    .expect("key");
                hashes ^= key_hash(key.as_bytes());
                hashes ^= key_hash(words_as_bytes(&words[start..]));
            }
            black_box(hashes)
        })
    });
    g.finish();
}

fn no_change_cycle(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = BlobStore::local(dir.path().join("store")).expect("store");
    let producer = producer(&store, u32::MAX);
    let g1 = dataset(1);
    rt.block_on(producer.run_cycle(|p| g1.populate(p)))
        .expect("cycle 1");
    let mut g = c.benchmark_group("producer_cycle_100k");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    // Baseline: the same records built as owned structs into a HashMap.
    g.bench_function("hashmap_build", |b| {
        b.iter(|| {
            let mut map = HashMap::with_capacity(N as usize);
            for (&i, &gen) in g1.records() {
                let m = Movie::new(i, gen);
                map.insert(m.id, m);
            }
            map
        })
    });
    // The real path: populate and identify 100k records, nothing changed,
    // so nothing is written.
    g.bench_function("burrow_no_change_cycle", |b| {
        b.iter(|| {
            let report = rt
                .block_on(producer.run_cycle(|p| g1.populate(p)))
                .expect("cycle");
            assert!(!report.published);
            report
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = record_encode, no_change_cycle
}
criterion_main!(benches);
