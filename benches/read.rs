//! Read-side benches on the anchor workload (100k Movies): key lookup and
//! field read, full scan, and delta apply, each beside its baseline in the
//! same group (`HashMap<u64, Movie>` of owned structs).

mod common;

use burrow::blobstore::BlobName;
use burrow::schema::examples::movies_capnp::movie;
use common::{hashmap_of, publish, runtime, Movie, Rng, N};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const LOOKUPS: usize = 1024;

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let p = publish(&rt);
    let map = hashmap_of(&p.consumer);
    let state = p.consumer.state().expect("state");
    let view = state.view::<movie::Owned>().expect("view");
    let mut rng = Rng::new(42);
    let ids: Vec<u64> = (0..LOOKUPS).map(|_| rng.below(N)).collect();

    let mut g = c.benchmark_group("lookup_field_read");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for id in &ids {
                sum += u64::from(map.get(black_box(id)).expect("found").year);
            }
            sum
        })
    });
    g.bench_function("burrow_find", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for id in &ids {
                let (_, r) = view.find(black_box(id)).expect("find").expect("found");
                sum += u64::from(r.get_year());
            }
            sum
        })
    });
    g.finish();

    let mut g = c.benchmark_group("full_scan_sum_year");
    g.throughput(Throughput::Elements(N));
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            map.values()
                .map(|m| u64::from(black_box(m).year))
                .sum::<u64>()
        })
    });
    g.bench_function("burrow_iter", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for (_, r) in view.iter() {
                sum += u64::from(r.get_year());
            }
            sum
        })
    });
    g.finish();
}

fn delta_apply(c: &mut Criterion) {
    let rt = runtime();
    let p = publish(&rt);
    let state = p.consumer.state().expect("state at v1");
    let name = BlobName::Delta(p.v1, p.v2);
    let path = p.consumer.cache().path(&name);
    let blob = Arc::new(
        burrow::blobstore::cache::map_file(&path, &name.to_string(), false).expect("delta maps"),
    );
    let (_, sections) = blob.delta().expect("delta reads");
    let changed = sections[0].ordinals.get().len() as u64;
    let map = hashmap_of(&p.consumer);

    let mut g = c.benchmark_group("delta_apply_1pct");
    g.throughput(Throughput::Elements(changed));
    // Baseline: decode the delta's records into owned structs and insert
    // them into the heap map (what a decode-everything consumer does).
    g.bench_function("hashmap_decode_insert", |b| {
        b.iter_batched_ref(
            || map.clone(),
            |map| {
                let (_, sections) = blob.delta().expect("delta reads");
                let lists = blob
                    .typed_lists::<movie::Owned>(&sections[0].lists)
                    .expect("lists read");
                for list in lists {
                    for r in list.iter() {
                        let m = Movie::decode(r).expect("decode");
                        map.insert(m.id, m);
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("burrow_read_state_apply", |b| {
        b.iter(|| state.apply(blob.clone(), p.v1, p.v2).expect("applies"))
    });
    g.bench_function("burrow_consumer_refresh_cached", |b| {
        b.iter_batched(
            || {
                let c = common::consumer(&p.store, p.consumer.cache().dir());
                rt.block_on(c.refresh_to(p.v1)).expect("to v1");
                c
            },
            |c| rt.block_on(c.refresh_to(p.v2)).expect("to v2"),
            BatchSize::PerIteration,
        )
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
    targets = reads, delta_apply
}
criterion_main!(benches);
