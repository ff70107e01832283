//! A Cap'n Proto schema file that types one dataset's blobs, so that any
//! Cap'n Proto reader (the reference `capnp decode`) prints their records.
//!
//! `schema/burrow.capnp` leaves a blob's records untyped (`records @2
//! :AnyPointer`): each dataset has its own record types. [`blob_schema`]
//! prints, for the dataset of one blob, a file whose root structs
//! `Snapshot` and `Delta` have the generic ones' layout with `records`
//! typed: a struct `Records` with one field per records slot, field N being
//! `List(List(T))` for the type in slot N (the lists of `1 << listShift`
//! records the writer splits a type into, see [`crate::schema::blob`]), and
//! a slot the blob does not type (no type uses it, or its type has no
//! schema node) an `AnyPointer`, so that field numbers stay slot numbers.
//!
//! The record types are printed from the schema nodes the blob's header
//! carries (`Header.nodes`: every struct and enum the types reach), with
//! their original ids, ordinals, groups, unions, nested declarations and
//! default values, so that the compiler lays each struct out exactly as the
//! producer's did. burrow's own structs (`Header`, `TypeSnapshot`, ...) are
//! printed from this build's compiled `burrow.capnp`, under ids derived
//! from the file's (so the file can be loaded beside `burrow.capnp`).
//!
//! Slots are the producer's numbering of the types it registers, the same
//! in every blob it writes while its types stay the same: a schema printed
//! from a snapshot types the deltas of its chain. A delta types only the
//! slots it uses.
//!
//! Invariants: the output is a complete file that `capnp compile` accepts
//! for any header a burrow producer writes; a header this printer cannot
//! render exactly (a generic type, an interface, a node that is missing or
//! of another kind, a name that is not an identifier) is refused with
//! [`CapnpTextError::Unprintable`], never printed approximately. Names from
//! the header reach the output only as checked identifiers, and display
//! names only inside comments, stripped of control characters.

mod print;
mod value;

use crate::error::FormatError;
use crate::schema::blob::OpenBlob;
use crate::schema::burrow_capnp;
use crate::schema::envelope::BlobKind;
use capnp::schema_capnp::node;
use std::collections::HashMap;
use std::sync::Arc;

/// Why no schema could be printed for a blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapnpTextError {
    /// The blob's bytes are bad: not a snapshot or delta, or a header or
    /// type list that does not read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The blob holds no record types, so there is nothing to type.
    #[error("{blob}: holds no record types, so there is no schema to print")]
    NoTypes {
        /// The blob, as named in the store or by its file.
        blob: String,
    },
    /// Something in the header cannot be written as Cap'n Proto source
    /// that lays the records out as the producer did.
    #[error("{blob}: cannot print {node} as Cap'n Proto: {reason}")]
    Unprintable {
        /// The blob.
        blob: String,
        /// The schema node (display name and id), or the record type.
        node: String,
        /// What cannot be printed, and where in the node.
        reason: String,
    },
}

/// One records slot of a blob: the type whose lists it holds.
#[derive(Debug, Clone)]
struct SlotType {
    slot: u16,
    type_id: u64,
    name: String,
    key_fields: Vec<String>,
}

impl SlotType {
    fn new(slot: u16, type_id: u64, name: String, key_fields: Vec<String>) -> Self {
        SlotType {
            slot,
            type_id,
            name,
            key_fields,
        }
    }
}

/// The Cap'n Proto schema file that types `blob`'s records (see the
/// module documentation): a snapshot's types, or the types a delta
/// carries. `Snapshot` and `Delta` are its roots:
///
/// ```text
/// capnp decode -I /usr/include <file> Snapshot < <blob minus its 64-byte envelope>
/// ```
pub fn blob_schema(blob: &Arc<OpenBlob>) -> Result<String, CapnpTextError> {
    let kind = blob.envelope().kind;
    let (header, slots) = match kind {
        BlobKind::Snapshot => {
            let (header, sections) = blob.snapshot()?;
            let slots = sections
                .into_iter()
                .map(|s| SlotType::new(s.lists.slot, s.type_id, s.name, s.key_fields));
            (header, slots.collect::<Vec<_>>())
        }
        _ => {
            let (header, sections) = blob.delta()?;
            let slots = sections
                .into_iter()
                .map(|s| SlotType::new(s.lists.slot, s.type_id, s.name, s.key_fields));
            (header, slots.collect::<Vec<_>>())
        }
    };
    if slots.is_empty() {
        return Err(CapnpTextError::NoTypes {
            blob: blob.name().to_string(),
        });
    }
    let source = Source {
        blob: blob.name(),
        kind,
        dataset: header.dataset_id.to_string(),
        schema_hash: header.schema_hash,
        file_id: file_id(
            header.dataset_id.hi(),
            header.dataset_id.lo(),
            header.schema_hash,
        ),
    };
    blob.with_schema_nodes(|nodes| render(&source, nodes.iter().collect(), &slots))
}

/// The dataset's own types as a Cap'n Proto schema file, as the producer's
/// authors wrote them: the structs and enums `blob`'s header carries, with
/// their ids, ordinals, groups, unions, nested declarations and defaults,
/// and a comment naming each record type and its primary key; none of
/// burrow's own structs (what `burrow schema` prints; [`blob_schema`] is
/// the file that decodes whole blobs).
pub fn dataset_schema(blob: &Arc<OpenBlob>) -> Result<String, CapnpTextError> {
    let (header, slots): (_, Vec<SlotType>) = match blob.envelope().kind {
        BlobKind::Snapshot => {
            let (header, sections) = blob.snapshot()?;
            let slots = sections
                .into_iter()
                .map(|s| SlotType::new(s.lists.slot, s.type_id, s.name, s.key_fields));
            (header, slots.collect())
        }
        _ => {
            let (header, sections) = blob.delta()?;
            let slots = sections
                .into_iter()
                .filter(|s| !s.dropped)
                .map(|s| SlotType::new(s.lists.slot, s.type_id, s.name, s.key_fields));
            (header, slots.collect())
        }
    };
    if slots.is_empty() {
        return Err(CapnpTextError::NoTypes {
            blob: blob.name().to_string(),
        });
    }
    let id = file_id(
        header.dataset_id.hi(),
        header.dataset_id.lo(),
        header.schema_hash ^ 0x5eed,
    );
    blob.with_schema_nodes(|nodes| {
        let printer = print::Printer::new(blob.name(), nodes.iter().collect(), &[])?;
        let mut out = format!(
            "# The record types of burrow dataset {}\n\
             # (printed by `burrow schema` from {}, schema hash {:016x}).\n",
            header.dataset_id,
            print::comment_text(blob.name()),
            header.schema_hash
        );
        for t in &slots {
            let path =
                printer
                    .record_type(t.type_id)
                    .ok_or_else(|| CapnpTextError::Unprintable {
                        blob: blob.name().to_string(),
                        node: format!("type {} ({:#018x})", t.name, t.type_id),
                        reason: "the header carries no struct node for it".into(),
                    })?;
            let key = if t.key_fields.is_empty() {
                "no primary key".to_string()
            } else {
                format!("primary key ({})", t.key_fields.join(", "))
            };
            out.push_str(&format!("# Record type {path}: {key}.\n"));
        }
        out.push_str(&format!("@0x{id:016x};\n"));
        printer.user_decls(&mut out)?;
        Ok(out)
    })
}

/// What the file's opening comment says about where it came from.
struct Source<'a> {
    blob: &'a str,
    kind: BlobKind,
    dataset: String,
    schema_hash: u64,
    file_id: u64,
}

/// The file's id: derived from the dataset and its schema, so that
/// printing twice gives the same file; the high bit set, as Cap'n Proto
/// requires.
fn file_id(dataset_hi: u64, dataset_lo: u64, schema_hash: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"burrow schema --capnp");
    h.update(&dataset_hi.to_le_bytes());
    h.update(&dataset_lo.to_le_bytes());
    h.update(&schema_hash.to_le_bytes());
    h.digest() | 1 << 63
}

/// burrow's own structs the file declares, printed from this build's
/// compiled `burrow.capnp`, in the order they are printed.
fn burrow_nodes() -> Vec<node::Reader<'static>> {
    use capnp::introspect::{Introspect, TypeVariant};
    let proto = |ty: capnp::introspect::Type| match ty.which() {
        TypeVariant::Struct(raw) => capnp::schema::StructSchema::new(raw).get_proto(),
        _ => unreachable!("burrow.capnp's structs introspect as structs"),
    };
    vec![
        proto(burrow_capnp::snapshot::Owned::introspect()),
        proto(burrow_capnp::delta::Owned::introspect()),
        proto(burrow_capnp::header::Owned::introspect()),
        proto(burrow_capnp::tag::Owned::introspect()),
        proto(burrow_capnp::type_checksum::Owned::introspect()),
        proto(burrow_capnp::type_snapshot::Owned::introspect()),
        proto(burrow_capnp::secondary_index::Owned::introspect()),
        proto(burrow_capnp::type_delta::Owned::introspect()),
    ]
}

/// The name burrow's struct `node` is declared under (`Header`, ...).
fn burrow_name(node: node::Reader<'static>) -> &'static str {
    let display = node
        .get_display_name()
        .ok()
        .and_then(|n| n.to_str().ok())
        .unwrap_or_default();
    display.rsplit([':', '.']).next().unwrap_or(display)
}

/// The name of the struct that types the records area.
const RECORDS: &str = "Records";

fn render(
    source: &Source<'_>,
    nodes: Vec<node::Reader<'_>>,
    slots: &[SlotType],
) -> Result<String, CapnpTextError> {
    let own = burrow_nodes();
    let mut reserved: Vec<&str> = own.iter().map(|n| burrow_name(*n)).collect();
    reserved.push(RECORDS);
    let mut printer = print::Printer::new(source.blob, nodes, &reserved)?;
    for n in &own {
        printer.declare_own(*n, burrow_name(*n))?;
    }
    let records = records_fields(&printer, source, slots)?;
    let mut out = String::new();
    let kind = match source.kind {
        BlobKind::Snapshot => "snapshot",
        BlobKind::Delta => "delta",
        BlobKind::Reverse => "reverse delta",
        BlobKind::Announcement => "announcement",
    };
    out.push_str(&format!(
        "# The records of burrow dataset {}\n\
         # as Cap'n Proto types, printed by `burrow schema --capnp` from\n\
         # {} ({kind}, schema hash {:016x}).\n\
         # Decode a blob body (the blob without its 64-byte envelope; a stored\n\
         # blob decompressed first) with one of:\n\
         #   capnp decode -I /usr/include <this file> Snapshot < body\n\
         #   capnp decode -I /usr/include <this file> Delta < body\n\
         @0x{:016x};\n",
        source.dataset,
        print::comment_text(source.blob),
        source.schema_hash,
        source.file_id
    ));
    for n in &own {
        let name = burrow_name(*n);
        let roots = ["Snapshot", "Delta"];
        out.push('\n');
        printer.own_decl(&mut out, *n, name, roots.contains(&name).then_some(RECORDS))?;
    }
    out.push_str(&format!(
        "\n# One pointer per records slot: field N holds the records of the type\n\
         # in slot N (TypeSnapshot.recordsSlot), as lists of 1 << listShift\n\
         # records; in a snapshot, element o of the lists is ordinal o.\n\
         struct {RECORDS} {{\n"
    ));
    for line in records {
        out.push_str(&line);
    }
    out.push_str("}\n");
    printer.user_decls(&mut out)?;
    Ok(out)
}

/// The fields of `Records`, one per slot up to the highest one in use.
fn records_fields(
    printer: &print::Printer<'_>,
    source: &Source<'_>,
    slots: &[SlotType],
) -> Result<Vec<String>, CapnpTextError> {
    let by_slot: HashMap<u16, &SlotType> = slots.iter().map(|s| (s.slot, s)).collect();
    let top = slots.iter().map(|s| s.slot).max().unwrap_or(0);
    let mut used = std::collections::HashSet::new();
    let mut lines = Vec::with_capacity(top as usize + 1);
    for slot in 0..=top {
        let Some(t) = by_slot.get(&slot) else {
            lines.push(format!(
                "  slot{slot} @{slot} :AnyPointer;  # slot {slot}: no type in this blob\n"
            ));
            continue;
        };
        let key = if t.key_fields.is_empty() {
            "no key".to_string()
        } else {
            format!("key {}", t.key_fields.join(", "))
        };
        let about = format!("slot {slot}: {} ({key})", print::comment_text(&t.name));
        let mut name = field_name(&t.name).unwrap_or_else(|| format!("slot{slot}"));
        if !used.insert(name.clone()) {
            name = format!("{name}{slot}");
            used.insert(name.clone());
        }
        match printer.record_type(t.type_id) {
            Some(path) => lines.push(format!(
                "  {name} @{slot} :List(List({path}));  # {about}\n"
            )),
            None if source.kind == BlobKind::Snapshot => {
                return Err(CapnpTextError::Unprintable {
                    blob: source.blob.to_string(),
                    node: format!("type {} ({:#018x})", t.name, t.type_id),
                    reason: "the header carries no struct node for it".into(),
                })
            }
            // A delta may carry a type the producer no longer registers
            // (a reverse delta re-creating it); its node left the header.
            None => lines.push(format!(
                "  {name} @{slot} :AnyPointer;  # {about}: no schema node in this header\n"
            )),
        }
    }
    Ok(lines)
}

/// A field name for a type's slot: its unqualified name with the first
/// letter lowercased (`examples/movies.capnp:Movie` gives `movie`), or
/// `None` if that is not an identifier.
fn field_name(type_name: &str) -> Option<String> {
    let short = type_name.rsplit([':', '.']).next()?;
    let mut chars = short.chars();
    let first = chars.next()?.to_ascii_lowercase();
    let name: String = std::iter::once(first).chain(chars).collect();
    print::is_member_name(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capnp::message::{Builder, HeapAllocator};

    fn source() -> Source<'static> {
        Source {
            blob: "snapshot/1",
            kind: BlobKind::Snapshot,
            dataset: "d".into(),
            schema_hash: 0,
            file_id: file_id(1, 2, 3),
        }
    }

    fn slot(type_id: u64) -> SlotType {
        SlotType {
            slot: 0,
            type_id,
            name: "t.capnp:T".into(),
            key_fields: Vec::new(),
        }
    }

    /// One node, built by `fill` on a node named `t.capnp:T`, id 0x8001.
    fn node(fill: impl FnOnce(node::Builder<'_>)) -> Builder<HeapAllocator> {
        let mut m = Builder::new_default();
        let mut n: node::Builder<'_> = m.init_root();
        n.set_id(0x8001);
        n.set_display_name("t.capnp:T");
        n.set_display_name_prefix_length(8);
        fill(n);
        m
    }

    /// A struct node with one field `name @0` of a type set by `ty`.
    fn struct_with_field(
        name: &str,
        ty: impl FnOnce(capnp::schema_capnp::type_::Builder<'_>),
    ) -> Builder<HeapAllocator> {
        node(|n| {
            let mut st = n.init_struct();
            st.set_data_word_count(1);
            let mut f = st.init_fields(1).get(0);
            f.set_name(name);
            f.set_discriminant_value(capnp::schema_capnp::field::NO_DISCRIMINANT);
            f.reborrow().init_ordinal().set_explicit(0);
            let slot = f.init_slot();
            ty(slot.init_type());
        })
    }

    fn render_one(
        m: &Builder<HeapAllocator>,
        slots: &[SlotType],
    ) -> Result<String, CapnpTextError> {
        render(&source(), vec![m.get_root_as_reader().unwrap()], slots)
    }

    fn refusal(m: &Builder<HeapAllocator>, slots: &[SlotType]) -> String {
        let err = render_one(m, slots).unwrap_err();
        assert!(matches!(err, CapnpTextError::Unprintable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("snapshot/1: cannot print"), "{text}");
        text
    }

    #[test]
    fn a_plain_struct_prints_with_its_id() {
        let m = struct_with_field("count", |mut t| t.set_uint32(()));
        let text = render_one(&m, &[slot(0x8001)]).unwrap();
        assert!(text.contains("struct T @0x0000000000008001 {"), "{text}");
        assert!(text.contains("  count @0 :UInt32;"), "{text}");
        assert!(text.contains("  t @0 :List(List(T));"), "{text}");
    }

    #[test]
    fn nodes_that_cannot_be_printed_are_refused_by_name() {
        let interface = node(|n| {
            n.init_interface();
        });
        let text = refusal(&interface, &[slot(0x8001)]);
        assert!(text.contains("t.capnp:T (@0x0000000000008001)"), "{text}");
        assert!(text.contains("an interface"), "{text}");

        let generic = node(|mut n| {
            n.set_is_generic(true);
            n.init_struct();
        });
        assert!(refusal(&generic, &[slot(0x8001)]).contains("generic"));

        let capability = struct_with_field("cap", |t| {
            t.init_interface().set_type_id(0x8002);
        });
        let text = refusal(&capability, &[slot(0x8001)]);
        assert!(text.contains("field cap: interface"), "{text}");

        let dangling = struct_with_field("other", |t| {
            t.init_struct().set_type_id(0x8003);
        });
        let text = refusal(&dangling, &[slot(0x8001)]);
        assert!(
            text.contains("struct @0x0000000000008003 is not in the header"),
            "{text}"
        );

        let missing = struct_with_field("count", |mut t| t.set_uint32(()));
        let text = refusal(&missing, &[slot(0x9999)]);
        assert!(text.contains("carries no struct node"), "{text}");
    }

    /// Two structs each nested in the other never reach the file: refused,
    /// not looped over.
    #[test]
    fn a_loop_of_scopes_is_refused() {
        let nested_in = |id: u64, parent: u64, name: &str, other: &str| {
            let mut m = Builder::new_default();
            let mut n: node::Builder<'_> = m.init_root();
            n.set_id(id);
            n.set_scope_id(parent);
            n.set_display_name(name);
            let mut nested = n.reborrow().init_nested_nodes(1).get(0);
            nested.set_name(other);
            nested.set_id(parent);
            n.init_struct();
            m
        };
        let a = nested_in(0x8001, 0x8002, "t.capnp:B.A", "B");
        let b = nested_in(0x8002, 0x8001, "t.capnp:A.B", "A");
        let nodes = vec![
            a.get_root_as_reader().unwrap(),
            b.get_root_as_reader().unwrap(),
        ];
        let err = render(&source(), nodes, &[slot(0x8001)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("loops"), "{err}");
    }

    /// Invariant: names from a header reach the file only as identifiers,
    /// so a header cannot smuggle declarations into it.
    #[test]
    fn names_that_are_not_identifiers_are_refused() {
        let evil = struct_with_field("x @0 :Text; } struct Evil {", |mut t| t.set_text(()));
        let text = refusal(&evil, &[slot(0x8001)]);
        assert!(
            text.contains("is not a Cap'n Proto field or enumerant name"),
            "{text}"
        );
        let evil_type = node(|mut n| {
            n.set_display_name("t.capnp:T {\n}");
            n.init_struct();
        });
        assert!(refusal(&evil_type, &[slot(0x8001)]).contains("not a Cap'n Proto identifier"));
    }

    #[test]
    fn slot_field_names_are_lowercased_identifiers() {
        assert_eq!(
            field_name("examples/movies.capnp:Movie").as_deref(),
            Some("movie")
        );
        assert_eq!(field_name("a.capnp:Outer.Inner").as_deref(), Some("inner"));
        assert_eq!(field_name("a.capnp:Bad_Name"), None);
        assert_eq!(field_name("a.capnp:9Lives"), None);
        assert_eq!(field_name(""), None);
    }

    #[test]
    fn file_ids_have_the_high_bit_and_follow_the_dataset() {
        let a = file_id(1, 2, 3);
        assert_eq!(a >> 63, 1);
        assert_eq!(a, file_id(1, 2, 3));
        assert_ne!(a, file_id(1, 2, 4));
    }
}
