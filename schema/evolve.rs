//! Schema evolution: whether records written under one version of a
//! record type's schema may be read, or continued, under another.
//!
//! Every blob carries the schema nodes of its types (`Header.nodes`), so a
//! reader compares them with its generated code's nodes (the "ours" side
//! here) before it trusts a type matched by node id. The rules are Cap'n
//! Proto's own ("Evolving your protocol"), checked on the nodes:
//!
//! - fields are matched by their index in the struct's (or group's) field
//!   list, which Cap'n Proto keeps stable: a field's **name may change**
//!   (a rename), but not its kind (a field or a group), its slot's type
//!   (deeply: list elements, the struct or enum it names), its offset,
//!   its default value, or its union membership (discriminant value);
//! - **fields and types may be added**; a struct's data and pointer
//!   sections may only grow, its union discriminant keeps its offset, and
//!   no field is ever removed;
//! - an enum may **gain enumerants** (renaming one is a rename), never lose
//!   one;
//! - a **primary key field keeps its name**: a key names its fields, and a
//!   key field renamed would read as another key.
//!
//! Stricter than Cap'n Proto in two places, on purpose: a field may not be
//! retroactively moved into a new union or group, and no type change is
//! allowed, not even the wire-compatible ones (Text to Data, a list of
//! primitives to a list of structs). Both are refused by name.
//!
//! Two directions are checked ([`Rule`]). A producer that continues a
//! chain ([`Rule::Continue`]) must hold the chain's schema or a newer one:
//! every struct of the blobs' at most as large as ours, every field and
//! enumerant still there. A consumer ([`Rule::Read`]) may be older or
//! newer than the blobs it reads, struct by struct: Cap'n Proto's readers
//! give a newer field its default when the record is older (its sections
//! are smaller) and never see an older reader's unknown fields; what
//! both sides know must agree.

use capnp::schema_capnp::{field, node, type_, value};
use std::collections::{HashMap, HashSet};

/// Schema nodes by id: a blob header's, or generated code's.
pub type NodeMap<'a> = HashMap<u64, node::Reader<'a>>;

/// Which side may be the newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A producer continuing a chain: our schema must be the blobs' or an
    /// evolution of it (nothing shrinks, nothing is removed).
    Continue,
    /// A consumer reading blobs: either side may be the newer, struct by
    /// struct; the fields both know must agree.
    Read,
}

/// A type whose schema in a blob cannot be read or continued by this
/// build's generated code, naming what changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{blob}: type {type_name}{}: {change} (an incompatible schema change)", field_part(.field))]
pub struct SchemaError {
    /// The blob whose schema nodes were compared.
    pub blob: String,
    /// The struct or enum the change is in (its display name; a nested
    /// struct's, when the change is below the record type).
    pub type_name: String,
    /// The field (or enumerant) that changed, by this build's name, a
    /// group's fields as `group.field`; `None` for the struct itself.
    pub field: Option<String>,
    /// What changed, with the blob's and this build's values.
    pub change: String,
}

fn field_part(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!(", field `{f}`"))
        .unwrap_or_default()
}

/// The generated nodes of `roots` and of every struct and enum their
/// fields reach (groups included), by id. Types given by their nodes at
/// run time are left out (see [`node_map`]).
pub fn generated_nodes(roots: &[crate::schema::record::TypeInfo]) -> NodeMap<'static> {
    use capnp::introspect::TypeVariant;
    let mut nodes = NodeMap::new();
    let mut stack: Vec<TypeVariant> = roots
        .iter()
        .filter_map(|t| t.schema())
        .map(|s| TypeVariant::Struct(s.into()))
        .collect();
    while let Some(ty) = stack.pop() {
        match ty {
            TypeVariant::Struct(raw) => {
                let schema = capnp::schema::StructSchema::new(raw);
                let proto = schema.get_proto();
                if nodes.insert(proto.get_id(), proto).is_some() {
                    continue;
                }
                if let Ok(fields) = schema.get_fields() {
                    for f in fields {
                        stack.push(f.get_type().which());
                    }
                }
            }
            TypeVariant::Enum(raw) => {
                let proto = capnp::schema::EnumSchema::new(raw).get_proto();
                nodes.insert(proto.get_id(), proto);
            }
            TypeVariant::List(element) => stack.push(element.which()),
            _ => {}
        }
    }
    nodes
}

/// The nodes of `messages` (one canonical node each, as
/// [`crate::schema::blob::DatasetSchema::node_messages`] gives them), by id.
pub fn node_map<'a>(
    messages: &'a [capnp::message::Reader<crate::schema::record::OneSegment<'_>>],
) -> NodeMap<'a> {
    messages
        .iter()
        .filter_map(|m| m.get_root::<node::Reader<'_>>().ok())
        .map(|n| (n.get_id(), n))
        .collect()
}

/// Checks record type `type_id` (primary key `key_fields`, by name) in a
/// blob whose nodes are `theirs` against this build's nodes `ours`.
/// A type either side has no node for is not compared (a type only one
/// side knows is new or dropped, which evolution allows).
pub fn check_type(
    blob: &str,
    theirs: &NodeMap<'_>,
    ours: &NodeMap<'_>,
    type_id: u64,
    key_fields: &[String],
    rule: Rule,
) -> Result<(), SchemaError> {
    let (Some(their_node), Some(our_node)) = (theirs.get(&type_id), ours.get(&type_id)) else {
        return Ok(());
    };
    let mut check = Check {
        theirs,
        ours,
        rule,
        seen: HashSet::new(),
    };
    check
        .node(type_id, type_id, "", None)
        .and_then(|()| check_key(*their_node, *our_node, key_fields))
        .map_err(|c| SchemaError {
            blob: blob.to_string(),
            type_name: c.type_name,
            field: c.field,
            change: c.change,
        })
}

/// A change found, before the blob is named.
struct Change {
    type_name: String,
    field: Option<String>,
    change: String,
}

fn display_name(node: node::Reader<'_>) -> String {
    let raw = node
        .get_display_name()
        .ok()
        .and_then(|n| n.to_str().ok())
        .unwrap_or("<unnamed>");
    crate::schema::record::portable_display_name(raw)
        .0
        .to_string()
}

fn name_of(f: field::Reader<'_>) -> String {
    f.get_name()
        .ok()
        .and_then(|n| n.to_str().ok())
        .unwrap_or("<unnamed>")
        .to_string()
}

/// A primary key field keeps its name: each key field, found by name in
/// the blob's node, must have the same name at the same index in ours.
fn check_key(
    theirs: node::Reader<'_>,
    ours: node::Reader<'_>,
    keys: &[String],
) -> Result<(), Change> {
    if keys.is_empty() {
        return Ok(());
    }
    let change = |field: String, change: String| Change {
        type_name: display_name(ours),
        field: Some(field),
        change,
    };
    let (Ok(node::Struct(t)), Ok(node::Struct(o))) = (theirs.which(), ours.which()) else {
        return Ok(());
    };
    let (Ok(tf), Ok(of)) = (t.get_fields(), o.get_fields()) else {
        return Err(change(String::new(), "the fields cannot be read".into()));
    };
    for key in keys {
        let Some(at) = tf.iter().position(|f| name_of(f) == *key) else {
            return Err(change(
                key.clone(),
                "is a primary key field the blob's own schema does not have".into(),
            ));
        };
        match (at < of.len() as usize).then(|| name_of(of.get(at as u32))) {
            Some(ours) if ours == *key => {}
            Some(ours) => {
                return Err(change(
                    ours.clone(),
                    format!(
                        "primary key field `{key}` is renamed `{ours}` in this build; \
                         a key field keeps its name"
                    ),
                ))
            }
            None => {
                return Err(change(
                    key.clone(),
                    "primary key field is missing from this build's schema".into(),
                ))
            }
        }
    }
    Ok(())
}

struct Check<'t, 'o, 'a, 'b> {
    theirs: &'t NodeMap<'a>,
    ours: &'o NodeMap<'b>,
    rule: Rule,
    /// Pairs (theirs, ours) of nodes already compared (or being compared:
    /// a recursive type refers to itself).
    seen: HashSet<(u64, u64)>,
}

impl Check<'_, '_, '_, '_> {
    /// Compares the struct or enum `their_id` of the blob with `our_id`.
    /// `path` prefixes field names (a group's fields are `group.field`,
    /// reported under the name of the struct that holds the group,
    /// `parent`).
    fn node(
        &mut self,
        their_id: u64,
        our_id: u64,
        path: &str,
        parent: Option<&str>,
    ) -> Result<(), Change> {
        if !self.seen.insert((their_id, our_id)) {
            return Ok(());
        }
        let ours = *self.ours.get(&our_id).ok_or_else(|| Change {
            type_name: format!("{our_id:#018x}"),
            field: None,
            change: "this build's generated code lacks the node".into(),
        })?;
        let name = parent.map_or_else(|| display_name(ours), str::to_string);
        let change = |field: Option<String>, change: String| Change {
            type_name: name.clone(),
            field,
            change,
        };
        let theirs = *self
            .theirs
            .get(&their_id)
            .ok_or_else(|| change(None, format!("the blob carries no node {their_id:#018x}")))?;
        let unreadable = |e: capnp::Error| change(None, format!("unreadable node: {e}"));
        match (
            theirs.which().map_err(|e| unreadable(e.into()))?,
            ours.which().map_err(|e| unreadable(e.into()))?,
        ) {
            (node::Struct(t), node::Struct(o)) => self.structs(&name, t, o, path),
            (node::Enum(t), node::Enum(o)) => {
                let (t, o) = (
                    t.get_enumerants().map_err(unreadable)?,
                    o.get_enumerants().map_err(unreadable)?,
                );
                if self.rule == Rule::Continue && o.len() < t.len() {
                    let lost = t.get(o.len());
                    let lost = lost
                        .get_name()
                        .ok()
                        .and_then(|n| n.to_str().ok())
                        .unwrap_or("?");
                    return Err(change(
                        Some(lost.to_string()),
                        format!(
                            "enumerant removed: the blob's enum has {} enumerants, this build's {}; \
                             enumerants may only be added",
                            t.len(),
                            o.len()
                        ),
                    ));
                }
                Ok(())
            }
            _ => Err(change(
                None,
                "changed kind (struct, enum or other) between the blob and this build".into(),
            )),
        }
    }

    fn structs(
        &mut self,
        name: &str,
        t: node::struct_::Reader<'_>,
        o: node::struct_::Reader<'_>,
        path: &str,
    ) -> Result<(), Change> {
        let change = |field: Option<String>, change: String| Change {
            type_name: name.to_string(),
            field,
            change,
        };
        let unreadable = |e: capnp::Error| change(None, format!("unreadable node: {e}"));
        let (tf, of) = (
            t.get_fields().map_err(unreadable)?,
            o.get_fields().map_err(unreadable)?,
        );
        // Which side is the older: the blob's, for a producer; for a
        // reader, the side with fewer fields.
        let ours_newer = match self.rule {
            Rule::Continue => true,
            Rule::Read => of.len() >= tf.len(),
        };
        let (old, new, old_fields, new_fields) = if ours_newer {
            (t, o, tf.len(), of.len())
        } else {
            (o, t, of.len(), tf.len())
        };
        let sides = |old_v: u32, new_v: u32| -> (u32, u32) {
            if ours_newer {
                (old_v, new_v)
            } else {
                (new_v, old_v)
            }
        };
        if new_fields < old_fields {
            let lost = name_of(tf.get(of.len()));
            return Err(change(
                Some(format!("{path}{lost}")),
                format!(
                    "field removed: the blob's struct has {} fields, this build's {}; \
                     fields may only be added",
                    tf.len(),
                    of.len()
                ),
            ));
        }
        if old.get_discriminant_count() > 0
            && old.get_discriminant_offset() != new.get_discriminant_offset()
        {
            let (blob_v, ours_v) =
                sides(old.get_discriminant_offset(), new.get_discriminant_offset());
            return Err(change(
                None,
                format!("the union's discriminant moved: offset {blob_v} in the blob, {ours_v} in this build"),
            ));
        }
        for i in 0..old_fields.min(new_fields) {
            let (tf, of) = (tf.get(i), of.get(i));
            self.field(name, path, tf, of)?;
        }
        if path.is_empty() {
            // A group shares its parent's sections: sizes are checked once.
            for (what, old_v, new_v) in [
                (
                    "data section",
                    u32::from(old.get_data_word_count()),
                    u32::from(new.get_data_word_count()),
                ),
                (
                    "pointer section",
                    u32::from(old.get_pointer_count()),
                    u32::from(new.get_pointer_count()),
                ),
            ] {
                if new_v < old_v {
                    let (blob_v, ours_v) = sides(old_v, new_v);
                    return Err(change(
                        None,
                        format!(
                            "the struct's {what} shrinks: {blob_v} in the blob, {ours_v} in this \
                             build; a struct may only grow"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        name: &str,
        path: &str,
        t: field::Reader<'_>,
        o: field::Reader<'_>,
    ) -> Result<(), Change> {
        let field = format!("{path}{}", name_of(o));
        let change = |change: String| Change {
            type_name: name.to_string(),
            field: Some(field.clone()),
            change,
        };
        let unreadable = |e: capnp::Error| change(format!("unreadable field: {e}"));
        if t.get_discriminant_value() != o.get_discriminant_value() {
            let show = |d: u16| {
                if d == field::NO_DISCRIMINANT {
                    "outside any union".to_string()
                } else {
                    format!("union member {d}")
                }
            };
            return Err(change(format!(
                "union membership changed: {} in the blob, {} in this build",
                show(t.get_discriminant_value()),
                show(o.get_discriminant_value())
            )));
        }
        match (
            t.which().map_err(|e| unreadable(e.into()))?,
            o.which().map_err(|e| unreadable(e.into()))?,
        ) {
            (field::Slot(ts), field::Slot(os)) => {
                let (tt, ot) = (
                    ts.get_type().map_err(unreadable)?,
                    os.get_type().map_err(unreadable)?,
                );
                // A change inside a nested struct names that struct.
                if let Some((blob_ty, our_ty)) = self.types(tt, ot)? {
                    return Err(change(format!(
                        "type changed: {blob_ty} in the blob, {our_ty} in this build"
                    )));
                }
                if ts.get_offset() != os.get_offset() {
                    return Err(change(format!(
                        "slot moved: offset {} in the blob, {} in this build",
                        ts.get_offset(),
                        os.get_offset()
                    )));
                }
                let (tv, ov) = (
                    ts.get_default_value().map_err(unreadable)?,
                    os.get_default_value().map_err(unreadable)?,
                );
                if !same_value(tv, ov).map_err(unreadable)? {
                    return Err(change(
                        "default value changed (records store values relative to it)".into(),
                    ));
                }
                Ok(())
            }
            (field::Group(tg), field::Group(og)) => self.node(
                tg.get_type_id(),
                og.get_type_id(),
                &format!("{field}."),
                Some(name),
            ),
            (field::Slot(_), field::Group(_)) => Err(change(
                "a field in the blob is a group in this build".into(),
            )),
            (field::Group(_), field::Slot(_)) => Err(change(
                "a group in the blob is a field in this build".into(),
            )),
        }
    }

    /// Compares two slot types: `None` when they are the same (structs
    /// and enums they name compared in turn), else how each side reads.
    fn types(
        &mut self,
        t: type_::Reader<'_>,
        o: type_::Reader<'_>,
    ) -> Result<Option<(String, String)>, Change> {
        let unreadable = |e: capnp::Error| Change {
            type_name: String::new(),
            field: None,
            change: format!("unreadable type: {e}"),
        };
        let (tw, ow) = (
            t.which().map_err(|e| unreadable(e.into()))?,
            o.which().map_err(|e| unreadable(e.into()))?,
        );
        let (theirs, ours) = (self.theirs, self.ours);
        let differ = || Ok(Some((describe(theirs, t), describe(ours, o))));
        match (tw, ow) {
            (type_::List(tl), type_::List(ol)) => {
                let (te, oe) = (
                    tl.get_element_type().map_err(unreadable)?,
                    ol.get_element_type().map_err(unreadable)?,
                );
                match self.types(te, oe)? {
                    None => Ok(None),
                    Some(_) => differ(),
                }
            }
            (type_::Struct(ts), type_::Struct(os)) => {
                if ts.get_type_id() != os.get_type_id() {
                    return differ();
                }
                self.node(ts.get_type_id(), os.get_type_id(), "", None)?;
                Ok(None)
            }
            (type_::Enum(te), type_::Enum(oe)) => {
                if te.get_type_id() != oe.get_type_id() {
                    return differ();
                }
                self.node(te.get_type_id(), oe.get_type_id(), "", None)?;
                Ok(None)
            }
            (type_::Interface(ti), type_::Interface(oi)) => {
                if ti.get_type_id() != oi.get_type_id() {
                    return differ();
                }
                Ok(None)
            }
            (type_::AnyPointer(_), type_::AnyPointer(_)) => Ok(None),
            (tw, ow) => {
                if std::mem::discriminant(&tw) == std::mem::discriminant(&ow)
                    && !matches!(
                        tw,
                        type_::List(_)
                            | type_::Struct(_)
                            | type_::Enum(_)
                            | type_::Interface(_)
                            | type_::AnyPointer(_)
                    )
                {
                    Ok(None)
                } else {
                    differ()
                }
            }
        }
    }
}

/// A type as people read it in a schema file: `UInt32`, `List(Text)`,
/// `Detail` (a struct or enum by its name in `nodes`).
fn describe(nodes: &NodeMap<'_>, t: type_::Reader<'_>) -> String {
    let named = |id: u64| {
        nodes.get(&id).map_or_else(
            || format!("{id:#018x}"),
            |n| {
                let full = display_name(*n);
                full.rsplit(':').next().unwrap_or(&full).to_string()
            },
        )
    };
    match t.which() {
        Ok(type_::Void(())) => "Void".into(),
        Ok(type_::Bool(())) => "Bool".into(),
        Ok(type_::Int8(())) => "Int8".into(),
        Ok(type_::Int16(())) => "Int16".into(),
        Ok(type_::Int32(())) => "Int32".into(),
        Ok(type_::Int64(())) => "Int64".into(),
        Ok(type_::Uint8(())) => "UInt8".into(),
        Ok(type_::Uint16(())) => "UInt16".into(),
        Ok(type_::Uint32(())) => "UInt32".into(),
        Ok(type_::Uint64(())) => "UInt64".into(),
        Ok(type_::Float32(())) => "Float32".into(),
        Ok(type_::Float64(())) => "Float64".into(),
        Ok(type_::Text(())) => "Text".into(),
        Ok(type_::Data(())) => "Data".into(),
        Ok(type_::List(l)) => match l.get_element_type() {
            Ok(e) => format!("List({})", describe(nodes, e)),
            Err(_) => "List(?)".into(),
        },
        Ok(type_::Enum(e)) => named(e.get_type_id()),
        Ok(type_::Struct(s)) => named(s.get_type_id()),
        Ok(type_::Interface(i)) => named(i.get_type_id()),
        Ok(type_::AnyPointer(_)) => "AnyPointer".into(),
        Err(_) => "?".into(),
    }
}

/// Whether two default values are the same: scalars by value (floats by
/// bits), pointers by their canonical bytes.
fn same_value(t: value::Reader<'_>, o: value::Reader<'_>) -> capnp::Result<bool> {
    use value::Which as V;
    Ok(match (t.which()?, o.which()?) {
        (V::Void(()), V::Void(())) | (V::Interface(()), V::Interface(())) => true,
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Int8(a), V::Int8(b)) => a == b,
        (V::Int16(a), V::Int16(b)) => a == b,
        (V::Int32(a), V::Int32(b)) => a == b,
        (V::Int64(a), V::Int64(b)) => a == b,
        (V::Uint8(a), V::Uint8(b)) => a == b,
        (V::Uint16(a), V::Uint16(b)) => a == b,
        (V::Uint32(a), V::Uint32(b)) => a == b,
        (V::Uint64(a), V::Uint64(b)) => a == b,
        (V::Float32(a), V::Float32(b)) => a.to_bits() == b.to_bits(),
        (V::Float64(a), V::Float64(b)) => a.to_bits() == b.to_bits(),
        (V::Enum(a), V::Enum(b)) => a == b,
        (V::Text(a), V::Text(b)) => a?.as_bytes() == b?.as_bytes(),
        (V::Data(a), V::Data(b)) => a? == b?,
        (V::List(a), V::List(b))
        | (V::Struct(a), V::Struct(b))
        | (V::AnyPointer(a), V::AnyPointer(b)) => canonical(a)? == canonical(b)?,
        _ => false,
    })
}

fn canonical(p: capnp::any_pointer::Reader<'_>) -> capnp::Result<Vec<u64>> {
    if p.is_null() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    crate::schema::record::append_canonical(p, None, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Checks record types against the schema nodes `blob`'s header carries:
/// each `(type id, primary key fields)` of `types` (its key as the blob's
/// state names it) with [`check_type`], against this build's `ours`.
pub fn check_blob(
    blob: &crate::schema::blob::OpenBlob,
    ours: &NodeMap<'_>,
    types: &[(u64, Vec<String>)],
    rule: Rule,
) -> Result<(), crate::Error> {
    if types.is_empty() {
        return Ok(());
    }
    blob.with_schema_nodes(|nodes| {
        let theirs: NodeMap<'_> = nodes.iter().map(|n| (n.get_id(), n)).collect();
        for (id, keys) in types {
            check_type(blob.name(), &theirs, ours, *id, keys, rule)?;
        }
        Ok(())
    })
}

/// An identity of a generated struct's code, to cache verdicts by: two
/// generated types of one node id (two versions of a schema linked into
/// one binary) have distinct ones.
pub fn generated_identity(info: &crate::schema::record::TypeInfo) -> usize {
    match info.schema() {
        Some(schema) => {
            let raw: capnp::introspect::RawBrandedStructSchema = schema.into();
            std::ptr::from_ref(raw.generic) as usize
        }
        // A type given by its nodes: the identity of those nodes.
        None => info
            .runtime_nodes()
            .map_or(0, |n| std::ptr::from_ref(n) as *const u8 as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::evolve_v1::evolve_capnp as v1;
    use crate::schema::evolve_v2::evolve_capnp as v2;
    use crate::schema::record::TypeInfo;

    const ITEM: u64 = 0xf1d2_c3b4_a596_8701;
    const KIND: u64 = 0xf1d2_c3b4_a596_8702;

    fn v1_nodes() -> NodeMap<'static> {
        generated_nodes(&[TypeInfo::of::<v1::item::Owned>()])
    }
    fn v2_nodes() -> NodeMap<'static> {
        generated_nodes(&[
            TypeInfo::of::<v2::item::Owned>(),
            TypeInfo::of::<v2::extra::Owned>(),
        ])
    }

    fn check(theirs: &NodeMap<'_>, ours: &NodeMap<'_>, rule: Rule) -> Result<(), SchemaError> {
        check_type("blob", theirs, ours, ITEM, &["id".to_string()], rule)
    }

    /// `node` copied into a message of its own, changed by `edit`.
    fn edited(
        node: node::Reader<'_>,
        edit: impl FnOnce(node::Builder<'_>),
    ) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut message = capnp::message::Builder::new_default();
        message.set_root(node).unwrap();
        edit(message.get_root::<node::Builder<'_>>().unwrap());
        message
    }

    /// Invariant: v2 is a compatible evolution of v1 (a rename, fields,
    /// an enumerant and types added): a v2 producer continues a v1 chain,
    /// and readers of either version read blobs of the other.
    #[test]
    fn v2_continues_and_reads_v1_and_v1_reads_v2() {
        let (old, new) = (v1_nodes(), v2_nodes());
        check(&old, &new, Rule::Continue).unwrap();
        check(&old, &new, Rule::Read).unwrap();
        check(&new, &old, Rule::Read).unwrap();
        check(&new, &new, Rule::Continue).unwrap();
    }

    /// Invariant: an older producer does not continue a newer chain: the
    /// fields it lacks would be dropped from every record it carries.
    #[test]
    fn an_older_producer_is_refused() {
        let err = check(&v2_nodes(), &v1_nodes(), Rule::Continue).unwrap_err();
        assert_eq!(err.type_name, "evolve.capnp:Item");
        assert_eq!(err.field.as_deref(), Some("rating"));
        assert!(err.change.starts_with("field removed"), "{err}");
    }

    /// Invariant: each kind of incompatible change is refused, naming the
    /// type, the field and what changed.
    #[test]
    fn each_incompatible_change_is_named() {
        let ours = v2_nodes();
        let item = ours[&ITEM];
        let refused = |message: &capnp::message::Builder<capnp::message::HeapAllocator>,
                       id: u64,
                       rule: Rule| {
            let mut theirs = ours.clone();
            theirs.insert(id, message.get_root_as_reader().unwrap());
            check(&theirs, &ours, rule).unwrap_err()
        };
        fn slot(n: node::Builder<'_>, i: u32) -> field::Builder<'_> {
            let node::Which::Struct(st) = n.which().unwrap() else {
                unreachable!()
            };
            st.get_fields().unwrap().get(i)
        }

        // `count` (field 2) at another offset.
        let m = edited(item, |n| {
            let f = slot(n, 2);
            let field::Which::Slot(mut s) = f.which().unwrap() else {
                unreachable!()
            };
            s.set_offset(5);
        });
        let err = refused(&m, ITEM, Rule::Read);
        assert_eq!(err.field.as_deref(), Some("count"));
        assert_eq!(
            err.change,
            "slot moved: offset 5 in the blob, 2 in this build"
        );

        // `rating` (field 5) with another default.
        let m = edited(item, |n| {
            let f = slot(n, 5);
            let field::Which::Slot(s) = f.which().unwrap() else {
                unreachable!()
            };
            s.get_default_value().unwrap().set_float32(1.0);
        });
        let err = refused(&m, ITEM, Rule::Read);
        assert_eq!(err.field.as_deref(), Some("rating"));
        assert!(err.change.starts_with("default value changed"), "{err}");

        // `note` (field 6) moved into a union.
        let m = edited(item, |n| {
            slot(n, 6).set_discriminant_value(1);
        });
        let err = refused(&m, ITEM, Rule::Read);
        assert_eq!(err.field.as_deref(), Some("note"));
        assert_eq!(
            err.change,
            "union membership changed: union member 1 in the blob, outside any union in this build"
        );

        // The struct's data section larger in the blob than in this build
        // (with as many fields): this build's struct shrank.
        let m = edited(item, |n| {
            let node::Which::Struct(mut st) = n.which().unwrap() else {
                unreachable!()
            };
            let words = st.reborrow().get_data_word_count();
            st.set_data_word_count(words + 1);
        });
        let err = refused(&m, ITEM, Rule::Continue);
        assert_eq!(err.field, None);
        assert_eq!(
            err.change,
            "the struct's data section shrinks: 4 in the blob, 3 in this build; a struct may only grow"
        );

        // An enumerant the blob's enum has and this build's lacks.
        let old_kind = v1_nodes()[&KIND];
        let mut theirs = ours.clone();
        let mut ours_old_kind = ours.clone();
        ours_old_kind.insert(KIND, old_kind);
        theirs.insert(KIND, ours[&KIND]);
        let err = check(&theirs, &ours_old_kind, Rule::Continue).unwrap_err();
        assert_eq!(err.type_name, "evolve.capnp:Kind");
        assert_eq!(err.field.as_deref(), Some("rare"));
        assert!(err.change.starts_with("enumerant removed"), "{err}");
        // A reader may be older: it reads the new enumerant as unknown.
        check(&theirs, &ours_old_kind, Rule::Read).unwrap();
    }

    /// Invariant: a schema with groups, unions, nested structs, enums,
    /// lists and defaults of every kind is compatible with itself under
    /// both rules (no false refusal), and a change inside a group names
    /// the record type and the field as `group.field`.
    #[test]
    fn groups_unions_and_defaults_compare_equal_to_themselves() {
        use crate::schema::library_capnp::shelf;
        let info = TypeInfo::of::<shelf::Owned>();
        let ours = generated_nodes(std::slice::from_ref(&info));
        let keys = ["id".to_string()];
        for rule in [Rule::Continue, Rule::Read] {
            check_type("blob", &ours, &ours, info.type_id, &keys, rule).unwrap();
        }
        // As a blob carries them: canonical copies, display names made
        // portable, pointer defaults in the blob's own segment.
        let schema = crate::schema::blob::DatasetSchema::of(std::slice::from_ref(&info)).unwrap();
        let head = crate::schema::blob::HeaderInfo::for_test(&schema);
        let bytes = crate::schema::blob::write_snapshot(&head, &[]).unwrap();
        let blob = crate::schema::blob::OpenBlob::from_bytes(&bytes, "snapshot/1").unwrap();
        assert_eq!(blob.header().unwrap().node_count as usize, ours.len());
        for rule in [Rule::Continue, Rule::Read] {
            check_blob(&blob, &ours, &[(info.type_id, keys.to_vec())], rule).unwrap();
        }
        let location = ours
            .values()
            .find(|n| display_name(**n).ends_with("Shelf.location"))
            .copied()
            .unwrap();
        let m = edited(location, |n| {
            let node::Which::Struct(st) = n.which().unwrap() else {
                unreachable!()
            };
            let f = st.get_fields().unwrap().get(1);
            let field::Which::Slot(mut s) = f.which().unwrap() else {
                unreachable!()
            };
            s.set_offset(9);
        });
        let mut theirs = ours.clone();
        theirs.insert(location.get_id(), m.get_root_as_reader().unwrap());
        let err = check_type("blob", &theirs, &ours, info.type_id, &keys, Rule::Read).unwrap_err();
        assert_eq!(err.type_name, "examples/library.capnp:Shelf");
        assert_eq!(err.field.as_deref(), Some("location.row"));
    }

    /// Invariant: a type changed below the record type names the nested
    /// struct and its field.
    #[test]
    fn a_change_in_a_nested_struct_names_it() {
        let ours = v2_nodes();
        let detail = ours
            .values()
            .find(|n| display_name(**n) == "evolve.capnp:Detail")
            .copied()
            .unwrap();
        let m = edited(detail, |n| {
            let node::Which::Struct(st) = n.which().unwrap() else {
                unreachable!()
            };
            let f = st.get_fields().unwrap().get(1);
            let field::Which::Slot(s) = f.which().unwrap() else {
                unreachable!()
            };
            s.get_type().unwrap().set_uint32(());
        });
        let mut theirs = ours.clone();
        theirs.insert(detail.get_id(), m.get_root_as_reader().unwrap());
        let err = check(&theirs, &ours, Rule::Read).unwrap_err();
        assert_eq!(err.type_name, "evolve.capnp:Detail");
        assert_eq!(err.field.as_deref(), Some("weight"));
        assert_eq!(
            err.change,
            "type changed: UInt32 in the blob, UInt16 in this build"
        );
        assert_eq!(
            err.to_string(),
            "blob: type evolve.capnp:Detail, field `weight`: type changed: UInt32 in the blob, \
             UInt16 in this build (an incompatible schema change)"
        );
    }
}
