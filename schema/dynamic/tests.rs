//! Hostile bytes: every malformed record is a named error, never a panic
//! or unbounded work; and the small codecs the mapping uses.

use super::json::{base64, unbase64};
use super::*;
use crate::schema::examples::every_capnp::every;
use crate::schema::wire::Ptr;
use capnp::introspect::{Introspect, TypeVariant};

/// The schema of `Every` and everything it reaches, as a header carries it.
fn every_schema() -> DynamicSchema {
    let mut protos = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![every::Owned::introspect().which()];
    while let Some(ty) = stack.pop() {
        let proto = match ty {
            TypeVariant::Struct(raw) => {
                let schema = capnp::schema::StructSchema::new(raw);
                if seen.contains(&schema.get_proto().get_id()) {
                    continue;
                }
                for f in schema.get_fields().unwrap() {
                    stack.push(f.get_type().which());
                }
                schema.get_proto()
            }
            TypeVariant::Enum(raw) => capnp::schema::EnumSchema::new(raw).get_proto(),
            TypeVariant::List(element) => {
                stack.push(element.which());
                continue;
            }
            _ => continue,
        };
        if seen.insert(proto.get_id()) {
            protos.push(proto);
        }
    }
    let mut message = capnp::message::Builder::new_default();
    let mut list =
        message.initn_root::<capnp::struct_list::Builder<'_, node::Owned>>(protos.len() as u32);
    for (i, p) in protos.iter().enumerate() {
        list.set_with_caveats(i as u32, *p).unwrap();
    }
    DynamicSchema::from_nodes(list.into_reader()).unwrap()
}

const INNER: u64 = <every::inner::Reader<'static> as capnp::traits::HasTypeId>::TYPE_ID;

/// An `Inner` (1 data word, 3 pointers: label, points, deeper) at word 0
/// of `words`.
fn render(schema: &DynamicSchema, words: &[u64]) -> Result<serde_json::Value, DynamicError> {
    schema.render(
        INNER,
        RecordRef {
            segment: words,
            word: 0,
            data_words: 1,
            ptrs: 3,
        },
    )
}

#[test]
fn a_well_formed_record_reads() {
    let schema = every_schema();
    let mut words = vec![2, 0, Ptr::to_list(1, 5, 2), 0, 7, u64::MAX];
    let v = render(&schema, &words).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"label": "", "points": [7, -1], "deeper": null, "kind": "gamma"})
    );
    words[0] = 9;
    assert_eq!(
        render(&schema, &words).unwrap()["kind"],
        9,
        "an unknown enumerant: its number"
    );
}

#[test]
fn a_struct_that_points_at_itself_is_too_deep() {
    let schema = every_schema();
    let words = [0, 0, 0, Ptr::to_struct(-4, 1, 3)];
    let err = render(&schema, &words).unwrap_err();
    assert!(
        matches!(err, DynamicError::TooDeep { limit: 64, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("$.deeper.deeper"), "{err}");
}

#[test]
fn pointers_out_of_bounds_far_or_of_the_wrong_kind_are_named() {
    let schema = every_schema();
    let cases: [(u64, &str); 5] = [
        (Ptr::to_list(1000, 2, 4), "outside the segment"),
        (Ptr::to_list(-10, 2, 4), "outside the segment"),
        (1 << 32 | 2, "the blob has one segment"),
        (
            Ptr::to_struct(0, 1, 0),
            "expected text or data, found a struct",
        ),
        (Ptr::to_list(0, 5, 1), "expected a list of bytes"),
    ];
    for (label, names) in cases {
        let words = [0, label, 0, 0, 0];
        let err = render(&schema, &words).unwrap_err();
        assert!(matches!(err, DynamicError::Bytes { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(names) && text.contains("$.label"),
            "{names}: {text}"
        );
    }
    // A struct list whose tag claims more elements than its words hold
    // (the tag is the word after the pointer).
    let words = [0, Ptr::to_list(0, 7, 1), Ptr::to_struct(5, 1, 0), 0, 0];
    let err = render(&schema, &words).unwrap_err().to_string();
    assert!(err.contains("tag that does not fit"), "{err}");
    // A list of bytes where 64-bit integers were expected.
    let words = [0, 0, Ptr::to_list(1, 2, 8), 0, 0];
    let err = render(&schema, &words).unwrap_err().to_string();
    assert!(err.contains("where 64-bit elements were expected"), "{err}");
    // A record past the segment's end.
    let err = render(&schema, &[0, 0]).unwrap_err().to_string();
    assert!(err.contains("outside the segment"), "{err}");
}

#[test]
fn a_far_pointer_within_the_segment_is_followed() {
    let schema = every_schema();
    // label: a far pointer to a landing pad at word 4, which points to
    // the text at word 5.
    let text = u64::from_le_bytes(*b"far\0\0\0\0\0");
    let words = [0, 4 << 3 | 2, 0, 0, Ptr::to_list(0, 2, 4), text];
    assert_eq!(render(&schema, &words).unwrap()["label"], "far");
}

#[test]
fn work_is_bounded() {
    let schema = every_schema().with_limits(Limits {
        max_depth: 64,
        max_units: 100,
    });
    let mut words = vec![0, 0, Ptr::to_list(1, 5, 500), 0];
    words.resize(4 + 500, 1);
    let err = render(&schema, &words).unwrap_err();
    assert!(
        matches!(err, DynamicError::TooMuchWork { limit: 100, .. }),
        "{err}"
    );
    assert_eq!(
        render(&every_schema(), &words).unwrap()["points"]
            .as_array()
            .unwrap()
            .len(),
        500
    );
    // A list of 2^29 - 1 voids takes no words, but is counted.
    let voids = every::Owned::introspect();
    let TypeVariant::Struct(raw) = voids.which() else {
        unreachable!()
    };
    let s = capnp::schema::StructSchema::new(raw);
    let proto = s.get_proto();
    let node::Struct(st) = proto.which().unwrap() else {
        unreachable!()
    };
    let (data, ptrs) = (st.get_data_word_count(), st.get_pointer_count());
    let field = s.get_field_by_name("voids").unwrap().get_proto();
    let capnp::schema_capnp::field::Slot(slot) = field.which().unwrap() else {
        unreachable!()
    };
    let mut words = vec![0u64; (data + ptrs) as usize];
    let at = data as usize + slot.get_offset() as usize;
    words[at] = Ptr::to_list(0, 0, (1 << 29) - 1);
    let err = every_schema()
        .render(
            <every::Reader<'static> as capnp::traits::HasTypeId>::TYPE_ID,
            RecordRef {
                segment: &words,
                word: 0,
                data_words: data,
                ptrs,
            },
        )
        .unwrap_err();
    assert!(matches!(err, DynamicError::TooMuchWork { .. }), "{err}");
}

#[test]
fn keys_of_several_fields_read_and_print_in_one_syntax() {
    let schema = every_schema();
    let id = <every::Reader<'static> as capnp::traits::HasTypeId>::TYPE_ID;
    let fields: Vec<String> = ["name", "i16", "kind", "bytes", "flag"]
        .map(String::from)
        .to_vec();
    let key = r"name=a\,b\=c,i16=-3,kind=gamma,bytes=0xbeef,flag=true";
    let bytes = schema.key_from_text(id, "Every", &fields, key).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&5u32.to_le_bytes());
    expected.extend_from_slice(b"a,b=c");
    expected.extend_from_slice(&(-3i64).to_le_bytes());
    expected.extend_from_slice(&2u64.to_le_bytes());
    expected.extend_from_slice(&2u32.to_le_bytes());
    expected.extend_from_slice(&[0xbe, 0xef]);
    expected.push(1);
    assert_eq!(bytes, expected);
    let record = serde_json::json!({"name": "a,b=c", "i16": -3, "kind": "gamma", "bytes": base64(&[0xbe, 0xef]), "flag": true});
    let text = schema.key_text(id, &fields, &record).unwrap();
    assert_eq!(
        schema.key_from_text(id, "Every", &fields, &text).unwrap(),
        bytes,
        "{text}"
    );
    for (bad, names) in [
        ("name=x", "no value for key field i16"),
        (
            "name=x,name=y,i16=1,kind=alpha,bytes=00,flag=false",
            "given twice",
        ),
        (
            "name=x,i16=40000,kind=alpha,bytes=00,flag=false",
            "outside -32768..=32767",
        ),
        (
            "name=x,i16=1,kind=delta,bytes=00,flag=false",
            "not one of alpha, beta, gamma",
        ),
        (
            "name=x,i16=1,kind=beta,bytes=0xz,flag=false",
            "not data in hex",
        ),
        (
            "name=x,i16=1,kind=beta,bytes=00,flag=yes",
            "not true or false",
        ),
        ("justone", "the key has 5 fields"),
    ] {
        let err = schema.key_from_text(id, "Every", &fields, bad).unwrap_err();
        assert!(matches!(err, DynamicError::BadKey { .. }));
        assert!(err.to_string().contains(names), "{bad}: {err}");
    }
    let err = schema.key_from_text(id, "Every", &[], "1").unwrap_err();
    assert!(err.to_string().contains("no primary key"), "{err}");
}

#[test]
fn base64_round_trips() {
    for n in 0..10u8 {
        let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(97)).collect();
        assert_eq!(unbase64(&base64(&bytes)).unwrap(), bytes);
    }
    assert_eq!(base64(b"Ma"), "TWE=");
    assert_eq!(unbase64("TW?="), None);
}

mod arbitrary_words {
    use super::*;
    use proptest::prelude::*;

    /// Words that look like pointers often enough to reach every branch:
    /// struct and list pointers with small offsets and sizes, far
    /// pointers, and raw words.
    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (-8i64..8, 0u16..3, 0u16..4).prop_map(|(o, d, p)| Ptr::to_struct(o, d, p)),
            (-8i64..8, 0u8..8, 0u32..40).prop_map(|(o, s, c)| Ptr::to_list(o, s, c)),
            (0u64..16, 0u64..2).prop_map(|(pad, double)| pad << 3 | double << 2 | 2),
            Just(0u64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        /// Invariant: any words, read as any record type of the schema,
        /// give a rendering or a named error, never a panic, and within
        /// the work bound.
        #[test]
        fn any_words_render_or_fail_by_name(words in prop::collection::vec(word(), 0..48), at in 0usize..8) {
            let schema = every_schema().with_limits(Limits { max_depth: 64, max_units: 1 << 16 });
            let every_id = <every::Reader<'static> as capnp::traits::HasTypeId>::TYPE_ID;
            for (id, data, ptrs) in [(INNER, 1, 3), (every_id, 6, 24)] {
                let rec = RecordRef { segment: &words, word: at, data_words: data, ptrs };
                let _ = schema.render(id, rec);
                let _ = schema.render_path(id, rec, "inner.deeper.label");
            }
        }
    }
}

// ---- Building records from JSON (`build`). ----

const EVERY: u64 = <every::Reader<'static> as capnp::traits::HasTypeId>::TYPE_ID;

/// The canonical message of a message's root (what the producer keeps).
fn canonical_of(words: &[u64]) -> Vec<u64> {
    let message = crate::schema::record::record_message(words, 1 << 20);
    let root = message
        .get_root::<capnp::any_pointer::Reader<'_>>()
        .unwrap();
    let mut out = Vec::new();
    crate::schema::record::append_canonical(root, None, &mut Vec::new(), &mut out).unwrap();
    out
}

/// An `Every` with every pointer field set (a null pointer renders as its
/// default, which a rebuilt record would then set) and no `AnyPointer`.
fn full_every(i: u32, which: u32) -> Vec<u64> {
    let mut m = capnp::message::Builder::new_default();
    let mut e = m.init_root::<every::Builder<'_>>();
    e.set_id(u64::from(i));
    e.set_flag(true);
    e.set_i8(-128);
    e.set_i16(-7 * i as i16);
    e.set_i64(i64::MIN + 1);
    e.set_u8(255);
    e.set_u32(4_000_000_000);
    e.set_u64(u64::MAX - 1);
    e.set_f32(1.0 / 3.0);
    e.set_f64(if i.is_multiple_of(2) {
        f64::NAN
    } else {
        -0.5e300
    });
    e.set_name("name ✓");
    e.set_named("");
    e.set_bytes(&[0, 255, 7][..]);
    e.set_kind(every::Kind::Alpha);
    {
        let mut inner = e.reborrow().init_inner();
        inner.set_label("in");
        let mut p = inner.reborrow().init_points(2);
        p.set(0, i64::MIN);
        p.set(1, 1 << 53);
        let mut deeper = inner.init_deeper();
        deeper.set_label("deep");
        deeper.init_points(0);
    }
    {
        let mut d = e.reborrow().init_inner_default();
        d.set_label("");
        d.init_points(1).set(0, 4);
    }
    let mut bools = e.reborrow().init_bools(70);
    for k in 0..70 {
        bools.set(k, (k + i).is_multiple_of(3));
    }
    let mut l = e.reborrow().init_i16s(2);
    l.set(0, i16::MIN);
    l.set(1, 9);
    e.reborrow().init_u64s(1).set(0, u64::MAX);
    let mut l = e.reborrow().init_f32s(2);
    l.set(0, f32::NEG_INFINITY);
    l.set(1, 0.1);
    e.reborrow().init_f64s(1).set(0, -0.0);
    let mut l = e.reborrow().init_texts(2);
    l.set(0, "a, b");
    l.set(1, "");
    let mut l = e.reborrow().init_datas(2);
    l.set(0, &[1, 2, 3][..]);
    l.set(1, &[][..]);
    let mut l = e.reborrow().init_kinds(2);
    l.set(0, every::Kind::Gamma);
    l.set(1, every::Kind::Alpha);
    {
        let mut l = e.reborrow().init_inners(2);
        let mut first = l.reborrow().get(0);
        first.set_label("first");
        first.init_points(0);
        let mut second = l.get(1);
        second.set_label("second");
        second.set_kind(every::Kind::Gamma);
        second.init_points(1).set(0, -3);
    }
    {
        let mut m = e.reborrow().init_matrix(2);
        let mut row = m.reborrow().init(0, 2);
        row.set(0, -1);
        row.set(1, i32::MAX);
        m.init(1, 0);
    }
    e.reborrow().init_voids(3);
    match which {
        0 => e.set_nothing(()),
        1 => e.set_number(-5),
        2 => e.set_word("hello"),
        _ => {
            let mut n = e.reborrow().init_nested();
            n.set_label("nested");
            n.init_points(0);
        }
    }
    if which.is_multiple_of(2) {
        e.reborrow().get_choice().set_left(7);
    } else {
        e.reborrow().get_choice().init_right(1).set(0, "r");
    }
    {
        let mut place = e.reborrow().get_place();
        place.set_x(-3);
        place.set_tag("there");
    }
    e.reborrow().init_i8s(1).set(0, i8::MIN);
    e.init_u32s(1).set(0, u32::MAX);
    let root = m
        .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
        .unwrap();
    let mut out = Vec::new();
    crate::schema::record::append_canonical(root, None, &mut Vec::new(), &mut out).unwrap();
    out
}

fn render_canonical(schema: &DynamicSchema, words: &[u64]) -> serde_json::Value {
    let root = Ptr(words[0]);
    schema
        .render(
            EVERY,
            RecordRef {
                segment: words,
                word: 1,
                data_words: root.data_words(),
                ptrs: root.ptr_count(),
            },
        )
        .unwrap()
}

/// Invariant: a record built from the JSON a generated record renders to
/// is that record, byte for byte once canonical, for every kind of field
/// (scalars with and without defaults, NaN and infinities, text, data,
/// enums, lists of each, lists of structs and lists, nested structs,
/// both unions, the group).
#[test]
fn built_records_are_the_generated_records_they_render_from() {
    let schema = every_schema();
    let builder = RecordBuilder::new(&schema, EVERY, BuildOptions::default()).unwrap();
    for which in 0..4 {
        for i in [1u32, 2] {
            let original = full_every(i, which);
            let json = render_canonical(&schema, &original);
            let built = builder.build(&json).unwrap();
            assert_eq!(
                canonical_of(&built),
                original,
                "record {i}, union member {which}"
            );
        }
    }
    // Scalars as CSV gives them: strings.
    let csv = RecordBuilder::new(
        &schema,
        EVERY,
        BuildOptions {
            scalars_from_strings: true,
            ..BuildOptions::default()
        },
    )
    .unwrap();
    let from_strings = csv
        .build(&serde_json::json!({
            "id": "7", "flag": "true", "i16": "-300", "u64": "18446744073709551615",
            "f64": "2.5", "name": "x", "kind": "gamma", "number": "-4"
        }))
        .unwrap();
    let from_json = builder
        .build(&serde_json::json!({
            "id": 7, "flag": true, "i16": -300, "u64": "18446744073709551615",
            "f64": 2.5, "name": "x", "kind": "gamma", "number": -4
        }))
        .unwrap();
    assert_eq!(canonical_of(&from_strings), canonical_of(&from_json));
}

/// Invariant: a value that does not fit its field is refused with the
/// field's path and what is wrong, never written.
#[test]
fn bad_values_are_named_by_path() {
    let schema = every_schema();
    let builder = RecordBuilder::new(&schema, EVERY, BuildOptions::default()).unwrap();
    let refused = |json: serde_json::Value| builder.build(&json).unwrap_err().to_string();
    let cases = [
        (serde_json::json!({"u8": 300}), "field u8: 300 is out of range for UInt8 (0 to 255)"),
        (serde_json::json!({"i8": -129}), "field i8: -129 is out of range for Int8"),
        (serde_json::json!({"u32": 1.5}), "field u32: 1.5 is not an integer"),
        (serde_json::json!({"name": 5}), "field name: expected a string for Text, got 5"),
        (serde_json::json!({"flag": "yes"}), "field flag: expected Bool, got \"yes\""),
        (serde_json::json!({"f32": 1e39}), "out of range for Float32"),
        (serde_json::json!({"bytes": "not base64!"}), "field bytes: Data is written in standard base64"),
        (
            serde_json::json!({"kind": "delta"}),
            "field kind: \"delta\" is not an enumerant of Every.Kind (expected one of: alpha, beta, gamma)",
        ),
        (serde_json::json!({"u64s": [1, -1]}), "field u64s[1]: -1 is out of range for UInt64"),
        (
            serde_json::json!({"inners": [{}, {"label": 3}]}),
            "field inners[1].label: expected a string",
        ),
        (serde_json::json!({"place": {"x": "far"}}), "field place.x:"),
        (serde_json::json!({"number": 1, "word": "w"}), "number and word are members of one union"),
        (serde_json::json!({"rating": 5}), "field rating: no such field in"),
        (serde_json::json!({"texts": "a"}), "field texts: expected an array for List(Text)"),
        (serde_json::json!({"any": {"x": 1}}), "field any: an AnyPointer"),
        (serde_json::json!([1]), "expected an object for Every"),
    ];
    for (json, expected) in cases {
        let err = refused(json.clone());
        assert!(err.contains(expected), "{json}: {err}");
    }
    let lenient = RecordBuilder::new(
        &schema,
        EVERY,
        BuildOptions {
            ignore_unknown_fields: true,
            scalars_from_strings: true,
        },
    )
    .unwrap();
    let skipped = lenient
        .build(&serde_json::json!({"id": "1", "rating": "5"}))
        .unwrap();
    let plain = builder.build(&serde_json::json!({"id": 1})).unwrap();
    assert_eq!(canonical_of(&skipped), canonical_of(&plain));
    let err = lenient
        .build(&serde_json::json!({"texts": "a"}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field texts: is a List(Text), which a CSV cell cannot hold"),
        "{err}"
    );
    let err = lenient
        .build(&serde_json::json!({"inner": "a"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("field inner: is a Every.Inner"), "{err}");
}
