//! Primary keys: resolving key fields, encoding keys, hashing them.
//!
//! A primary key is one or more fields of the record's struct, resolved by
//! name against the generated schema when a producer or a view is built.
//! Key fields must be integers, booleans, enums, text or data, outside any
//! union. A key's canonical bytes are its fields in key order: integers as
//! 8 little-endian bytes (signed as i64, unsigned and enums as u64), a bool
//! as one byte, text and data as a u32 little-endian length and the bytes.
//! The key hash is the xxh3-64 of those bytes; the same encoding is used by
//! the producer (from records, [`KeySpec::encode_words`] and
//! [`ResolvedKey::encode_record`]) and by consumers (from query values,
//! [`Key`] through [`QueryEncoder`]), so the two can never disagree.

use crate::error::KeyError;
use crate::schema::node_key::NodeKey;
use crate::schema::record::{words_as_bytes, TypeInfo, TypeSource};
use capnp::dynamic_value;
use capnp::schema::{Field, StructSchema};

/// How one key field is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A `Bool` field: one byte, 0 or 1.
    Bool,
    /// A signed integer field, with its type's range.
    Signed {
        /// The smallest value of the field's type.
        min: i64,
        /// The largest value of the field's type.
        max: i64,
    },
    /// An unsigned integer field, with its type's largest value.
    Unsigned {
        /// The largest value of the field's type.
        max: u64,
    },
    /// A `Text` field: its UTF-8 bytes.
    Text,
    /// A `Data` field: its bytes.
    Data,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Bool => "Bool",
            KeyKind::Signed { .. } => "a signed integer",
            KeyKind::Unsigned { .. } => "an unsigned integer or enum",
            KeyKind::Text => "Text",
            KeyKind::Data => "Data",
        }
    }
}

/// A type's primary key, resolved against its schema: field indices, their
/// kinds and names.
#[derive(Clone)]
pub struct KeySpec {
    fields: Vec<(u16, KeyKind, String)>,
    /// The generated schema, for reading keys by reflection; `None` for a
    /// type given by its nodes at run time, whose keys `node_key` reads.
    schema_fn: Option<fn() -> StructSchema>,
    node_key: Option<NodeKey>,
    direct: Option<DirectKey>,
}

/// A key of one integer or enum field, read straight from a record's data
/// section: the fast path of key extraction, with no reflection. Records
/// whose root is not a plain struct pointer fall back to reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirectKey {
    /// Byte offset of the field within the struct's data section.
    byte_offset: usize,
    /// Field width in bytes: 1, 2, 4 or 8.
    width: usize,
    /// `byte_offset / width`: the field's index as Cap'n Proto numbers
    /// data fields of its width.
    index: usize,
    signed: bool,
    /// The field's default value, as raw little-endian bits (Cap'n Proto
    /// stores fields XORed with their defaults).
    default_bits: u64,
}

impl DirectKey {
    fn of(field: capnp::schema_capnp::field::Reader<'_>, kind: KeyKind) -> Option<DirectKey> {
        use capnp::schema_capnp::{field, type_, value};
        let field::Slot(slot) = field.which().ok()? else {
            return None;
        };
        let width = match slot.get_type().ok()?.which().ok()? {
            type_::Int8(()) | type_::Uint8(()) => 1,
            type_::Int16(()) | type_::Uint16(()) | type_::Enum(_) => 2,
            type_::Int32(()) | type_::Uint32(()) => 4,
            type_::Int64(()) | type_::Uint64(()) => 8,
            _ => return None,
        };
        let default_bits = match slot.get_default_value().ok()?.which().ok()? {
            value::Int8(v) => v as u8 as u64,
            value::Int16(v) => v as u16 as u64,
            value::Int32(v) => v as u32 as u64,
            value::Int64(v) => v as u64,
            value::Uint8(v) => u64::from(v),
            value::Uint16(v) | value::Enum(v) => u64::from(v),
            value::Uint32(v) => u64::from(v),
            value::Uint64(v) => v,
            _ => return None,
        };
        Some(DirectKey {
            byte_offset: slot.get_offset() as usize * width,
            width,
            index: slot.get_offset() as usize,
            signed: matches!(kind, KeyKind::Signed { .. }),
            default_bits,
        })
    }

    /// The key bytes of a record, or `None` when the record's root is not a
    /// plain struct pointer inside the record (reflection then decides).
    #[inline]
    fn read(&self, words: &[u64]) -> Option<[u8; 8]> {
        let root = *words.first()?;
        if root & 3 != 0 {
            return None; // a far pointer, a list or a capability: not ours
        }
        let offset = i64::from((root as u32 as i32) >> 2);
        let data_words = (root >> 32) as u16 as usize;
        let mut raw = 0u64;
        if root != 0 && self.byte_offset + self.width <= data_words * 8 {
            let start = usize::try_from(1 + offset).ok()? * 8 + self.byte_offset;
            let bytes = words_as_bytes(words).get(start..start + self.width)?;
            let mut buf = [0u8; 8];
            buf[..self.width].copy_from_slice(bytes);
            raw = u64::from_le_bytes(buf);
        }
        Some(self.finish(raw).to_le_bytes())
    }

    /// The key value of a field's raw bits: its default applied (Cap'n
    /// Proto stores fields XORed with their defaults) and sign-extended.
    #[inline]
    fn finish(&self, raw: u64) -> u64 {
        let raw = raw ^ self.default_bits;
        if self.signed {
            let shift = 64 - 8 * self.width as u32;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        }
    }
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl KeySpec {
    /// Resolves `names` against `info`'s schema. Errors name the field and
    /// say why it cannot be a key.
    pub fn resolve(info: &TypeInfo, names: &[&str]) -> Result<KeySpec, KeyError> {
        Self::resolve_with(info, names, false)
    }

    /// The spec of a secondary index's values over `names`
    /// ([`crate::schema::index`]): as a key, but a field that is a list of
    /// scalars stands for one element of it. What an index lookup encodes
    /// its query with.
    pub fn resolve_index(info: &TypeInfo, names: &[&str]) -> Result<KeySpec, KeyError> {
        let mut spec = Self::resolve_with(info, names, true)?;
        spec.direct = None;
        Ok(spec)
    }

    fn resolve_with(info: &TypeInfo, names: &[&str], lists: bool) -> Result<KeySpec, KeyError> {
        let spec_error = |field: &str, reason: String| KeyError::Spec {
            type_name: info.name.clone(),
            field: field.to_string(),
            reason,
        };
        if names.is_empty() {
            return Err(spec_error(
                "",
                "a primary key needs at least one field".into(),
            ));
        }
        let (fields, direct) = info
            .with_node(|node| Self::resolve_in_node(info, node, names, lists))
            .map_err(|e| spec_error(names[0], format!("cannot read the schema: {e}")))??;
        let (schema_fn, node_key) = match &info.source {
            TypeSource::Generated(f) => (Some(*f), None),
            TypeSource::Nodes(_) => {
                let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                let key = info
                    .with_node(|node| NodeKey::resolve(node, &owned))
                    .map_err(|e| spec_error(names[0], format!("cannot read the schema: {e}")))?
                    .map_err(|reason| spec_error(names[0], reason))?;
                (None, (!lists).then_some(key))
            }
        };
        Ok(KeySpec {
            fields,
            schema_fn,
            node_key,
            direct,
        })
    }

    /// The key fields of `names` in the struct `node`, and the direct
    /// reading of a key of one integer or enum field.
    #[allow(clippy::type_complexity)]
    fn resolve_in_node(
        info: &TypeInfo,
        node: capnp::schema_capnp::node::Reader<'_>,
        names: &[&str],
        lists: bool,
    ) -> Result<(Vec<(u16, KeyKind, String)>, Option<DirectKey>), KeyError> {
        use capnp::schema_capnp::{field, node, type_};
        let schema_error = |name: &str, e: capnp::Error| KeyError::Spec {
            type_name: info.name.clone(),
            field: name.to_string(),
            reason: format!("cannot read the schema: {e}"),
        };
        let node::Struct(st) = node.which().map_err(|e| schema_error(names[0], e.into()))? else {
            return Err(KeyError::Spec {
                type_name: info.name.clone(),
                field: names[0].to_string(),
                reason: "the type's node is not a struct".into(),
            });
        };
        let all = st.get_fields().map_err(|e| schema_error(names[0], e))?;
        let mut fields = Vec::with_capacity(names.len());
        for (i, &name) in names.iter().enumerate() {
            let bad = |reason: String| KeyError::Spec {
                type_name: info.name.clone(),
                field: name.to_string(),
                reason,
            };
            if names[..i].contains(&name) {
                return Err(bad("named twice in the key".into()));
            }
            let (index, field) = all
                .iter()
                .enumerate()
                .find(|(_, f)| f.get_name().ok().and_then(|n| n.to_str().ok()) == Some(name))
                .ok_or_else(|| bad("no such field".into()))?;
            if field.get_discriminant_value() != field::NO_DISCRIMINANT {
                return Err(bad("is a union member, so it may be absent".into()));
            }
            let not_scalar = || bad("is not an integer, bool, enum, text or data field".into());
            let field::Slot(slot) = field.which().map_err(|e| schema_error(name, e.into()))? else {
                return Err(not_scalar());
            };
            let mut ty = slot.get_type().map_err(|e| schema_error(name, e))?;
            if lists {
                if let type_::List(l) = ty.which().map_err(|e| schema_error(name, e.into()))? {
                    ty = l.get_element_type().map_err(|e| schema_error(name, e))?;
                }
            }
            let kind = match ty.which().map_err(|e| schema_error(name, e.into()))? {
                type_::Bool(()) => KeyKind::Bool,
                type_::Int8(()) => KeyKind::Signed {
                    min: i8::MIN.into(),
                    max: i8::MAX.into(),
                },
                type_::Int16(()) => KeyKind::Signed {
                    min: i16::MIN.into(),
                    max: i16::MAX.into(),
                },
                type_::Int32(()) => KeyKind::Signed {
                    min: i32::MIN.into(),
                    max: i32::MAX.into(),
                },
                type_::Int64(()) => KeyKind::Signed {
                    min: i64::MIN,
                    max: i64::MAX,
                },
                type_::Uint8(()) => KeyKind::Unsigned {
                    max: u8::MAX.into(),
                },
                type_::Uint16(()) | type_::Enum(_) => KeyKind::Unsigned {
                    max: u16::MAX.into(),
                },
                type_::Uint32(()) => KeyKind::Unsigned {
                    max: u32::MAX.into(),
                },
                type_::Uint64(()) => KeyKind::Unsigned { max: u64::MAX },
                type_::Text(()) => KeyKind::Text,
                type_::Data(()) => KeyKind::Data,
                type_::Float32(()) | type_::Float64(()) => {
                    return Err(bad(
                        "is a floating-point field; floats cannot be primary keys".into(),
                    ))
                }
                _ => return Err(not_scalar()),
            };
            fields.push((index as u16, kind, name.to_string()));
        }
        let direct = match fields.as_slice() {
            [(index, kind, _)] => DirectKey::of(all.get(u32::from(*index)), *kind),
            _ => None,
        };
        Ok((fields, direct))
    }

    /// Appends the key bytes of the canonical record `words` to `out` by
    /// the type's schema node, for a type given by its nodes at run time
    /// (it has no generated code to reflect on). `None` for a generated
    /// type. Errors say why the record's key cannot be read.
    pub fn encode_by_node(&self, words: &[u64], out: &mut KeyBuf) -> Option<Result<(), String>> {
        let key = self.node_key.as_ref()?;
        let mut bytes = Vec::new();
        Some(key.encode(words, &mut bytes).map(|()| out.push(&bytes)))
    }

    /// Appends the key bytes of the canonical record `words` to `out`
    /// without reflection, when the key is one integer or enum field and
    /// the record is laid out plainly. Returns `false` (and appends
    /// nothing) otherwise: the caller then reads the key with
    /// [`ResolvedKey::encode_record`].
    #[inline]
    pub fn encode_words(&self, words: &[u64], out: &mut KeyBuf) -> bool {
        match self.direct.and_then(|d| d.read(words)) {
            Some(bytes) => {
                out.push(&bytes);
                true
            }
            None => false,
        }
    }

    /// Whether the record `reader` (a struct read in place, e.g. a list
    /// element) has the key `query`, the key's one integer or enum value
    /// (its 8 canonical bytes, little-endian), read straight from the
    /// data section: a load, a mask and a compare. `None` when the key is
    /// not one such field (the caller then reads the key with
    /// [`ResolvedKey::encode_record`]).
    #[inline]
    pub fn matches_direct(
        &self,
        reader: &capnp::private::layout::StructReader<'_>,
        query: u64,
    ) -> Option<bool> {
        let d = self.direct.as_ref()?;
        let at = d.index;
        let raw = match d.width {
            1 => u64::from(reader.get_data_field::<u8>(at)),
            2 => u64::from(reader.get_data_field::<u16>(at)),
            4 => u64::from(reader.get_data_field::<u32>(at)),
            _ => reader.get_data_field::<u64>(at),
        };
        Some(d.finish(raw) == query)
    }

    /// Whether the key is one integer or enum field read straight from the
    /// data section ([`Self::matches_direct`] answers every candidate).
    #[inline]
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The key's fields as schema handles, for reading them from records.
    /// A type given by its nodes at run time has none (its keys are read
    /// by [`Self::encode_by_node`]).
    pub fn resolved(&self) -> capnp::Result<ResolvedKey> {
        let schema_fn = self.schema_fn.ok_or_else(|| {
            capnp::Error::failed(
                "a type given by its schema nodes has no generated code to read keys with".into(),
            )
        })?;
        let list = schema_fn().get_fields()?;
        Ok(ResolvedKey {
            fields: self.fields.iter().map(|(i, _, _)| list.get(*i)).collect(),
        })
    }

    /// The key's field names, in key order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(_, _, n)| n.as_str())
    }

    /// Encodes a query key given by a caller, checking it against the key's
    /// fields (count, kinds, ranges).
    pub fn encode_query<K: Key + ?Sized>(
        &self,
        type_name: &str,
        key: &K,
        out: &mut KeyBuf,
    ) -> Result<(), KeyError> {
        let mut encoder = QueryEncoder {
            spec: self,
            type_name,
            next: 0,
            out,
        };
        key.encode(&mut encoder)?;
        if encoder.next != self.fields.len() {
            return Err(KeyError::Query {
                type_name: type_name.to_string(),
                reason: format!(
                    "the key has {} field(s) ({}), the value gave {}",
                    self.fields.len(),
                    self.names().collect::<Vec<_>>().join(", "),
                    encoder.next
                ),
            });
        }
        Ok(())
    }

    /// Renders canonical key bytes for messages, e.g. `id=42`.
    pub fn render(&self, mut bytes: &[u8]) -> String {
        let mut parts = Vec::new();
        for (_, kind, name) in &self.fields {
            let value = match kind {
                KeyKind::Bool if !bytes.is_empty() => {
                    let v = bytes[0] != 0;
                    bytes = &bytes[1..];
                    v.to_string()
                }
                KeyKind::Signed { .. } | KeyKind::Unsigned { .. } if bytes.len() >= 8 => {
                    let raw: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
                    bytes = &bytes[8..];
                    if matches!(kind, KeyKind::Signed { .. }) {
                        i64::from_le_bytes(raw).to_string()
                    } else {
                        u64::from_le_bytes(raw).to_string()
                    }
                }
                KeyKind::Text | KeyKind::Data if bytes.len() >= 4 => {
                    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
                    let end = (4 + len).min(bytes.len());
                    let v = &bytes[4..end];
                    bytes = &bytes[end..];
                    if *kind == KeyKind::Text {
                        format!("{:?}", String::from_utf8_lossy(v))
                    } else {
                        format!("{v:02x?}")
                    }
                }
                _ => "?".to_string(),
            };
            parts.push(format!("{name}={value}"));
        }
        parts.join(", ")
    }
}

/// A [`KeySpec`]'s fields as schema handles (not `Send`: make one per
/// thread or view).
pub struct ResolvedKey {
    fields: Vec<Field>,
}

impl ResolvedKey {
    /// Appends the canonical key bytes of `record` to `out`.
    pub fn encode_record(
        &self,
        record: capnp::dynamic_struct::Reader<'_>,
        out: &mut KeyBuf,
    ) -> capnp::Result<()> {
        for field in &self.fields {
            match record.get(*field)? {
                dynamic_value::Reader::Bool(b) => out.push(&[b as u8]),
                dynamic_value::Reader::Int8(v) => out.push(&i64::from(v).to_le_bytes()),
                dynamic_value::Reader::Int16(v) => out.push(&i64::from(v).to_le_bytes()),
                dynamic_value::Reader::Int32(v) => out.push(&i64::from(v).to_le_bytes()),
                dynamic_value::Reader::Int64(v) => out.push(&v.to_le_bytes()),
                dynamic_value::Reader::UInt8(v) => out.push(&u64::from(v).to_le_bytes()),
                dynamic_value::Reader::UInt16(v) => out.push(&u64::from(v).to_le_bytes()),
                dynamic_value::Reader::UInt32(v) => out.push(&u64::from(v).to_le_bytes()),
                dynamic_value::Reader::UInt64(v) => out.push(&v.to_le_bytes()),
                dynamic_value::Reader::Enum(e) => out.push(&u64::from(e.get_value()).to_le_bytes()),
                dynamic_value::Reader::Text(t) => out.push_sized(t.as_bytes()),
                dynamic_value::Reader::Data(d) => out.push_sized(d),
                _ => {
                    return Err(capnp::Error::failed(
                        "key field changed kind under the schema".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// One value of a query key.
#[derive(Debug, Clone, Copy)]
pub enum KeyPart<'a> {
    /// Any integer (checked against the field's range).
    Int(i128),
    /// A bool.
    Bool(bool),
    /// A text.
    Text(&'a str),
    /// Bytes.
    Data(&'a [u8]),
}

/// Checks each part of a query key against its field and encodes it.
pub struct QueryEncoder<'s, 'o> {
    spec: &'s KeySpec,
    type_name: &'s str,
    next: usize,
    out: &'o mut KeyBuf,
}

impl QueryEncoder<'_, '_> {
    /// Encodes the next part of the key.
    pub fn push(&mut self, part: KeyPart<'_>) -> Result<(), KeyError> {
        let Some((_, kind, name)) = self.spec.fields.get(self.next) else {
            return Err(KeyError::Query {
                type_name: self.type_name.to_string(),
                reason: format!(
                    "the key has {} field(s), the value gave more",
                    self.spec.fields.len()
                ),
            });
        };
        let mismatch = |what: String| KeyError::Query {
            type_name: self.type_name.to_string(),
            reason: format!("field {name} is {}; {what}", kind.describe()),
        };
        match (*kind, part) {
            (KeyKind::Bool, KeyPart::Bool(b)) => self.out.push(&[b as u8]),
            (KeyKind::Signed { min, max }, KeyPart::Int(v)) => {
                if v < i128::from(min) || v > i128::from(max) {
                    return Err(mismatch(format!("{v} is out of its range")));
                }
                self.out.push(&(v as i64).to_le_bytes())
            }
            (KeyKind::Unsigned { max }, KeyPart::Int(v)) => {
                if v < 0 || v > i128::from(max) {
                    return Err(mismatch(format!("{v} is out of its range")));
                }
                self.out.push(&(v as u64).to_le_bytes())
            }
            (KeyKind::Text, KeyPart::Text(t)) => self.out.push_sized(t.as_bytes()),
            (KeyKind::Data, KeyPart::Data(d)) => self.out.push_sized(d),
            (_, part) => return Err(mismatch(format!("got {part:?}"))),
        }
        self.next += 1;
        Ok(())
    }
}

/// A value that can be looked up as a primary key: integers, bools, strings,
/// byte slices, and tuples of them for compound keys.
pub trait Key {
    /// Pushes this key's parts, in key-field order, into `encoder`.
    fn encode(&self, encoder: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError>;
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
                e.push(KeyPart::Int(i128::from(*self)))
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Key for bool {
    fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
        e.push(KeyPart::Bool(*self))
    }
}
impl Key for str {
    fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
        e.push(KeyPart::Text(self))
    }
}
impl Key for String {
    fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
        e.push(KeyPart::Text(self))
    }
}
impl Key for [u8] {
    fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
        e.push(KeyPart::Data(self))
    }
}
impl<K: Key + ?Sized> Key for &K {
    fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
        (**self).encode(e)
    }
}
macro_rules! tuple_key {
    ($($n:ident),+) => {
        impl<$($n: Key),+> Key for ($($n,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, e: &mut QueryEncoder<'_, '_>) -> Result<(), KeyError> {
                let ($($n,)+) = self;
                $($n.encode(e)?;)+
                Ok(())
            }
        }
    };
}
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

/// Key bytes, kept inline when short so that a lookup allocates nothing.
#[derive(Clone)]
pub struct KeyBuf {
    inline: [u8; 48],
    len: usize,
    spill: Vec<u8>,
}

impl Default for KeyBuf {
    fn default() -> Self {
        KeyBuf {
            inline: [0; 48],
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl KeyBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.spill.is_empty() && self.len + bytes.len() <= self.inline.len() {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.extend_from_slice(bytes);
        }
    }

    fn push_sized(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.push(&len.to_le_bytes());
        self.push(bytes);
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    /// The key hash.
    pub fn hash(&self) -> u64 {
        key_hash(self.as_bytes())
    }
}

/// The hash of canonical key bytes (or, for a type without a key, of the
/// record's canonical bytes).
pub fn key_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<KeySpec>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::examples::probe_capnp::probe::{self, Color};
    use crate::schema::record::{append_canonical, record_message, RecordType};

    fn record(fill: impl FnOnce(probe::Builder<'_>)) -> Vec<u64> {
        let mut message = capnp::message::Builder::new_default();
        fill(message.init_root());
        let root = message.get_root_as_reader().unwrap();
        let mut out = Vec::new();
        append_canonical(root, None, &mut Vec::new(), &mut out).unwrap();
        out
    }

    /// The direct key path and reflection agree on every integer kind, on
    /// defaults (stored XORed) and on negative values.
    #[test]
    fn direct_keys_agree_with_reflection() {
        let info = TypeInfo::of::<probe::Owned>();
        let records = [
            record(|_| {}),
            record(|mut p| {
                p.set_small(-300);
                p.set_count(0);
                p.set_big(i64::MIN);
                p.set_color(Color::Blue);
            }),
            record(|mut p| {
                p.set_small(-5);
                p.set_count(u32::MAX);
                p.set_big(42);
            }),
        ];
        for field in ["small", "count", "big", "color"] {
            let spec = KeySpec::resolve(&info, &[field]).unwrap();
            assert!(spec.direct.is_some(), "{field} has a direct path");
            let resolved = spec.resolved().unwrap();
            for words in &records {
                let mut direct = KeyBuf::new();
                assert!(spec.encode_words(words, &mut direct));
                let message = record_message(words, 1 << 20);
                let reader: probe::Reader<'_> = message.get_root().unwrap();
                let mut reflected = KeyBuf::new();
                resolved
                    .encode_record(probe::Owned::dynamic(reader), &mut reflected)
                    .unwrap();
                assert_eq!(direct.as_bytes(), reflected.as_bytes(), "{field}");
            }
        }
        // Query values encode to the same bytes as the records hold.
        let spec = KeySpec::resolve(&info, &["small"]).unwrap();
        let mut q = KeyBuf::new();
        spec.encode_query("Probe", &-300i32, &mut q).unwrap();
        let mut r = KeyBuf::new();
        spec.encode_words(&records[1], &mut r);
        assert_eq!(q.as_bytes(), r.as_bytes());
    }

    #[test]
    fn key_fields_that_cannot_be_keys_are_named() {
        let info = TypeInfo::of::<probe::Owned>();
        for (field, why) in [
            ("ratio", "floating-point"),
            ("some", "union member"),
            ("missing", "no such field"),
        ] {
            let err = KeySpec::resolve(&info, &[field]).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(why), "{err}");
        }
        let spec = KeySpec::resolve(&info, &["name", "blob", "flag"]).unwrap();
        assert!(spec.direct.is_none());
        let mut out = KeyBuf::new();
        let err = spec
            .encode_query("Probe", &("a", 5u8), &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("field blob is Data"), "{err}");
        let err = KeySpec::resolve(&info, &["count"])
            .unwrap()
            .encode_query("Probe", &-1i64, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of its range"), "{err}");
    }
}
