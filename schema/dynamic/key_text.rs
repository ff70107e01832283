//! Primary keys typed by a person, turned into canonical key bytes (the
//! encoding of [`crate::schema::key`]) against the type's key fields as
//! its schema node declares them.
//!
//! # Syntax (the same for every command that takes a key)
//!
//! - A key of one field: its value alone (`42`, `bash`), or `field=value`
//!   (`id=42`).
//! - A key of several fields: `field=value` pairs separated by commas, every
//!   key field exactly once, in any order: `year=1999,title=Heat`. Inside a
//!   value, `\,`, `\=` and `\\` stand for `,`, `=` and `\`.
//! - Values: integers in decimal (within the field's type), `true` or
//!   `false`, an enum's enumerant name (or its number), text as it is, data
//!   in hex (`0xbeef` or `beef`).
//!
//! A single-field key whose text happens to contain `=` is read whole
//! unless the names before each `=` include a field of the type.

use super::{DynamicError, DynamicSchema, FieldKind, Ty};
use serde_json::Value;

impl DynamicSchema {
    /// The canonical key bytes of the key `text` names for struct
    /// `type_id` (called `type_name` in errors) whose primary key is
    /// `key_fields`, in key order. A key that does not fit is
    /// [`DynamicError::BadKey`] saying why.
    pub fn key_from_text(
        &self,
        type_id: u64,
        type_name: &str,
        key_fields: &[String],
        text: &str,
    ) -> Result<Vec<u8>, DynamicError> {
        let bad = |reason: String| DynamicError::BadKey {
            key: text.to_string(),
            type_name: type_name.to_string(),
            fields: if key_fields.is_empty() {
                "none".into()
            } else {
                key_fields.join(", ")
            },
            reason,
        };
        if key_fields.is_empty() {
            return Err(bad("the type has no primary key; use --ordinal".into()));
        }
        let pairs = split_pairs(text);
        // Pairs, when the text reads as pairs naming fields of the type
        // (or the key needs several fields); else one field's value.
        let named = match &pairs {
            Some(pairs) => {
                key_fields.len() > 1
                    || pairs
                        .iter()
                        .any(|(k, _)| self.slot_field(type_id, k).is_some())
            }
            None => false,
        };
        let values: Vec<String> = if named {
            let pairs = pairs.expect("named implies pairs");
            if let Some((k, _)) = pairs.iter().find(|(k, _)| !key_fields.contains(k)) {
                return Err(bad(format!("{k} is not a key field")));
            }
            let mut values = Vec::with_capacity(key_fields.len());
            for f in key_fields {
                let mut given = pairs.iter().filter(|(k, _)| k == f);
                let Some((_, v)) = given.next() else {
                    return Err(bad(format!("no value for key field {f}")));
                };
                if given.next().is_some() {
                    return Err(bad(format!("key field {f} is given twice")));
                }
                values.push(v.clone());
            }
            values
        } else if key_fields.len() == 1 {
            vec![text.to_string()]
        } else {
            return Err(bad(format!(
                "the key has {} fields: give each as field=value, separated by commas",
                key_fields.len()
            )));
        };
        let mut out = Vec::new();
        for (name, value) in key_fields.iter().zip(&values) {
            let field = self
                .slot_field(type_id, name)
                .ok_or_else(|| bad(format!("the schema has no field {name}")))?;
            let FieldKind::Slot { ty, .. } = &field.kind else {
                return Err(bad(format!("key field {name} is a group")));
            };
            let what = |why: String| bad(format!("{name}: {why}"));
            match ty {
                Ty::Bool => out.push(match value.as_str() {
                    "true" => 1,
                    "false" => 0,
                    _ => return Err(what(format!("{value:?} is not true or false"))),
                }),
                Ty::Int8 | Ty::Int16 | Ty::Int32 | Ty::Int64 => {
                    let bits = ty.bits().expect("integers have widths");
                    let v: i64 = value
                        .trim()
                        .parse()
                        .map_err(|_| what(format!("{value:?} is not an integer")))?;
                    let (min, max) = (i64::MIN >> (64 - bits), i64::MAX >> (64 - bits));
                    if v < min || v > max {
                        return Err(what(format!("{v} is outside {min}..={max}")));
                    }
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ty::UInt8 | Ty::UInt16 | Ty::UInt32 | Ty::UInt64 => {
                    let bits = ty.bits().expect("integers have widths");
                    let v: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| what(format!("{value:?} is not a whole number")))?;
                    let max = u64::MAX >> (64 - bits);
                    if v > max {
                        return Err(what(format!("{v} is over {max}")));
                    }
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ty::Enum(id) => {
                    let names = self.enumerants(*id);
                    let v = match names.iter().position(|n| n == value) {
                        Some(i) => i as u64,
                        None => value.trim().parse::<u16>().map(u64::from).map_err(|_| {
                            what(format!(
                                "{value:?} is not one of {}",
                                if names.is_empty() {
                                    "its enumerants".to_string()
                                } else {
                                    names.join(", ")
                                }
                            ))
                        })?,
                    };
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ty::Text => push_sized(&mut out, value.as_bytes()),
                Ty::Data => push_sized(&mut out, &hex(value).map_err(what)?),
                other => return Err(what(format!("a {other:?} field cannot be a key"))),
            }
        }
        Ok(out)
    }
}

impl DynamicSchema {
    /// The key of `record` (a rendering of struct `type_id`) as text in
    /// the syntax above, so that it can be given back as a key: one
    /// field's value alone, several as `field=value` pairs with `,`, `=`
    /// and `\\` escaped; data in hex. `None` for a type without a key.
    pub fn key_text(&self, type_id: u64, key_fields: &[String], record: &Value) -> Option<String> {
        if key_fields.is_empty() {
            return None;
        }
        let value = |f: &str| -> String {
            let is_data = matches!(
                self.slot_field(type_id, f).map(|f| &f.kind),
                Some(FieldKind::Slot { ty: Ty::Data, .. })
            );
            match record.get(f) {
                Some(Value::String(s)) if is_data => match super::json::unbase64(s) {
                    Some(bytes) => {
                        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                        format!("0x{hex}")
                    }
                    None => s.clone(),
                },
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            }
        };
        if let [only] = key_fields {
            return Some(value(only));
        }
        let escape = |s: String| {
            s.replace('\\', "\\\\")
                .replace(',', "\\,")
                .replace('=', "\\=")
        };
        Some(
            key_fields
                .iter()
                .map(|f| format!("{f}={}", escape(value(f))))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

fn push_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if !digits.len().is_multiple_of(2) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{text:?} is not data in hex (such as 0xbeef)"));
    }
    Ok((0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("checked hex digits"))
        .collect())
}

/// `a=1,b=x\,y` as pairs, with escapes undone; `None` when some part has
/// no unescaped `=`.
fn split_pairs(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let (mut name, mut value, mut in_value) = (String::new(), String::new(), false);
    let mut chars = text.chars();
    let mut push = |name: &mut String, value: &mut String, in_value: bool| {
        if !in_value {
            return false;
        }
        pairs.push((std::mem::take(name), std::mem::take(value)));
        true
    };
    while let Some(c) = chars.next() {
        let target = if in_value { &mut value } else { &mut name };
        match c {
            '\\' => target.push(chars.next().unwrap_or('\\')),
            '=' if !in_value => in_value = true,
            ',' => {
                if !push(&mut name, &mut value, in_value) {
                    return None;
                }
                in_value = false;
            }
            c => target.push(c),
        }
    }
    if !push(&mut name, &mut value, in_value) {
        return None;
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::split_pairs;

    #[test]
    fn pairs_split_on_unescaped_commas() {
        let p = split_pairs(r"a=1,b=x\,y\=z").unwrap();
        assert_eq!(
            p,
            vec![("a".into(), "1".into()), ("b".into(), "x,y=z".into())]
        );
        assert_eq!(split_pairs("bash"), None);
        assert_eq!(split_pairs("a=1,b"), None);
        assert_eq!(
            split_pairs("a=b=c").unwrap(),
            vec![("a".into(), "b=c".into())]
        );
    }
}
