//! Reading any record of any dataset through the schema nodes its blobs
//! carry (`Header.nodes`), with no generated code.
//!
//! [`DynamicSchema::from_nodes`] turns a header's struct and enum nodes
//! into an owned model (fields, their types, places and defaults, unions,
//! groups, enumerant names); [`DynamicSchema::render`] reads one record in
//! place, from a blob's segment, and renders it as JSON;
//! [`DynamicSchema::render_path`] reads only the field a path names;
//! [`DynamicSchema::key_from_text`] turns a key typed by a person into the
//! canonical key bytes a lookup hashes (see [`key_text`]);
//! [`RecordBuilder`] goes the other way, from JSON (the mapping below) to
//! a record's message, for publishing records with no generated code.
//!
//! # The JSON mapping
//!
//! | Cap'n Proto | JSON |
//! |---|---|
//! | `Void` | `null` |
//! | `Bool` | `true` / `false` |
//! | integers | a number when \|v\| ≤ 2^53, else a string of its decimal digits |
//! | `Float32`, `Float64` | a number (a `Float32` by its shortest text); NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `Text` | a string (bytes that are not UTF-8 replaced by U+FFFD) |
//! | `Data` | a string, standard base64 with padding |
//! | `List(T)` | an array |
//! | enum | the enumerant's name; a number the schema does not name, as a number |
//! | struct, group | an object, fields in the order of the source |
//! | union | only its active member, as a field of the object holding the union; a discriminant the schema does not know, left out |
//! | `AnyPointer` | `null` when null, else `{"$anyPointer": "struct" \| "list"}` |
//!
//! A null pointer reads as the field's default; without one, `Text` and
//! `Data` as `""`, a list as `[]`, and a struct as `null` (not the struct
//! of defaults a generated getter returns: a struct may contain itself).
//! A scalar is stored XORed with its default, as Cap'n Proto lays them
//! out.
//!
//! # Paths
//!
//! A path names a field inside a record: field names joined by dots, list
//! elements by their index (`favourite.title`, `tags.0`, `location.row`).
//! A union member that is not the active one is an error saying which
//! member is.
//!
//! # Hostile bytes
//!
//! Every pointer is bounds-checked against the segment it is read from,
//! nesting is bounded ([`Limits::max_depth`]) and so is the work of one
//! read ([`Limits::max_units`]: words read plus elements visited, so that
//! many pointers to one large object cannot multiply the work without
//! bound). A read past either bound, a pointer out of bounds, a list of
//! another element size than its type needs, are [`DynamicError`]s naming
//! the field path where they were found; nothing panics.

mod build;
mod json;
pub mod key_text;
mod walk;

use capnp::schema_capnp::{field, node, type_, value};
use std::collections::HashMap;
use std::sync::Arc;

pub use build::{BuildError, BuildOptions, RecordBuilder};
pub use json::{diff_values, RecordRef};
pub use walk::Limits;

/// Why a record or a schema could not be read dynamically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DynamicError {
    /// A schema node cannot be modelled: a missing node, a generic type,
    /// a bad type or default.
    #[error("schema node {node}: {reason}")]
    Schema {
        /// The node (display name and id).
        node: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A type is not among the schema's record structs.
    #[error("no struct {type_id:#018x} in the blob's schema nodes")]
    UnknownStruct {
        /// The struct's node id.
        type_id: u64,
    },
    /// The record's bytes are not what its schema says (a pointer out of
    /// bounds, a list of another element size, a far pointer to another
    /// segment, ...).
    #[error("at {path}: {reason}")]
    Bytes {
        /// Where in the record (`$` is the record itself).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The read nested deeper than [`Limits::max_depth`].
    #[error("at {path}: nested deeper than {limit} objects")]
    TooDeep {
        /// Where in the record.
        path: String,
        /// The limit.
        limit: u32,
    },
    /// The read did more work than [`Limits::max_units`] allows.
    #[error("at {path}: reading the record takes more than {limit} words and elements")]
    TooMuchWork {
        /// Where in the record.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// A path names no field or element of the record.
    #[error("path {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// Which step failed and why.
        reason: String,
    },
    /// A key given as text does not fit the type's key fields.
    #[error("bad key {key:?} for {type_name} (key {fields}): {reason}")]
    BadKey {
        /// The key as given.
        key: String,
        /// The record type.
        type_name: String,
        /// The type's key fields, comma-separated.
        fields: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A field's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// `Void`.
    Void,
    /// `Bool`.
    Bool,
    /// `Int8`.
    Int8,
    /// `Int16`.
    Int16,
    /// `Int32`.
    Int32,
    /// `Int64`.
    Int64,
    /// `UInt8`.
    UInt8,
    /// `UInt16`.
    UInt16,
    /// `UInt32`.
    UInt32,
    /// `UInt64`.
    UInt64,
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `Text`.
    Text,
    /// `Data`.
    Data,
    /// `List(T)`.
    List(Box<Ty>),
    /// An enum, by node id.
    Enum(u64),
    /// A struct, by node id.
    Struct(u64),
    /// `AnyPointer` (and its constrained forms), or a capability.
    AnyPointer,
}

impl Ty {
    /// Bits of a scalar in a data section or a list; `None` for a pointer.
    fn bits(&self) -> Option<u32> {
        Some(match self {
            Ty::Void => 0,
            Ty::Bool => 1,
            Ty::Int8 | Ty::UInt8 => 8,
            Ty::Int16 | Ty::UInt16 | Ty::Enum(_) => 16,
            Ty::Int32 | Ty::UInt32 | Ty::Float32 => 32,
            Ty::Int64 | Ty::UInt64 | Ty::Float64 => 64,
            _ => return None,
        })
    }
}

/// A field's default.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Default {
    /// A scalar's raw bits (what its stored bits are XORed with).
    Bits(u64),
    /// A pointer field's default value as a canonical message (the root
    /// pointer in word 0); `None` when the default is null.
    Pointer(Option<Arc<[u64]>>),
}

/// How a field is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldKind {
    /// In a slot: the data section (scalars, at `offset` counted in the
    /// type's width) or the pointer section (pointer `offset`).
    Slot {
        offset: u32,
        ty: Ty,
        default: Default,
    },
    /// A group: its fields live in the same struct, described by node `id`.
    Group(u64),
}

/// One field of a struct or group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    /// The union discriminant value that makes this field active; `None`
    /// outside the union.
    discriminant: Option<u16>,
    kind: FieldKind,
}

/// A struct or group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StructDecl {
    name: String,
    /// Where the union's discriminant is, in 16-bit units of the data
    /// section; meaningful when `has_union`.
    discriminant_offset: u32,
    has_union: bool,
    /// The struct's data section, in words (a group's: its struct's).
    data_words: u16,
    /// The struct's pointer section, in pointers (a group's: its struct's).
    ptr_count: u16,
    /// Fields in code order.
    fields: Vec<Field>,
}

/// An enum's enumerant names, by value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnumDecl {
    /// The enum's display name.
    name: String,
    names: Vec<String>,
}

/// The struct and enum nodes of one header, modelled for reading records.
#[derive(Debug, Clone, Default)]
pub struct DynamicSchema {
    structs: HashMap<u64, StructDecl>,
    enums: HashMap<u64, EnumDecl>,
    limits: Limits,
}

/// A node as errors name it.
fn label(n: node::Reader<'_>) -> String {
    let name = n
        .get_display_name()
        .ok()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("(unnamed)");
    format!("{name} (@{:#018x})", n.get_id())
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, String> {
    t.map_err(|e| e.to_string())?
        .to_string()
        .map_err(|e| e.to_string())
}

impl DynamicSchema {
    /// Models every struct and enum node in `nodes` (a header's
    /// `nodes`). Nodes of other kinds are ignored; a struct or enum that
    /// cannot be modelled is an error naming it.
    pub fn from_nodes(
        nodes: capnp::struct_list::Reader<'_, node::Owned>,
    ) -> Result<Self, DynamicError> {
        Self::from_node_iter(nodes.iter())
    }

    /// The schema of record types `types` (generated, or given by their
    /// nodes at run time): their nodes and every node their fields reach,
    /// as a producer of them writes into its headers.
    pub fn of_types(types: &[crate::schema::record::TypeInfo]) -> Result<Self, DynamicError> {
        let dataset =
            crate::schema::blob::DatasetSchema::of(types).map_err(|e| DynamicError::Schema {
                node: types
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })?;
        let messages = dataset.node_messages();
        let mut nodes = Vec::with_capacity(messages.len());
        for m in &messages {
            nodes.push(
                m.get_root::<node::Reader<'_>>()
                    .map_err(|e| DynamicError::Schema {
                        node: "(a node of the dataset's schema)".into(),
                        reason: e.to_string(),
                    })?,
            );
        }
        Self::from_node_iter(nodes)
    }

    fn from_node_iter<'n>(
        nodes: impl IntoIterator<Item = node::Reader<'n>>,
    ) -> Result<Self, DynamicError> {
        let mut schema = DynamicSchema::default();
        for n in nodes {
            let bad = |reason: String| DynamicError::Schema {
                node: label(n),
                reason,
            };
            match n.which().map_err(|e| bad(e.to_string()))? {
                node::Struct(st) => {
                    if n.get_is_generic() {
                        return Err(bad("a generic struct".into()));
                    }
                    let mut fields = Vec::new();
                    let list = st.get_fields().map_err(|e| bad(e.to_string()))?;
                    let mut ordered: Vec<_> = list.iter().collect();
                    ordered.sort_by_key(|f| f.get_code_order());
                    for f in ordered {
                        fields.push(model_field(f).map_err(&bad)?);
                    }
                    let decl = StructDecl {
                        name: text(n.get_display_name()).map_err(&bad)?,
                        discriminant_offset: st.get_discriminant_offset(),
                        has_union: st.get_discriminant_count() > 0,
                        data_words: st.get_data_word_count(),
                        ptr_count: st.get_pointer_count(),
                        fields,
                    };
                    schema.structs.insert(n.get_id(), decl);
                }
                node::Enum(en) => {
                    let list = en.get_enumerants().map_err(|e| bad(e.to_string()))?;
                    let names = list
                        .iter()
                        .map(|e| text(e.get_name()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&bad)?;
                    let name = text(n.get_display_name()).map_err(&bad)?;
                    schema.enums.insert(n.get_id(), EnumDecl { name, names });
                }
                _ => {}
            }
        }
        schema.check_references()?;
        Ok(schema)
    }

    /// The same schema, reading within `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// This schema with `newer`'s nodes over its own (a node in both:
    /// `newer`'s).
    pub fn merged(mut self, newer: DynamicSchema) -> Self {
        self.structs.extend(newer.structs);
        self.enums.extend(newer.enums);
        self
    }

    /// Every struct and enum a field names is in the schema.
    fn check_references(&self) -> Result<(), DynamicError> {
        fn check(schema: &DynamicSchema, owner: &StructDecl, ty: &Ty) -> Result<(), DynamicError> {
            let missing = |what: &str, id: u64| DynamicError::Schema {
                node: owner.name.clone(),
                reason: format!("a field's {what} {id:#018x} is not among the nodes"),
            };
            match ty {
                Ty::Struct(id) if !schema.structs.contains_key(id) => Err(missing("struct", *id)),
                Ty::Enum(id) if !schema.enums.contains_key(id) => Err(missing("enum", *id)),
                Ty::List(inner) => check(schema, owner, inner),
                _ => Ok(()),
            }
        }
        for decl in self.structs.values() {
            for f in &decl.fields {
                match &f.kind {
                    FieldKind::Slot { ty, .. } => check(self, decl, ty)?,
                    FieldKind::Group(id) if !self.structs.contains_key(id) => {
                        return Err(DynamicError::Schema {
                            node: decl.name.clone(),
                            reason: format!(
                                "group {}'s node {id:#018x} is not among the nodes",
                                f.name
                            ),
                        })
                    }
                    FieldKind::Group(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Whether struct `type_id` is in the schema.
    pub fn has_struct(&self, type_id: u64) -> bool {
        self.structs.contains_key(&type_id)
    }

    /// Struct `type_id`'s field `name` (key fields are looked up by it).
    fn slot_field(&self, type_id: u64, name: &str) -> Option<&Field> {
        self.structs
            .get(&type_id)?
            .fields
            .iter()
            .find(|f| f.name == name)
    }

    /// The enumerant names of enum `id` (empty for an unknown enum).
    fn enumerants(&self, id: u64) -> &[String] {
        self.enums.get(&id).map_or(&[], |e| &e.names[..])
    }
}

/// Models one field of a struct or group node.
fn model_field(f: field::Reader<'_>) -> Result<Field, String> {
    let name = text(f.get_name())?;
    let bad = |why: String| format!("field {name}: {why}");
    let discriminant = match f.get_discriminant_value() {
        field::NO_DISCRIMINANT => None,
        d => Some(d),
    };
    let kind = match f.which().map_err(|e| bad(e.to_string()))? {
        field::Group(g) => FieldKind::Group(g.get_type_id()),
        field::Slot(slot) => {
            let ty =
                model_type(slot.get_type().map_err(|e| bad(e.to_string()))?, 0).map_err(&bad)?;
            let v = slot.get_default_value().map_err(|e| bad(e.to_string()))?;
            let default = model_default(&ty, v).map_err(&bad)?;
            FieldKind::Slot {
                offset: slot.get_offset(),
                ty,
                default,
            }
        }
    };
    Ok(Field {
        name,
        discriminant,
        kind,
    })
}

/// The deepest `List(List(...))` a schema may declare.
const MAX_TYPE_DEPTH: u32 = 64;

fn model_type(t: type_::Reader<'_>, depth: u32) -> Result<Ty, String> {
    if depth > MAX_TYPE_DEPTH {
        return Err(format!("lists nest deeper than {MAX_TYPE_DEPTH}"));
    }
    Ok(match t.which().map_err(|e| e.to_string())? {
        type_::Void(()) => Ty::Void,
        type_::Bool(()) => Ty::Bool,
        type_::Int8(()) => Ty::Int8,
        type_::Int16(()) => Ty::Int16,
        type_::Int32(()) => Ty::Int32,
        type_::Int64(()) => Ty::Int64,
        type_::Uint8(()) => Ty::UInt8,
        type_::Uint16(()) => Ty::UInt16,
        type_::Uint32(()) => Ty::UInt32,
        type_::Uint64(()) => Ty::UInt64,
        type_::Float32(()) => Ty::Float32,
        type_::Float64(()) => Ty::Float64,
        type_::Text(()) => Ty::Text,
        type_::Data(()) => Ty::Data,
        type_::List(l) => Ty::List(Box::new(model_type(
            l.get_element_type().map_err(|e| e.to_string())?,
            depth + 1,
        )?)),
        type_::Enum(e) => Ty::Enum(e.get_type_id()),
        type_::Struct(s) => Ty::Struct(s.get_type_id()),
        type_::Interface(_) | type_::AnyPointer(_) => Ty::AnyPointer,
    })
}

fn model_default(ty: &Ty, v: value::Reader<'_>) -> Result<Default, String> {
    let pointer = |p: capnp::any_pointer::Reader<'_>| -> Result<Default, String> {
        if p.is_null() {
            return Ok(Default::Pointer(None));
        }
        let mut words = Vec::new();
        crate::schema::record::append_canonical(p, None, &mut Vec::new(), &mut words)
            .map_err(|e| format!("its default value: {e}"))?;
        Ok(Default::Pointer(Some(words.into())))
    };
    let bytes_message = |bytes: &[u8], text: bool| -> Default {
        // A canonical message of one byte list (text with its NUL).
        let len = bytes.len() + usize::from(text);
        let mut words = vec![crate::schema::wire::Ptr::to_list(0, 2, len as u32)];
        let mut body = bytes.to_vec();
        body.resize(len.div_ceil(8) * 8, 0);
        words.extend(
            body.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        );
        Default::Pointer(Some(words.into()))
    };
    let e = |err: capnp::Error| err.to_string();
    Ok(match v.which().map_err(|e| e.to_string())? {
        value::Void(()) => Default::Bits(0),
        value::Bool(b) => Default::Bits(u64::from(b)),
        value::Int8(x) => Default::Bits(x as u8 as u64),
        value::Int16(x) => Default::Bits(x as u16 as u64),
        value::Int32(x) => Default::Bits(x as u32 as u64),
        value::Int64(x) => Default::Bits(x as u64),
        value::Uint8(x) => Default::Bits(u64::from(x)),
        value::Uint16(x) | value::Enum(x) => Default::Bits(u64::from(x)),
        value::Uint32(x) => Default::Bits(u64::from(x)),
        value::Uint64(x) => Default::Bits(x),
        value::Float32(x) => Default::Bits(u64::from(x.to_bits())),
        value::Float64(x) => Default::Bits(x.to_bits()),
        value::Text(t) if v.has_text() => bytes_message(t.map_err(e)?.as_bytes(), true),
        value::Data(d) if v.has_data() => bytes_message(d.map_err(e)?, false),
        value::Text(_) | value::Data(_) | value::Interface(()) => Default::Pointer(None),
        value::List(p) | value::Struct(p) | value::AnyPointer(p) => {
            if ty.bits().is_some() {
                return Err("a pointer default for a scalar".into());
            }
            pointer(p)?
        }
    })
}

#[cfg(test)]
mod tests;
