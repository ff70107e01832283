//! Building records from JSON through the schema nodes, with no generated
//! code: the inverse of rendering (the mapping is in the module
//! documentation of [`super`]), for publishing records from files
//! (`burrow publish`).
//!
//! [`RecordBuilder::build`] lays out one single-segment message word by
//! word: the root pointer in word 0, the record's struct at its full size
//! (the node's data words and pointers) after it, and each object below it
//! appended as it is met. A scalar is stored XORed with its field's
//! default, as Cap'n Proto lays them out; a field left out (or `null`)
//! stays zero, so it reads as its default, as a generated builder leaves
//! a field it does not set. The message is not canonical: the producer
//! canonicalizes it ([`crate::producer::Populate::add_canonical`]) exactly
//! as it canonicalizes a generated builder's, so that equal values give
//! equal bytes whichever built them.
//!
//! Every value is checked against its field's type: a JSON value of
//! another kind, an integer out of its type's range (300 for a `UInt8`), a
//! float that does not fit a `Float32`, an enumerant the enum does not
//! name, two members of one union, a field the struct does not have
//! (unless [`BuildOptions::ignore_unknown_fields`]) are [`BuildError`]s
//! naming the field by its path (`cast[2].name`).

use super::json::unbase64;
use super::{Default, DynamicError, DynamicSchema, FieldKind, Ty};
use crate::schema::wire::{Ptr, SIZE_COMPOSITE, SIZE_POINTER};
use serde_json::Value;

/// How values are read.
#[derive(Debug, Clone, Copy, std::default::Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Skip a field the struct does not have instead of refusing the
    /// record.
    pub ignore_unknown_fields: bool,
    /// Take every scalar from a string too (a CSV cell): integers and
    /// floats in decimal, `true` or `false`, enumerants by name. Lists and
    /// structs cannot be given as strings.
    pub scalars_from_strings: bool,
}

/// Why a value cannot be a record's field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {path}: {reason}")]
pub struct BuildError {
    /// The field, as a path from the record (`title`, `cast[2].name`);
    /// empty for the record itself.
    pub path: String,
    /// What is wrong with its value.
    pub reason: String,
}

/// Builds records of one struct of a [`DynamicSchema`] from JSON values.
#[derive(Debug, Clone)]
pub struct RecordBuilder<'s> {
    schema: &'s DynamicSchema,
    type_id: u64,
    options: BuildOptions,
}

/// A step of the path an error names.
#[derive(Clone, Copy)]
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// One record's message being laid out.
struct Writer<'a> {
    schema: &'a DynamicSchema,
    options: BuildOptions,
    words: Vec<u64>,
    path: Vec<Step<'a>>,
}

impl<'s> RecordBuilder<'s> {
    /// A builder of records of struct `type_id` of `schema`.
    pub fn new(
        schema: &'s DynamicSchema,
        type_id: u64,
        options: BuildOptions,
    ) -> Result<Self, DynamicError> {
        if !schema.has_struct(type_id) {
            return Err(DynamicError::UnknownStruct { type_id });
        }
        Ok(RecordBuilder {
            schema,
            type_id,
            options,
        })
    }

    /// The record `value` (a JSON object) as a single-segment message,
    /// its root pointer in word 0 (see the module documentation).
    pub fn build(&self, value: &Value) -> Result<Vec<u64>, BuildError> {
        let decl = &self.schema.structs[&self.type_id];
        let (d, p) = (decl.data_words, decl.ptr_count);
        let mut w = Writer {
            schema: self.schema,
            options: self.options,
            words: Vec::with_capacity(1 + usize::from(d) + usize::from(p) + 8),
            path: Vec::new(),
        };
        w.words.push(Ptr::to_struct(0, d, p));
        let data = w.alloc(usize::from(d) + usize::from(p));
        w.write_struct(self.type_id, value, data, d)?;
        Ok(w.words)
    }
}

/// A type as the schema writes it, for messages.
fn type_name(schema: &DynamicSchema, ty: &Ty) -> String {
    match ty {
        Ty::List(inner) => format!("List({})", type_name(schema, inner)),
        Ty::Enum(id) | Ty::Struct(id) => {
            let full = match ty {
                Ty::Struct(_) => schema.structs.get(id).map(|d| d.name.as_str()),
                _ => schema.enums.get(id).map(|e| e.name.as_str()),
            };
            match full {
                Some(name) if !name.is_empty() => short_name(name).to_string(),
                _ => format!("{id:#018x}"),
            }
        }
        Ty::AnyPointer => "AnyPointer".into(),
        other => format!("{other:?}"),
    }
}

/// A display name without its file (`movies.capnp:Movie` is `Movie`).
fn short_name(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, n)| n)
}

/// A JSON value's kind, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        Value::String(_) => "a long string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Writer<'a> {
    fn alloc(&mut self, words: usize) -> usize {
        let at = self.words.len();
        self.words.resize(at + words, 0);
        at
    }

    fn error(&self, reason: String) -> BuildError {
        let mut path = String::new();
        for step in &self.path {
            match step {
                Step::Field(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                }
                Step::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        BuildError { path, reason }
    }

    /// Sets `width` bits at bit `bit` of the data section starting at
    /// word `data` (fresh words are zero; each field is set once).
    fn set_bits(&mut self, data: usize, bit: u64, width: u32, value: u64) {
        if width == 0 {
            return;
        }
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        let word = data + (bit / 64) as usize;
        self.words[word] |= (value & mask) << (bit % 64);
    }

    /// Writes the fields of object `value` into the struct (or group of
    /// it) `id` whose data section starts at word `data`, `data_words`
    /// long, its pointers right after.
    fn write_struct(
        &mut self,
        id: u64,
        value: &'a Value,
        data: usize,
        data_words: u16,
    ) -> Result<(), BuildError> {
        let schema = self.schema;
        let decl = &schema.structs[&id];
        let Value::Object(map) = value else {
            if self.options.scalars_from_strings && value.is_string() {
                return Err(self.error(format!(
                    "is a {} (a struct or group), which a CSV cell cannot hold; use JSONL",
                    short_name(&decl.name)
                )));
            }
            return Err(self.error(format!(
                "expected an object for {}, got {}",
                short_name(&decl.name),
                kind(value)
            )));
        };
        let mut member: Option<&str> = None;
        for (name, v) in map {
            let Some(field) = decl.fields.iter().find(|f| f.name == *name) else {
                if self.options.ignore_unknown_fields {
                    continue;
                }
                self.path.push(Step::Field(name));
                let err = self.error(format!(
                    "no such field in {} (fields: {})",
                    decl.name,
                    decl.fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return Err(err);
            };
            self.path.push(Step::Field(name));
            if let Some(d) = field.discriminant {
                if let Some(other) = member {
                    return Err(self.error(format!(
                        "{other} and {name} are members of one union; give only one"
                    )));
                }
                member = Some(name);
                self.set_bits(
                    data,
                    u64::from(decl.discriminant_offset) * 16,
                    16,
                    u64::from(d),
                );
            }
            if !v.is_null() {
                match &field.kind {
                    FieldKind::Slot {
                        offset,
                        ty,
                        default,
                    } => self.write_slot(ty, *offset, default, v, data, data_words)?,
                    FieldKind::Group(gid) => self.write_struct(*gid, v, data, data_words)?,
                }
            }
            self.path.pop();
        }
        Ok(())
    }

    fn write_slot(
        &mut self,
        ty: &Ty,
        offset: u32,
        default: &Default,
        v: &'a Value,
        data: usize,
        data_words: u16,
    ) -> Result<(), BuildError> {
        match ty.bits() {
            Some(bits) => {
                let raw = self.scalar(ty, v)?;
                let default = match default {
                    Default::Bits(b) => *b,
                    Default::Pointer(_) => 0,
                };
                self.set_bits(
                    data,
                    u64::from(offset) * u64::from(bits),
                    bits,
                    raw ^ default,
                );
            }
            None => {
                let at = data + usize::from(data_words) + offset as usize;
                self.write_pointer(ty, v, at)?;
            }
        }
        Ok(())
    }

    /// The raw bits of scalar `v` as a `ty` (not yet XORed with a
    /// default).
    fn scalar(&self, ty: &Ty, v: &Value) -> Result<u64, BuildError> {
        let strings = self.options.scalars_from_strings;
        let name = || type_name(self.schema, ty);
        let wrong = || self.error(format!("expected {}, got {}", name(), kind(v)));
        let range = |lo: i128, hi: i128| -> Result<u64, BuildError> {
            let n: i128 = match v {
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => i128::from(i),
                    (None, Some(u)) => i128::from(u),
                    _ => {
                        return Err(self.error(format!("{n} is not an integer, and {} is", name())))
                    }
                },
                // 64-bit integers past 2^53 are strings in JSON (`burrow
                // dump` writes them so); a CSV cell is always one.
                Value::String(s) => s.trim().parse::<i128>().map_err(|_| {
                    self.error(format!("{} is not an integer, and {} is", kind(v), name()))
                })?,
                _ => return Err(wrong()),
            };
            if n < lo || n > hi {
                return Err(
                    self.error(format!("{n} is out of range for {} ({lo} to {hi})", name()))
                );
            }
            Ok(n as u64)
        };
        Ok(match ty {
            Ty::Void => return Err(self.error("a Void field takes only null".into())),
            Ty::Bool => match v {
                Value::Bool(b) => u64::from(*b),
                Value::String(s) if strings && s.trim() == "true" => 1,
                Value::String(s) if strings && s.trim() == "false" => 0,
                _ => return Err(wrong()),
            },
            Ty::Int8 => range(i8::MIN.into(), i8::MAX.into())? & 0xff,
            Ty::Int16 => range(i16::MIN.into(), i16::MAX.into())? & 0xffff,
            Ty::Int32 => range(i32::MIN.into(), i32::MAX.into())? & 0xffff_ffff,
            Ty::Int64 => range(i64::MIN.into(), i64::MAX.into())?,
            Ty::UInt8 => range(0, u8::MAX.into())?,
            Ty::UInt16 => range(0, u16::MAX.into())?,
            Ty::UInt32 => range(0, u32::MAX.into())?,
            Ty::UInt64 => range(0, u64::MAX.into())?,
            Ty::Float32 | Ty::Float64 => {
                let x = match v {
                    Value::Number(n) => n.as_f64().ok_or_else(wrong)?,
                    Value::String(s) => match s.trim() {
                        "NaN" => f64::NAN,
                        "Infinity" => f64::INFINITY,
                        "-Infinity" => f64::NEG_INFINITY,
                        t if strings => t.parse::<f64>().map_err(|_| wrong())?,
                        _ => return Err(wrong()),
                    },
                    _ => return Err(wrong()),
                };
                if *ty == Ty::Float64 {
                    x.to_bits()
                } else {
                    if x.is_finite() && x.abs() > f64::from(f32::MAX) {
                        return Err(self.error(format!("{x} is out of range for Float32")));
                    }
                    u64::from((x as f32).to_bits())
                }
            }
            Ty::Enum(id) => {
                let names = self.schema.enumerants(*id);
                match v {
                    Value::String(s) => match names.iter().position(|n| n == s.trim()) {
                        Some(i) => i as u64,
                        None => {
                            return Err(self.error(format!(
                                "{} is not an enumerant of {} (expected one of: {})",
                                kind(v),
                                name(),
                                names.join(", ")
                            )))
                        }
                    },
                    // A number the schema may not name, as `dump` writes it.
                    Value::Number(_) => range(0, u16::MAX.into())?,
                    _ => return Err(wrong()),
                }
            }
            _ => return Err(wrong()),
        })
    }

    /// Points the pointer at word `at` to a new object holding `v`, a
    /// `ty`.
    fn write_pointer(&mut self, ty: &Ty, v: &'a Value, at: usize) -> Result<(), BuildError> {
        let lists_as_text = self.options.scalars_from_strings && v.is_string();
        match ty {
            Ty::Text | Ty::Data => {
                let Value::String(s) = v else {
                    return Err(self.error(format!(
                        "expected a string for {}, got {}",
                        type_name(self.schema, ty),
                        kind(v)
                    )));
                };
                let decoded;
                let (bytes, nul) = if *ty == Ty::Text {
                    (s.as_bytes(), 1)
                } else {
                    decoded = unbase64(s).ok_or_else(|| {
                        self.error("Data is written in standard base64 with padding".into())
                    })?;
                    (&decoded[..], 0)
                };
                let len = bytes.len() + nul;
                let count = u32::try_from(len)
                    .ok()
                    .filter(|&n| n < 1 << 29)
                    .ok_or_else(|| self.error(format!("{len} bytes is too long for a list")))?;
                let start = self.alloc(len.div_ceil(8));
                let dst = crate::schema::record::words_as_bytes_mut(&mut self.words[start..]);
                dst[..bytes.len()].copy_from_slice(bytes);
                self.words[at] = Ptr::to_list(start as i64 - at as i64 - 1, 2, count);
            }
            Ty::List(inner) => {
                if lists_as_text {
                    return Err(self.error(format!(
                        "is a {}, which a CSV cell cannot hold; use JSONL",
                        type_name(self.schema, ty)
                    )));
                }
                let Value::Array(items) = v else {
                    return Err(self.error(format!(
                        "expected an array for {}, got {}",
                        type_name(self.schema, ty),
                        kind(v)
                    )));
                };
                self.write_list(inner, items, at)?;
            }
            Ty::Struct(id) => {
                let decl = &self.schema.structs[id];
                let (d, p) = (decl.data_words, decl.ptr_count);
                let start = self.alloc(usize::from(d) + usize::from(p));
                self.words[at] = Ptr::to_struct(start as i64 - at as i64 - 1, d, p);
                self.write_struct(*id, v, start, d)?;
            }
            Ty::AnyPointer => {
                return Err(self
                    .error("an AnyPointer or capability field cannot be given (only null)".into()))
            }
            _ => unreachable!("scalars are written by write_slot"),
        }
        Ok(())
    }

    fn write_list(&mut self, inner: &Ty, items: &'a [Value], at: usize) -> Result<(), BuildError> {
        let count = u32::try_from(items.len())
            .ok()
            .filter(|&n| n < 1 << 29)
            .ok_or_else(|| self.error(format!("{} elements is too many", items.len())))?;
        let offset = |start: usize| start as i64 - at as i64 - 1;
        match inner.bits() {
            Some(bits) => {
                let size = match bits {
                    0 => 0,
                    1 => 1,
                    8 => 2,
                    16 => 3,
                    32 => 4,
                    _ => 5,
                };
                let words = (u64::from(count) * u64::from(bits)).div_ceil(64) as usize;
                let start = self.alloc(words);
                self.words[at] = Ptr::to_list(offset(start), size, count);
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Step::Index(i));
                    if bits == 0 {
                        if !item.is_null() {
                            return Err(self.error("a Void element takes only null".into()));
                        }
                    } else {
                        let raw = self.scalar(inner, item)?;
                        self.set_bits(start, i as u64 * u64::from(bits), bits, raw);
                    }
                    self.path.pop();
                }
            }
            None => match inner {
                Ty::Struct(id) => {
                    let decl = &self.schema.structs[id];
                    let (d, p) = (decl.data_words, decl.ptr_count);
                    let per = usize::from(d) + usize::from(p);
                    let words = per * items.len();
                    let total = u32::try_from(words)
                        .ok()
                        .filter(|&n| n < 1 << 29)
                        .ok_or_else(|| self.error(format!("{words} words is too long a list")))?;
                    let tag = self.alloc(1 + words);
                    self.words[tag] = Ptr::to_struct(i64::from(count), d, p);
                    self.words[at] = Ptr::to_list(offset(tag), SIZE_COMPOSITE, total);
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Step::Index(i));
                        if !item.is_null() {
                            self.write_struct(*id, item, tag + 1 + i * per, d)?;
                        }
                        self.path.pop();
                    }
                }
                _ => {
                    let start = self.alloc(items.len());
                    self.words[at] = Ptr::to_list(offset(start), SIZE_POINTER, count);
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Step::Index(i));
                        if !item.is_null() {
                            self.write_pointer(inner, item, start + i)?;
                        }
                        self.path.pop();
                    }
                }
            },
        }
        Ok(())
    }
}
