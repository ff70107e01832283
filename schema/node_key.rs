//! Primary keys of a type known only by its schema node: the node a blob's
//! header carries, not generated code.
//!
//! A producer that restores a state holding a type it no longer registers
//! must still write that type's key hashes (its reverse delta re-creates
//! the type, and consumers find re-created records by those hashes). It has
//! no generated code for the type, so [`NodeKey`] reads each key field
//! straight from a record's canonical words, at the place the node gives
//! it. Key fields are integers, bools, enums, text or data outside any
//! union (see [`crate::schema::key`]), so each has a fixed place: a slot of
//! the data section or a pointer of the pointer section. The bytes are the
//! same as [`crate::schema::key`]'s (a unit test holds the two together):
//! integers as 8 little-endian bytes (signed as i64), a bool as one byte,
//! text and data as a u32 length and the bytes.

use capnp::schema_capnp::{field, node, type_, value};

/// Where and how one key field is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeField {
    /// An integer or enum in the data section.
    Int {
        byte_offset: usize,
        width: usize,
        signed: bool,
        /// Default value as raw little-endian bits (fields are stored XORed
        /// with their defaults).
        default_bits: u64,
    },
    /// A bool in the data section, at bit `bit`.
    Bool { bit: usize, default: bool },
    /// Text or data behind pointer `index` of the pointer section.
    Bytes {
        index: usize,
        text: bool,
        default: Vec<u8>,
    },
}

/// A type's primary key, resolved against its schema node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    fields: Vec<NodeField>,
}

impl NodeKey {
    /// Resolves `key_fields` (in key order) against the struct `node`. An
    /// error says which field cannot be read and why.
    pub fn resolve(node: node::Reader<'_>, key_fields: &[String]) -> Result<NodeKey, String> {
        let node::Struct(st) = node.which().map_err(|e| e.to_string())? else {
            return Err("the node is not a struct".into());
        };
        let all = st.get_fields().map_err(|e| e.to_string())?;
        let mut fields = Vec::with_capacity(key_fields.len());
        for name in key_fields {
            let bad = |why: String| format!("key field {name}: {why}");
            let f = all
                .iter()
                .find(|f| {
                    f.get_name()
                        .ok()
                        .and_then(|n| n.to_str().ok())
                        .is_some_and(|n| n == name)
                })
                .ok_or_else(|| bad("no such field in the node".into()))?;
            if f.get_discriminant_value() != field::NO_DISCRIMINANT {
                return Err(bad("is a union member".into()));
            }
            let field::Slot(slot) = f.which().map_err(|e| bad(e.to_string()))? else {
                return Err(bad("is a group".into()));
            };
            let offset = slot.get_offset() as usize;
            let ty = slot
                .get_type()
                .and_then(|t| t.which().map_err(Into::into))
                .map_err(|e| bad(e.to_string()))?;
            let default = slot
                .get_default_value()
                .and_then(|v| v.which().map_err(Into::into))
                .map_err(|e| bad(e.to_string()))?;
            // The default, as raw bits (integers, enums, bools) or bytes
            // (text, data).
            let (default_bits, default_bytes) = match default {
                value::Bool(v) => (u64::from(v), Vec::new()),
                value::Int8(v) => (v as u8 as u64, Vec::new()),
                value::Int16(v) => (v as u16 as u64, Vec::new()),
                value::Int32(v) => (v as u32 as u64, Vec::new()),
                value::Int64(v) => (v as u64, Vec::new()),
                value::Uint8(v) => (u64::from(v), Vec::new()),
                value::Uint16(v) | value::Enum(v) => (u64::from(v), Vec::new()),
                value::Uint32(v) => (u64::from(v), Vec::new()),
                value::Uint64(v) => (v, Vec::new()),
                value::Text(t) => (0, t.map_err(|e| bad(e.to_string()))?.as_bytes().to_vec()),
                value::Data(d) => (0, d.map_err(|e| bad(e.to_string()))?.to_vec()),
                _ => (0, Vec::new()),
            };
            let int = |width: usize, signed: bool| NodeField::Int {
                byte_offset: offset * width,
                width,
                signed,
                default_bits,
            };
            fields.push(match ty {
                type_::Bool(()) => NodeField::Bool {
                    bit: offset,
                    default: default_bits != 0,
                },
                type_::Int8(()) => int(1, true),
                type_::Int16(()) => int(2, true),
                type_::Int32(()) => int(4, true),
                type_::Int64(()) => int(8, true),
                type_::Uint8(()) => int(1, false),
                type_::Uint16(()) | type_::Enum(_) => int(2, false),
                type_::Uint32(()) => int(4, false),
                type_::Uint64(()) => int(8, false),
                type_::Text(()) => NodeField::Bytes {
                    index: offset,
                    text: true,
                    default: default_bytes,
                },
                type_::Data(()) => NodeField::Bytes {
                    index: offset,
                    text: false,
                    default: default_bytes,
                },
                _ => return Err(bad("is not an integer, bool, enum, text or data".into())),
            });
        }
        Ok(NodeKey { fields })
    }

    /// Appends the canonical key bytes of the canonical record `words`
    /// (root pointer in word 0) to `out`. Every read is bounds-checked; a
    /// record laid out otherwise (a far pointer, a text that is not a byte
    /// list) is an error saying so.
    pub fn encode(&self, words: &[u64], out: &mut Vec<u8>) -> Result<(), String> {
        let root = *words.first().ok_or("empty record")?;
        if root != 0 && root & 3 != 0 {
            return Err("the record's root is not a struct pointer".into());
        }
        let offset = i64::from((root as u32 as i32) >> 2);
        let data_words = (root >> 32) as u16 as usize;
        let ptr_count = (root >> 48) as u16 as usize;
        let data = usize::try_from(1 + offset).map_err(|_| "root pointer points backwards")?;
        if root != 0 && data + data_words + ptr_count > words.len() {
            return Err("the root struct lies outside the record".into());
        }
        let (data_words, ptr_count) = if root == 0 {
            (0, 0)
        } else {
            (data_words, ptr_count)
        };
        self.encode_struct(words, data, data_words, ptr_count, out)
    }

    /// Appends the canonical key bytes of the struct whose data section
    /// starts at word `data` of `words` (`data_words` data words, then
    /// `ptr_count` pointers), its pointers followed within `words`: a
    /// record read in place, such as an element of a blob's record list
    /// (`words` the blob's segment). Bounds-checked like [`Self::encode`].
    pub fn encode_struct(
        &self,
        words: &[u64],
        data: usize,
        data_words: usize,
        ptr_count: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if data
            .checked_add(data_words + ptr_count)
            .is_none_or(|end| end > words.len())
        {
            return Err("the struct lies outside the words given".into());
        }
        let bytes = crate::schema::record::words_as_bytes(words);
        for f in &self.fields {
            match f {
                NodeField::Int {
                    byte_offset,
                    width,
                    signed,
                    default_bits,
                } => {
                    let mut raw = 0u64;
                    if byte_offset + width <= data_words * 8 {
                        let at = data * 8 + byte_offset;
                        let mut buf = [0u8; 8];
                        buf[..*width].copy_from_slice(&bytes[at..at + width]);
                        raw = u64::from_le_bytes(buf);
                    }
                    raw ^= default_bits;
                    let value = if *signed {
                        let shift = 64 - 8 * *width as u32;
                        (((raw << shift) as i64) >> shift) as u64
                    } else {
                        raw
                    };
                    out.extend_from_slice(&value.to_le_bytes());
                }
                NodeField::Bool { bit, default } => {
                    let mut v = false;
                    if bit / 8 < data_words * 8 {
                        v = bytes[data * 8 + bit / 8] >> (bit % 8) & 1 == 1;
                    }
                    out.push(u8::from(v ^ default));
                }
                NodeField::Bytes {
                    index,
                    text,
                    default,
                } => {
                    let value = if *index < ptr_count {
                        let at = data + data_words + index;
                        read_bytes(words, bytes, at, *text)?.unwrap_or(default)
                    } else {
                        default
                    };
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(value);
                }
            }
        }
        Ok(())
    }
}

/// The bytes of the byte list behind the pointer at word `at`; `None` for a
/// null pointer. A text's terminating NUL is not part of it.
pub(crate) fn read_bytes<'a>(
    words: &[u64],
    bytes: &'a [u8],
    at: usize,
    text: bool,
) -> Result<Option<&'a [u8]>, String> {
    let p = words[at];
    if p == 0 {
        return Ok(None);
    }
    if p & 3 != 1 || (p >> 32) & 7 != 2 {
        return Err("a key text or data is not a list of bytes inside the record".into());
    }
    let offset = i64::from((p as u32 as i32) >> 2);
    let count = (p >> 35) as usize;
    let start = usize::try_from(at as i64 + 1 + offset)
        .map_err(|_| "a key list points before the record")?
        .checked_mul(8)
        .ok_or("a key list lies outside the record")?;
    let list = bytes
        .get(start..start.saturating_add(count))
        .ok_or("a key list lies outside the record")?;
    Ok(Some(if text {
        list.strip_suffix(&[0]).unwrap_or(list)
    } else {
        list
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::examples::probe_capnp::probe::{self, Color};
    use crate::schema::key::{KeyBuf, KeySpec};
    use crate::schema::record::{append_canonical, RecordType, TypeInfo};

    /// For every kind of key field (with non-zero defaults, and fields left
    /// at their defaults), the node-resolved key has the bytes of the
    /// generated-code key.
    #[test]
    fn node_key_bytes_equal_the_generated_key() {
        let info = TypeInfo::of::<probe::Owned>();
        let keys: [&[&str]; 7] = [
            &["name", "small"],
            &["count"],
            &["big", "color"],
            &["flag"],
            &["blob"],
            &["small", "flag", "name", "blob"],
            &["color"],
        ];
        let records: Vec<Vec<u64>> = (0..6i64)
            .map(|i| {
                let mut message = capnp::message::Builder::new_default();
                let mut r = message.init_root::<probe::Builder>();
                if i > 0 {
                    r.set_small(i as i16 - 3);
                    r.set_count(i as u32 * 1000);
                    r.set_big(-i * 1_000_000_007);
                    r.set_color(if i % 2 == 0 { Color::Blue } else { Color::Red });
                    r.set_name(format!("name-{i}").as_str());
                    r.set_flag(i % 3 == 0);
                }
                if i > 1 {
                    r.set_blob(&[i as u8; 9][..]);
                }
                let mut words = Vec::new();
                append_canonical(
                    message.get_root_as_reader().unwrap(),
                    None,
                    &mut Vec::new(),
                    &mut words,
                )
                .unwrap();
                words
            })
            .collect();
        for names in keys {
            let spec = KeySpec::resolve(&info, names).unwrap();
            let resolved = spec.resolved().unwrap();
            let key_fields: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let node = NodeKey::resolve(info.schema().unwrap().get_proto(), &key_fields).unwrap();
            for words in &records {
                let mut expected = KeyBuf::new();
                if !spec.encode_words(words, &mut expected) {
                    let message = crate::schema::record::record_message(words, 1 << 20);
                    let reader: probe::Reader<'_> = message.get_root().unwrap();
                    resolved
                        .encode_record(probe::Owned::dynamic(reader), &mut expected)
                        .unwrap();
                }
                let mut got = Vec::new();
                node.encode(words, &mut got).unwrap();
                assert_eq!(got, expected.as_bytes(), "key {names:?}");
                // The same struct read in place (its data right after the
                // root pointer).
                let root = words[0];
                let (d, p) = ((root >> 32) as u16 as usize, (root >> 48) as usize);
                let mut in_place = Vec::new();
                node.encode_struct(words, 1, d, p, &mut in_place).unwrap();
                assert_eq!(in_place, got, "key {names:?} read in place");
            }
        }
        let node = NodeKey::resolve(info.schema().unwrap().get_proto(), &["name".into()]).unwrap();
        let err = node
            .encode_struct(&records[1], 1, 4, 9, &mut Vec::new())
            .unwrap_err();
        assert!(err.contains("outside the words given"), "{err}");
        let err =
            NodeKey::resolve(info.schema().unwrap().get_proto(), &["ratio".into()]).unwrap_err();
        assert!(err.contains("ratio"), "{err}");
        let err =
            NodeKey::resolve(info.schema().unwrap().get_proto(), &["some".into()]).unwrap_err();
        assert!(err.contains("union"), "{err}");
    }
}
