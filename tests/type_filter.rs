//! Type filtering (`ConsumerBuilder::types`): a consumer that reads only
//! some types holds read state for those alone, through snapshots and
//! deltas, and a view of another type is a clear error.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::examples::probe_capnp::probe;
use burrow::schema::record::TypeInfo;

/// Invariant: a filtered consumer's states hold only the types it asked
/// for, with the same records as an unfiltered consumer's.
#[tokio::test]
async fn a_filtered_consumer_holds_only_its_types() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("filter")
        .retention(None)
        .primary_key::<movie::Owned>(&["id"])
        .record_type::<probe::Owned>()
        .build()
        .unwrap();
    let only_movies = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("movies"))
        .types(&[TypeInfo::of::<movie::Owned>()])
        .build()
        .unwrap();
    let everything = consumer(&store, &dir.path().join("all"));
    let mut model = Model::new();
    for cycle in 0..4u64 {
        for i in 0..10 {
            model.insert(i * (cycle + 1), movie_value(i, cycle));
        }
        producer
            .run_cycle(|p| {
                add_model(p, &model)?;
                for n in 0..=cycle as u32 {
                    p.add::<probe::Owned>(|mut r| {
                        r.set_count(n);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
        only_movies.refresh().await.unwrap();
        everything.refresh().await.unwrap();
        let state = only_movies.current().unwrap();
        assert_eq!(state.types().len(), 1, "only Movie is held");
        assert_eq!(state_model(&state), model);
        let all = everything.current().unwrap();
        assert_eq!(all.types().len(), 2);
        assert_eq!(all.view::<probe::Owned>().unwrap().len(), cycle as u32 + 1);
        let err = state.view::<probe::Owned>().err().unwrap().to_string();
        assert!(
            err.contains("is filtered out") && err.contains("Probe"),
            "{err}"
        );
    }
    assert!(only_movies.current().unwrap().delta_depth() > 0);
}
