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
