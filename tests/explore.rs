//! The dynamic reader (`burrow::schema::dynamic`) through the explorer
//! (`burrow::explore`): every record read through the schema nodes the
//! blobs carry must equal what the generated code reads, rendered by an
//! independent oracle (Cap'n Proto's own reflection over the generated
//! readers, with the documented JSON mapping), on the anchor workload and
//! on a schema that uses every kind of field; keys given as text find the
//! records the generated code finds; diff and history follow the model.

use burrow::blobstore::BlobStore;
use burrow::explore::{diff, history, Change, DiffMethod, ExploreError, Explorer};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::every_capnp::every;
use burrow::schema::examples::library_capnp::{shelf, Genre};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::Dataset;
use capnp::dynamic_value;
use serde_json::{json, Value};

// ---- The oracle: Cap'n Proto's reflection, the documented mapping. ----

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        let chars = [n >> 18, n >> 12, n >> 6, n].map(|x| A[(x & 63) as usize] as char);
        out.extend(&chars[..c.len() + 1]);
        out.extend(std::iter::repeat_n('=', 3 - c.len()));
    }
    out
}

fn num_i(v: i64) -> Value {
    if v.unsigned_abs() <= 1 << 53 {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn num_u(v: u64) -> Value {
    if v <= 1 << 53 {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn num_f(v: f64) -> Value {
    match v {
        v if v.is_nan() => json!("NaN"),
        v if v == f64::INFINITY => json!("Infinity"),
        v if v == f64::NEG_INFINITY => json!("-Infinity"),
        v => json!(v),
    }
}

fn oracle(v: dynamic_value::Reader<'_>) -> Value {
    use dynamic_value::Reader as R;
    match v {
        R::Void => Value::Null,
        R::Bool(b) => json!(b),
        R::Int8(x) => num_i(x.into()),
        R::Int16(x) => num_i(x.into()),
        R::Int32(x) => num_i(x.into()),
        R::Int64(x) => num_i(x),
        R::UInt8(x) => num_u(x.into()),
        R::UInt16(x) => num_u(x.into()),
        R::UInt32(x) => num_u(x.into()),
        R::UInt64(x) => num_u(x),
        R::Float32(x) if x.is_finite() => num_f(x.to_string().parse().unwrap()),
        R::Float32(x) => num_f(x.into()),
        R::Float64(x) => num_f(x),
        R::Enum(e) => match e.get_enumerant().unwrap() {
            Some(en) => json!(en.get_proto().get_name().unwrap().to_str().unwrap()),
            None => json!(e.get_value()),
        },
        R::Text(t) => json!(String::from_utf8_lossy(t.as_bytes())),
        R::Data(d) => json!(b64(d)),
        R::List(l) => Value::Array(l.iter().map(|x| oracle(x.unwrap())).collect()),
        R::Struct(s) => {
            let active = s.which().unwrap();
            let mut m = serde_json::Map::new();
            for f in s.get_schema().get_fields().unwrap() {
                let in_union = f.get_proto().get_discriminant_value()
                    != capnp::schema_capnp::field::NO_DISCRIMINANT;
                if in_union && active.map(|a| a.get_index()) != Some(f.get_index()) {
                    continue;
                }
                let name = f.get_proto().get_name().unwrap().to_str().unwrap();
                m.insert(name.to_string(), field_oracle(s, f));
            }
            Value::Object(m)
        }
        R::AnyPointer(p) if p.is_null() => Value::Null,
        // The tests only ever put a text (a list) there.
        R::AnyPointer(p) => match p.get_as::<capnp::text::Reader<'_>>() {
            Ok(_) => json!({"$anyPointer": "list"}),
            Err(_) => json!({"$anyPointer": "struct"}),
        },
        R::Capability(_) => Value::Null,
    }
}

/// A field by reflection, but a null struct pointer without a default
/// as `null` (the mapping's rule; reflection gives the struct of defaults).
fn field_oracle(s: capnp::dynamic_struct::Reader<'_>, f: capnp::schema::Field) -> Value {
    use capnp::introspect::TypeVariant;
    use capnp::schema_capnp::{field, value};
    if matches!(f.get_type().which(), TypeVariant::Struct(_)) && !s.has(f).unwrap() {
        if let Ok(field::Slot(slot)) = f.get_proto().which() {
            if let Ok(value::Struct(p)) = slot.get_default_value().unwrap().which() {
                if p.is_null() {
                    return Value::Null;
                }
            }
        }
    }
    oracle(s.get(f).unwrap())
}

// ---- Records of every kind. ----

pub(crate) fn fill_every(mut e: every::Builder<'_>, i: u64) -> capnp::Result<()> {
    e.set_id(i);
    if i.is_multiple_of(5) {
        return Ok(()); // every field at its default
    }
    e.set_flag(i.is_multiple_of(2));
    e.set_flag_on(i.is_multiple_of(3));
    e.set_i8(-(i as i8));
    e.set_i16(-7 * i as i16);
    e.set_i32(1000 * i as i32);
    e.set_i64(-(1 << 60) + i as i64);
    e.set_u8(i as u8);
    e.set_u16(40_000 + i as u16);
    e.set_u32(4_000_000_000 + i as u32);
    e.set_u64(u64::MAX - i);
    e.set_f32(i as f32 / 3.0);
    e.set_f64(match i % 4 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -0.5e300,
        _ => i as f64 * 0.1,
    });
    e.set_name(format!("name {i} ✓").as_str());
    if i.is_multiple_of(2) {
        e.set_named(""); // set, not null: no default
    }
    e.set_bytes(&[i as u8, 0, 255, 7][..(i % 4) as usize]);
    e.set_kind(every::Kind::Gamma);
    {
        let mut inner = e.reborrow().init_inner();
        inner.set_label("in");
        let mut p = inner.reborrow().init_points(2);
        p.set(0, i64::MIN);
        p.set(1, 1 << 53);
        inner.init_deeper().set_label("deep");
    }
    let mut bools = e.reborrow().init_bools(70);
    for k in 0..70 {
        bools.set(k, (k + i as u32).is_multiple_of(3));
    }
    let mut l = e.reborrow().init_i16s(3);
    l.set(0, -1);
    l.set(1, i16::MIN);
    l.set(2, 9);
    let mut l = e.reborrow().init_u64s(2);
    l.set(0, u64::MAX);
    l.set(1, 5);
    let mut l = e.reborrow().init_f32s(3);
    l.set(0, 0.1);
    l.set(1, f32::NAN);
    l.set(2, f32::NEG_INFINITY);
    let mut l = e.reborrow().init_f64s(2);
    l.set(0, 1e-300);
    l.set(1, -0.0);
    let mut l = e.reborrow().init_texts(2);
    l.set(0, "a, b");
    l.set(1, "");
    let mut l = e.reborrow().init_datas(2);
    l.set(0, &[1, 2, 3][..]);
    l.set(1, &[][..]);
    let mut l = e.reborrow().init_kinds(2);
    l.set(0, every::Kind::Beta);
    l.set(1, every::Kind::Alpha);
    {
        let mut l = e.reborrow().init_inners(2);
        l.reborrow().get(0).set_label("first");
        let mut second = l.get(1);
        second.set_kind(every::Kind::Gamma);
        second.init_deeper().init_deeper().set_label("two down");
    }
    {
        let mut m = e.reborrow().init_matrix(2);
        let mut row = m.reborrow().init(0, 2);
        row.set(0, -1);
        row.set(1, i32::MAX);
        m.init(1, 0);
    }
    e.reborrow().init_voids(3);
    if i % 3 == 1 {
        e.reborrow()
            .init_any()
            .set_as::<capnp::text::Owned>("anything")?;
    }
    match i % 4 {
        0 => e.set_nothing(()),
        1 => e.set_number(-(i as i32)),
        2 => e.set_word("hello"),
        _ => e.reborrow().init_nested().set_label("nested"),
    }
    if i.is_multiple_of(2) {
        e.reborrow().get_choice().set_left(i as u16);
    } else {
        let mut r = e.reborrow().get_choice().init_right(1);
        r.set(0, "r");
    }
    if !i.is_multiple_of(3) {
        let mut place = e.reborrow().get_place();
        place.set_x(-(i as i32));
        place.set_tag("there");
    }
    let mut l = e.reborrow().init_i8s(2);
    l.set(0, i8::MIN);
    l.set(1, 1);
    let mut l = e.init_u32s(1);
    l.set(0, u32::MAX);
    Ok(())
}

pub(crate) fn fill_shelf(mut s: shelf::Builder<'_>, i: u64) {
    s.set_id(i);
    if i.is_multiple_of(4) {
        return;
    }
    s.set_label(format!("shelf {i}").as_str());
    s.set_genre(Genre::Scifi);
    {
        let mut books = s.reborrow().init_books(2);
        let mut b = books.reborrow().get(0);
        b.set_title("Dune");
        b.set_pages(412);
        b.reborrow().get_format().set_ebook("epub");
        books.get(1).init_genres(1).set(0, Genre::Poetry);
    }
    s.reborrow().get_location().set_room("east");
    if i.is_multiple_of(2) {
        s.reborrow().get_owner().set_person("ann");
    } else {
        s.reborrow().get_owner().set_library(i as u32);
    }
    s.set_closed_since(i as i64 * 1000);
    s.reborrow().get_old().set_modern("yes");
    s.set_tilt(5);
}

fn store_and_cache() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    (dir, store)
}

/// Invariant: the dynamic reader reads every field kind as the generated
/// code does (the every-kind schema and the library schema, defaults,
/// unions, groups, NaNs and integers past 2^53 included), for records
/// from a snapshot and from a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_field_reads_as_the_generated_code_reads_it() {
    let (dir, store) = store_and_cache();
    let producer = ProducerBuilder::new(store.clone())
        .primary_key::<every::Owned>(&["id"])
        .primary_key::<shelf::Owned>(&["id"])
        // Version 2 only as a delta, its records in lists of 8.
        .snapshot_every(100)
        .max_list_shift(3)
        .build()
        .unwrap();
    for cycle in 0..2u64 {
        producer
            .run_cycle(|p| {
                for i in 0..40 {
                    p.add::<every::Owned>(|e| fill_every(e, i + cycle * 20))?;
                }
                for i in 0..12 {
                    p.add::<shelf::Owned>(|s| {
                        fill_shelf(s, i + cycle);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    let consumer = burrow::consumer::ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("consumer"))
        .build()
        .unwrap();
    consumer.refresh().await.unwrap();
    let state = consumer.state().unwrap();
    let explorer = Explorer::open(store, dir.path().join("explore"))
        .await
        .unwrap();
    let view = explorer.version(None).await.unwrap();
    assert_eq!(view.version(), 2);
    // Version 2 was reached by a delta: records from both blobs.
    assert!(view.state().delta_depth() >= 1);

    let t = view.type_named(Some("Every")).unwrap();
    let typed = state.view::<every::Owned>().unwrap();
    let mut n = 0;
    for (o, record) in typed.iter() {
        let expected = oracle(record.into());
        let got = view
            .record(t, o)
            .unwrap()
            .expect("the ordinal holds a record");
        assert_eq!(got, expected, "Every ordinal {o}");
        // The key, as text, finds the same record.
        let key = view.key_text(t, &got).unwrap();
        let bytes = view.key_bytes(t, &key).unwrap();
        assert_eq!(view.find_key(t, &bytes).unwrap(), Some(o), "key {key}");
        n += 1;
    }
    assert_eq!(n, 40);
    let record = view
        .record(t, typed.find(&23u64).unwrap().unwrap().0)
        .unwrap()
        .unwrap();
    assert_eq!(record["u64"], "18446744073709551592", "past 2^53: a string");
    assert_eq!(record["i16"], -161);
    assert_eq!(record["f64"], 2.3000000000000003);
    assert_eq!(record["f32s"], json!([0.1, "NaN", "-Infinity"]));
    assert_eq!(record["kind"], "gamma");
    assert_eq!(record["nested"]["label"], "nested", "the active member");
    assert!(
        record.get("word").is_none(),
        "inactive members are left out"
    );
    assert_eq!(record["choice"], json!({"right": ["r"]}));
    assert_eq!(record["bytes"], b64(&[23, 0, 255]));
    let default = view
        .record(t, typed.find(&25u64).unwrap().unwrap().0)
        .unwrap()
        .unwrap();
    assert_eq!(default["i16"], -300, "scalar defaults");
    assert_eq!(default["i64"], "-9007199254740993");
    assert_eq!(default["u64"], "18446744073709551615");
    assert_eq!(default["named"], "anon", "a null text reads as its default");
    assert_eq!(
        default["innerDefault"],
        json!({"label": "preset", "points": [1, 2, 3], "deeper": null, "kind": "alpha"})
    );
    assert_eq!(
        default["inner"],
        Value::Null,
        "a null struct without a default"
    );
    assert_eq!(default["place"], json!({"x": 7, "y": -1.5, "tag": ""}));

    // Paths: fields, groups, list elements, defaults.
    let o = typed.find(&23u64).unwrap().unwrap().0;
    let path = |p: &str| view.record_path(t, o, p).unwrap().unwrap();
    assert_eq!(path("inners.1.deeper.deeper.label"), "two down");
    assert_eq!(path("place.tag"), "there");
    assert_eq!(path("matrix.0.1"), i32::MAX);
    assert_eq!(path("innerDefault.points.2"), 3);
    assert_eq!(path(""), record);
    let err = view.record_path(t, o, "word").unwrap_err().to_string();
    assert!(err.contains("word is not set (nested is)"), "{err}");
    let err = view.record_path(t, o, "matrix.7").unwrap_err().to_string();
    assert!(err.contains("index 7 is past"), "{err}");
    let err = view.record_path(t, o, "nope").unwrap_err().to_string();
    assert!(err.contains("has no field \"nope\""), "{err}");

    let t = view.type_named(Some("Shelf")).unwrap();
    let typed = state.view::<shelf::Owned>().unwrap();
    for (o, record) in typed.iter() {
        let got = view.record(t, o).unwrap().unwrap();
        assert_eq!(got, oracle(record.into()), "Shelf ordinal {o}");
    }
    assert_eq!(typed.len(), 12);

    // Keys given as text: named errors.
    let t = view.type_named(Some("Every")).unwrap();
    for (key, names) in [
        ("abc", "is not a whole number"),
        ("id=1,x=2", "x is not a key field"),
        ("18446744073709551616", "is not a whole number"),
    ] {
        let err = view.key_bytes(t, key).unwrap_err().to_string();
        assert!(err.contains(names), "{key}: {err}");
    }
    let err = view.type_named(None).err().unwrap();
    assert!(
        matches!(err, ExploreError::TypeRequired { count: 2, .. }),
        "{err}"
    );
}

/// Invariant: on the anchor workload, every record of every version reads
/// dynamically as the generated code and the workload's model say, and
/// diff and history agree with the edits the workload made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_reads_diffs_and_histories_as_its_model_says() {
    let (dir, store) = store_and_cache();
    let producer = crate::common::producer(&store, "explore-test");
    let mut data = Dataset::new(2_000, 7);
    let mut edits = Vec::new();
    let mut models = Vec::new();
    for cycle in 1..=4u64 {
        if cycle > 1 {
            edits.push(data.advance(cycle, 0.02, 0.005));
        }
        producer.run_cycle(|p| data.populate(p)).await.unwrap();
        models.push(data.clone());
    }
    let explorer = Explorer::open(store.clone(), dir.path().join("explore"))
        .await
        .unwrap();
    // Every record of every version: the model's, and the generated
    // code's (a consumer moved to each version in turn).
    let consumer = crate::common::consumer(&store, &dir.path().join("consumer"));
    for (version, model) in models.iter().enumerate() {
        let version = version as u64 + 1;
        let view = explorer.version(Some(version)).await.unwrap();
        let t = view.type_named(None).unwrap();
        assert_eq!(t.record_count() as usize, model.len());
        consumer.refresh_to(version).await.unwrap();
        let state = consumer.state().unwrap();
        assert_eq!(state.version(), version);
        let typed = state.view::<movie::Owned>().unwrap();
        let mut n = 0;
        for (o, m) in typed.iter() {
            let got = view.record(t, o).unwrap().unwrap();
            assert_eq!(got, oracle(m.into()), "version {version} ordinal {o}");
            let want = model.movie(m.get_id()).unwrap();
            assert_eq!(
                got,
                json!({"id": m.get_id(), "title": want.title, "year": want.year, "tags": want.tags})
            );
            n += 1;
        }
        assert_eq!(n, model.len(), "version {version}");
    }

    // Diff 3 -> 4 by its delta: exactly the last cycle's edits.
    let last = edits.last().unwrap();
    let d = diff(&explorer, 3, 4, None).await.unwrap();
    assert_eq!(d.method, DiffMethod::Deltas { deltas: 1 });
    let keys = |l: &[burrow::explore::RecordChange]| {
        let mut k: Vec<u64> = l
            .iter()
            .map(|c| c.key.as_ref().unwrap().parse().unwrap())
            .collect();
        k.sort_unstable();
        k
    };
    let sorted = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    let td = &d.types[0];
    assert_eq!(keys(&td.added), sorted(&last.added));
    assert_eq!(keys(&td.removed), sorted(&last.removed));
    assert_eq!(keys(&td.changed), sorted(&last.changed));
    for c in &td.changed {
        assert_eq!(c.fields.len(), 1, "only the title changes: {:?}", c.fields);
        assert_eq!(c.fields[0].path, "$.title");
    }
    // Backwards, the same changes mirrored.
    let back = diff(&explorer, 4, 3, None).await.unwrap();
    assert_eq!(keys(&back.types[0].added), sorted(&last.removed));
    assert_eq!(keys(&back.types[0].removed), sorted(&last.added));
    // Across three deltas, and against a full comparison of the same two
    // versions built independently.
    let across = diff(&explorer, 1, 4, Some("Movie")).await.unwrap();
    assert_eq!(across.method, DiffMethod::Deltas { deltas: 3 });
    assert!(!across.types[0].changed.is_empty());

    // History of a key changed in cycle 4: the oldest, then the change.
    let id = last.changed[0];
    let h = history(&explorer, Some("Movie"), &id.to_string())
        .await
        .unwrap();
    let changes: Vec<(u64, Change)> = h.entries.iter().map(|e| (e.version, e.change)).collect();
    assert_eq!(changes.first(), Some(&(1, Change::Oldest)));
    assert_eq!(changes.last(), Some(&(4, Change::Changed)));
    assert_eq!(
        h.entries.last().unwrap().record.as_ref().unwrap()["title"],
        data.movie(id).unwrap().title
    );
    // A key removed in cycle 4, and one added in it.
    let removed = last.removed[0];
    let h = history(&explorer, None, &removed.to_string())
        .await
        .unwrap();
    assert_eq!(h.entries.last().unwrap().change, Change::Removed);
    assert_eq!(h.entries.last().unwrap().version, 4);
    let added = last.added[0];
    let h = history(&explorer, None, &format!("id={added}"))
        .await
        .unwrap();
    assert_eq!(
        h.entries
            .iter()
            .map(|e| (e.version, e.change))
            .collect::<Vec<_>>(),
        vec![(4, Change::Added)]
    );
    let err = history(&explorer, None, "99999999").await.unwrap_err();
    assert!(
        err.to_string().contains("no retained version holds"),
        "{err}"
    );
}

/// A long-lived explorer (a web UI) sees versions announced after it
/// opened once it refreshes, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explorer_sees_new_versions_after_refresh() {
    let (dir, store) = store_and_cache();
    let producer = crate::common::producer(&store, "explore-refresh");
    let mut data = Dataset::new(50, 1);
    producer.run_cycle(|p| data.populate(p)).await.unwrap();
    let mut explorer = Explorer::open(store.clone(), dir.path().join("explore"))
        .await
        .unwrap();
    data.advance(2, 0.1, 0.0);
    producer.run_cycle(|p| data.populate(p)).await.unwrap();
    assert_eq!(explorer.newest_version(), 1);
    let err = explorer.version(Some(2)).await.err().unwrap();
    assert!(
        err.to_string().contains("version 2 was never announced"),
        "{err}"
    );
    assert_eq!(explorer.refresh().await.unwrap(), 2);
    explorer.forget_blobs();
    let view = explorer.version(None).await.unwrap();
    assert_eq!(view.version(), 2);
    let types = view.types();
    assert_eq!(types[0].to_json()["records"], 50);
}

/// A type without a primary key is matched by its records' contents: a
/// changed record is one removed and one added; it cannot be looked up
/// by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_without_a_key_diffs_by_contents() {
    let (dir, store) = store_and_cache();
    let producer = ProducerBuilder::new(store.clone())
        .record_type::<movie::Owned>()
        .build()
        .unwrap();
    for title in ["before", "after"] {
        producer
            .run_cycle(|p| {
                for (id, t) in [(1u64, "same"), (2, title)] {
                    p.add::<movie::Owned>(|mut m| {
                        m.set_id(id);
                        m.set_title(t);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    let explorer = Explorer::open(store, dir.path().join("explore"))
        .await
        .unwrap();
    let d = diff(&explorer, 1, 2, None).await.unwrap();
    let t = &d.types[0];
    assert!(t.key_fields.is_empty());
    assert_eq!((t.added.len(), t.removed.len(), t.changed.len()), (1, 1, 0));
    assert_eq!(t.added[0].after.as_ref().unwrap()["title"], "after");
    assert_eq!(t.removed[0].before.as_ref().unwrap()["title"], "before");
    assert_eq!(t.added[0].key, None);
    let view = explorer.version(None).await.unwrap();
    let ty = view.type_named(Some("Movie")).unwrap();
    let err = view.key_bytes(ty, "1").unwrap_err().to_string();
    assert!(err.contains("no primary key"), "{err}");
}
