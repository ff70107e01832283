//! Rendering records as JSON (the mapping is in the module documentation
//! of [`super`]), walking them by path, and comparing two renderings.

use super::walk::{Elem, ListAt, StructAt, Target, Walk};
use super::{Default, DynamicError, DynamicSchema, Field, FieldKind, Ty};
use serde_json::{Map, Value};

/// Where a record lies: the struct whose data section starts at word
/// `word` of `segment`, with `data_words` data words and then `ptrs`
/// pointers (an element of a blob's record list, or a canonical message's
/// root struct).
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The words the record's pointers are followed in.
    pub segment: &'a [u64],
    /// The first word of the struct's data section.
    pub word: usize,
    /// Data words of the struct.
    pub data_words: u16,
    /// Pointers of the struct.
    pub ptrs: u16,
}

/// A step of the path an error names: `$.favourite.genres[2]`.
#[derive(Clone, Copy)]
struct At<'p> {
    parent: Option<&'p At<'p>>,
    step: Step<'p>,
}

#[derive(Clone, Copy)]
enum Step<'p> {
    Root,
    Field(&'p str),
    Index(u32),
}

impl<'p> At<'p> {
    const ROOT: At<'static> = At {
        parent: None,
        step: Step::Root,
    };

    fn field(&'p self, name: &'p str) -> At<'p> {
        At {
            parent: Some(self),
            step: Step::Field(name),
        }
    }

    fn index(&'p self, i: u32) -> At<'p> {
        At {
            parent: Some(self),
            step: Step::Index(i),
        }
    }

    fn depth(&self) -> u32 {
        self.parent.map_or(0, |p| p.depth() + 1)
    }

    fn render(&self) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(a) = at {
            steps.push(a.step);
            at = a.parent;
        }
        let mut out = String::new();
        for s in steps.iter().rev() {
            match s {
                Step::Root => out.push('$'),
                Step::Field(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// A pointer field or list element, followed: a struct or list still to
/// read, or a value already read.
enum Deref<'w> {
    Struct(u64, StructAt, &'w Walk<'w>),
    List(Ty, ListAt, &'w Walk<'w>),
    Value(Value),
}

/// The default of a pointer that has none (a list element's).
static NO_DEFAULT: Default = Default::Pointer(None);

/// Integers as JSON numbers while exact in a double (|v| ≤ 2^53).
const EXACT: u64 = 1 << 53;

fn int(v: i64) -> Value {
    if v.unsigned_abs() <= EXACT {
        Value::from(v)
    } else {
        Value::String(v.to_string())
    }
}

fn uint(v: u64) -> Value {
    if v <= EXACT {
        Value::from(v)
    } else {
        Value::String(v.to_string())
    }
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v.is_infinite() {
        Value::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

/// Standard base64 with padding.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Bytes of standard base64 (what [`base64`] writes); `None` if `text`
/// is not.
pub(super) fn unbase64(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | digit(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

impl DynamicSchema {
    /// Renders the record `rec`, of struct `type_id`, as JSON.
    pub fn render(&self, type_id: u64, rec: RecordRef<'_>) -> Result<Value, DynamicError> {
        let (walk, s) = self.open(type_id, rec)?;
        self.struct_value(&walk, type_id, s, &At::ROOT)
    }

    /// Renders the field of record `rec` that `path` names (see the module
    /// documentation); an empty path is the whole record.
    pub fn render_path(
        &self,
        type_id: u64,
        rec: RecordRef<'_>,
        path: &str,
    ) -> Result<Value, DynamicError> {
        let (walk, s) = self.open(type_id, rec)?;
        let bad = |reason: String| DynamicError::BadPath {
            path: path.to_string(),
            reason,
        };
        // A default value met on the way is rendered whole, and the rest
        // of the path indexes its JSON.
        let mut here = Deref::Struct(type_id, s, &walk);
        for (n, name) in path
            .split('.')
            .filter(|s| !path.is_empty() || !s.is_empty())
            .enumerate()
        {
            let step = || format!("step {} ({name:?})", n + 1);
            here = match here {
                Deref::Struct(id, s, w) => {
                    let decl = &self.structs[&id];
                    let field = decl.fields.iter().find(|f| f.name == name).ok_or_else(|| {
                        bad(format!("{}: {} has no field {name:?}", step(), decl.name))
                    })?;
                    if let Some(active) = self.inactive(w, id, field, s) {
                        return Err(bad(format!(
                            "{}: union member {name} is not set ({active} is)",
                            step()
                        )));
                    }
                    self.field_deref(w, field, s, &At::ROOT)?
                }
                Deref::List(elem, l, w) => {
                    let i: u32 = name
                        .parse()
                        .map_err(|_| bad(format!("{}: a list is indexed by a number", step())))?;
                    if i >= l.count {
                        return Err(bad(format!(
                            "{}: index {i} is past the list's {} elements",
                            step(),
                            l.count
                        )));
                    }
                    self.element_deref(w, &elem, l, i, &At::ROOT)?
                }
                Deref::Value(v) => {
                    let next = match &v {
                        Value::Object(m) => m.get(name).cloned(),
                        Value::Array(a) => {
                            name.parse::<usize>().ok().and_then(|i| a.get(i).cloned())
                        }
                        _ => None,
                    };
                    let what = match &v {
                        Value::Object(_) => "an object without it",
                        Value::Array(_) => "a list without it",
                        Value::Null => "null",
                        _ => "a value that has no fields",
                    };
                    Deref::Value(next.ok_or_else(|| bad(format!("{}: {what}", step())))?)
                }
            };
        }
        self.finish(here, &At::ROOT)
    }

    /// The walk of `rec`'s segment and its root struct, checked.
    fn open<'a>(
        &self,
        type_id: u64,
        rec: RecordRef<'a>,
    ) -> Result<(Walk<'a>, StructAt), DynamicError> {
        if !self.structs.contains_key(&type_id) {
            return Err(DynamicError::UnknownStruct { type_id });
        }
        let end = rec.word as u64 + u64::from(rec.data_words) + u64::from(rec.ptrs);
        if end > rec.segment.len() as u64 {
            return Err(DynamicError::Bytes {
                path: "$".into(),
                reason: format!(
                    "the record at word {} lies outside the segment of {} words",
                    rec.word,
                    rec.segment.len()
                ),
            });
        }
        let s = StructAt {
            data: rec.word * 8,
            bits: u64::from(rec.data_words) * 64,
            ptrs: rec.word + rec.data_words as usize,
            ptr_count: rec.ptrs,
        };
        Ok((Walk::new(rec.segment, self.limits), s))
    }

    /// For a union member that is not the active one, the active
    /// member's name (or discriminant).
    fn inactive(&self, w: &Walk<'_>, id: u64, field: &Field, s: StructAt) -> Option<String> {
        let d = field.discriminant?;
        let decl = &self.structs[&id];
        let active = w.data_bits(&s, u64::from(decl.discriminant_offset) * 16, 16) as u16;
        if active == d {
            return None;
        }
        Some(
            decl.fields
                .iter()
                .find(|f| f.discriminant == Some(active))
                .map_or_else(|| format!("discriminant {active}"), |f| f.name.clone()),
        )
    }

    fn struct_value(
        &self,
        w: &Walk<'_>,
        id: u64,
        s: StructAt,
        at: &At<'_>,
    ) -> Result<Value, DynamicError> {
        let decl = &self.structs[&id];
        let active = decl
            .has_union
            .then(|| w.data_bits(&s, u64::from(decl.discriminant_offset) * 16, 16) as u16);
        let mut map = Map::new();
        for f in &decl.fields {
            if f.discriminant.is_some() && f.discriminant != active {
                continue;
            }
            let here = at.field(&f.name);
            let d = self.field_deref(w, f, s, &here)?;
            map.insert(f.name.clone(), self.finish(d, &here)?);
        }
        Ok(Value::Object(map))
    }

    /// Reads what a followed pointer leads to, whole.
    fn finish(&self, d: Deref<'_>, at: &At<'_>) -> Result<Value, DynamicError> {
        match d {
            Deref::Value(v) => Ok(v),
            Deref::Struct(id, s, w) => self.struct_value(w, id, s, at),
            Deref::List(elem, l, w) => {
                w.spend(u64::from(l.count), &|| at.render())?;
                let mut out = Vec::with_capacity(l.count.min(1 << 16) as usize);
                for i in 0..l.count {
                    let here = at.index(i);
                    let d = self.element_deref(w, &elem, l, i, &here)?;
                    out.push(self.finish(d, &here)?);
                }
                Ok(Value::Array(out))
            }
        }
    }

    /// A field of struct `s`, followed one step.
    fn field_deref<'w>(
        &'w self,
        w: &'w Walk<'w>,
        f: &'w Field,
        s: StructAt,
        at: &At<'_>,
    ) -> Result<Deref<'w>, DynamicError> {
        let (offset, ty, default) = match &f.kind {
            FieldKind::Group(id) => return Ok(Deref::Struct(*id, s, w)),
            FieldKind::Slot {
                offset,
                ty,
                default,
            } => (*offset, ty, default),
        };
        if let Some(bits) = ty.bits() {
            let raw = w.data_bits(&s, u64::from(offset) * u64::from(bits), bits);
            let xor = match default {
                Default::Bits(b) => *b,
                Default::Pointer(_) => 0,
            };
            return Ok(Deref::Value(self.scalar(ty, raw ^ xor)));
        }
        let target = if offset < u32::from(s.ptr_count) {
            w.resolve(s.ptrs + offset as usize, &|| at.render())?
        } else {
            Target::Null
        };
        self.pointer_deref(w, ty, target, default, at)
    }

    /// Element `i` of list `l` (of `elem`s), followed one step.
    fn element_deref<'w>(
        &'w self,
        w: &'w Walk<'w>,
        elem: &Ty,
        l: ListAt,
        i: u32,
        at: &At<'_>,
    ) -> Result<Deref<'w>, DynamicError> {
        let bad = |reason: String| DynamicError::Bytes {
            path: at.render(),
            reason,
        };
        if let Some(bits) = elem.bits() {
            let raw = match l.elem {
                _ if bits == 0 => 0,
                Elem::Bits(b) if b == bits => {
                    let s = StructAt {
                        data: l.start * 8,
                        bits: u64::from(l.count) * u64::from(b),
                        ptrs: 0,
                        ptr_count: 0,
                    };
                    w.data_bits(&s, u64::from(i) * u64::from(bits), bits)
                }
                Elem::Composite { .. } if bits > 1 => {
                    let s = l.struct_at(i).expect("composite elements are structs");
                    w.data_bits(&s, 0, bits)
                }
                other => {
                    return Err(bad(format!(
                        "a list of {} where {bits}-bit elements were expected",
                        describe(other)
                    )))
                }
            };
            return Ok(Deref::Value(self.scalar(elem, raw)));
        }
        if let Ty::Struct(id) = elem {
            let s = l
                .struct_at(i)
                .ok_or_else(|| bad("a list of bits where a list of structs was expected".into()))?;
            return Ok(Deref::Struct(*id, s, w));
        }
        let ptr = match l.elem {
            Elem::Pointer => l.start + i as usize,
            Elem::Composite { ptrs, .. } if ptrs > 0 => {
                l.struct_at(i).expect("composite elements are structs").ptrs
            }
            other => {
                return Err(bad(format!(
                    "a list of {} where a list of pointers was expected",
                    describe(other)
                )))
            }
        };
        let target = w.resolve(ptr, &|| at.render())?;
        self.pointer_deref(w, elem, target, &NO_DEFAULT, at)
    }

    /// A pointer of type `ty` whose target is `target` (its default read
    /// when null).
    fn pointer_deref<'w>(
        &'w self,
        w: &'w Walk<'w>,
        ty: &Ty,
        target: Target,
        default: &'w Default,
        at: &At<'_>,
    ) -> Result<Deref<'w>, DynamicError> {
        let depth = at.depth();
        if depth > w.limits().max_depth {
            return Err(DynamicError::TooDeep {
                path: at.render(),
                limit: w.limits().max_depth,
            });
        }
        if let (Target::Null, Default::Pointer(Some(words))) = (target, default) {
            // The default value, from its own canonical message.
            let dw = Walk::new(words, w.limits());
            let t = dw.resolve(0, &|| at.render())?;
            let d = self.pointer_deref(&dw, ty, t, &NO_DEFAULT, at)?;
            return Ok(Deref::Value(self.finish(d, at)?));
        }
        let bad = |what: &str| DynamicError::Bytes {
            path: at.render(),
            reason: format!("expected {what}, found {}", target_name(&target)),
        };
        Ok(match (ty, target) {
            (Ty::Text | Ty::Data, Target::Null) => Deref::Value(Value::String(String::new())),
            (Ty::Text | Ty::Data, Target::List(l)) => {
                if l.elem != Elem::Bits(8) {
                    return Err(bad("a list of bytes"));
                }
                w.spend(u64::from(l.count) / 8 + 1, &|| at.render())?;
                let bytes = &w.bytes[l.start * 8..l.start * 8 + l.count as usize];
                Deref::Value(Value::String(if *ty == Ty::Text {
                    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
                    String::from_utf8_lossy(bytes).into_owned()
                } else {
                    base64(bytes)
                }))
            }
            (Ty::List(_), Target::Null) => Deref::Value(Value::Array(Vec::new())),
            (Ty::List(elem), Target::List(l)) => {
                w.spend(1, &|| at.render())?;
                Deref::List((**elem).clone(), l, w)
            }
            // Not the struct of defaults the generated getter returns: a
            // struct may contain itself, and its defaults would never end.
            (Ty::Struct(_), Target::Null) => Deref::Value(Value::Null),
            (Ty::Struct(id), Target::Struct(s)) => {
                w.spend(s.bits / 64 + u64::from(s.ptr_count) + 1, &|| at.render())?;
                Deref::Struct(*id, s, w)
            }
            (Ty::AnyPointer, Target::Null | Target::Capability) => Deref::Value(Value::Null),
            (Ty::AnyPointer, Target::Struct(_)) => {
                Deref::Value(serde_json::json!({"$anyPointer": "struct"}))
            }
            (Ty::AnyPointer, Target::List(_)) => {
                Deref::Value(serde_json::json!({"$anyPointer": "list"}))
            }
            (_, Target::Capability) => Deref::Value(Value::Null),
            (Ty::Text | Ty::Data, _) => return Err(bad("text or data")),
            (Ty::List(_), _) => return Err(bad("a list")),
            (Ty::Struct(_), _) => return Err(bad("a struct")),
            (scalar, _) => {
                return Err(DynamicError::Bytes {
                    path: at.render(),
                    reason: format!("{scalar:?} is not a pointer type"),
                })
            }
        })
    }

    /// A scalar of type `ty` from its bits (already XORed with the default).
    fn scalar(&self, ty: &Ty, raw: u64) -> Value {
        match ty {
            Ty::Void => Value::Null,
            Ty::Bool => Value::Bool(raw & 1 == 1),
            Ty::Int8 => int(i64::from(raw as u8 as i8)),
            Ty::Int16 => int(i64::from(raw as u16 as i16)),
            Ty::Int32 => int(i64::from(raw as u32 as i32)),
            Ty::Int64 => int(raw as i64),
            Ty::UInt8 => uint(raw & 0xff),
            Ty::UInt16 => uint(raw & 0xffff),
            Ty::UInt32 => uint(raw & 0xffff_ffff),
            Ty::UInt64 => uint(raw),
            Ty::Float32 => {
                let f = f32::from_bits(raw as u32);
                if f.is_finite() {
                    // Its shortest text, so that 0.1f32 reads as 0.1.
                    float(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
                } else {
                    float(f64::from(f))
                }
            }
            Ty::Float64 => float(f64::from_bits(raw)),
            Ty::Enum(id) => {
                let v = raw as u16;
                match self.enumerants(*id).get(v as usize) {
                    Some(name) => Value::String(name.clone()),
                    None => Value::from(v),
                }
            }
            _ => Value::Null,
        }
    }
}

fn describe(e: Elem) -> String {
    match e {
        Elem::Bits(0) => "voids".into(),
        Elem::Bits(1) => "bits".into(),
        Elem::Bits(b) => format!("{b}-bit elements"),
        Elem::Pointer => "pointers".into(),
        Elem::Composite { .. } => "structs".into(),
    }
}

fn target_name(t: &Target) -> &'static str {
    match t {
        Target::Null => "null",
        Target::Struct(_) => "a struct",
        Target::List(_) => "a list",
        Target::Capability => "a capability",
    }
}

/// The differences between two renderings of a record: each path (`$`
/// the record, `.name` a field, `[i]` an element) whose value differs,
/// with the value before (`None`: absent) and after. Lists of the same
/// length are compared element by element, others as a whole; a union
/// that changed member shows as one field absent and another present.
pub fn diff_values(before: &Value, after: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let mut out = Vec::new();
    diff_into("$".to_string(), Some(before), Some(after), &mut out);
    out
}

fn diff_into(
    path: String,
    a: Option<&Value>,
    b: Option<&Value>,
    out: &mut Vec<(String, Option<Value>, Option<Value>)>,
) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for (k, v) in x {
                diff_into(format!("{path}.{k}"), Some(v), y.get(k), out);
            }
            for (k, v) in y {
                if !x.contains_key(k) {
                    diff_into(format!("{path}.{k}"), None, Some(v), out);
                }
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (v, u)) in x.iter().zip(y).enumerate() {
                diff_into(format!("{path}[{i}]"), Some(v), Some(u), out);
            }
        }
        (a, b) if a != b => out.push((path, a.cloned(), b.cloned())),
        _ => {}
    }
}
