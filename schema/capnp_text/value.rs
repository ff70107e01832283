//! Default values as Cap'n Proto source: `= -5`, `= "text"`, `= 0x"beef"`,
//! `= [1.5, 2.0]`, `= (title = "Dune", genres = [scifi])`.
//!
//! A default changes how a field is stored (a primitive is XORed with it, a
//! null pointer reads as it), so it is printed exactly: floats by their
//! shortest round-trip text (`inf`, `nan`), text with escapes, and pointer
//! defaults walked by the struct and enum nodes of the header. Only values
//! other than the type's zero are printed, as the compiler's own printer
//! does: `= 0` lays out and reads the same as no default.

use super::print::Printer;
use capnp::any_pointer;
use capnp::private::layout::{PointerReader, StructReader};
use capnp::schema_capnp::{field, node, type_, value};
use capnp::traits::IntoInternalStructReader;

/// An error's text (Cap'n Proto's and `NotInSchema` alike).
fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// The text after `=` for a field of type `ty` whose default is `v`, or
/// `None` when the default is the type's zero.
pub(super) fn default_text(
    p: &Printer<'_>,
    ty: type_::Reader<'_>,
    v: value::Reader<'_>,
) -> Result<Option<String>, String> {
    let ty_which = ty.which().map_err(e)?;
    Ok(match v.which().map_err(e)? {
        value::Void(()) => None,
        value::Bool(b) => b.then(|| "true".to_string()),
        value::Int8(x) => (x != 0).then(|| x.to_string()),
        value::Int16(x) => (x != 0).then(|| x.to_string()),
        value::Int32(x) => (x != 0).then(|| x.to_string()),
        value::Int64(x) => (x != 0).then(|| x.to_string()),
        value::Uint8(x) => (x != 0).then(|| x.to_string()),
        value::Uint16(x) => (x != 0).then(|| x.to_string()),
        value::Uint32(x) => (x != 0).then(|| x.to_string()),
        value::Uint64(x) => (x != 0).then(|| x.to_string()),
        value::Float32(x) => (x.to_bits() != 0).then(|| float32(x)),
        value::Float64(x) => (x.to_bits() != 0).then(|| float64(x)),
        value::Enum(x) => match ty_which {
            type_::Enum(en) if x != 0 => Some(enumerant(p, en.get_type_id(), x)?),
            _ => None,
        },
        value::Text(t) => {
            if v.has_text() {
                Some(quote(t.map_err(e)?.as_bytes()))
            } else {
                None
            }
        }
        value::Data(d) => {
            if v.has_data() {
                Some(hex(d.map_err(e)?))
            } else {
                None
            }
        }
        value::List(any) | value::Struct(any) => {
            if any.is_null() {
                return Ok(None);
            }
            Some(pointer(p, ty, any)?)
        }
        value::Interface(()) => None,
        value::AnyPointer(any) => {
            if any.is_null() {
                None
            } else {
                return Err("an AnyPointer default cannot be printed".into());
            }
        }
    })
}

/// A Float32 as text that parses back to the same bits (but NaN's payload).
pub(super) fn float32(x: f32) -> String {
    float_text(f64::from(x), format!("{x:?}"))
}

/// A Float64 as text that parses back to the same bits (but NaN's payload).
pub(super) fn float64(x: f64) -> String {
    float_text(x, format!("{x:?}"))
}

fn float_text(x: f64, shortest: String) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        shortest
    }
}

/// A text literal: `"` and `\` escaped, control bytes as `\xHH`.
pub(super) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A data literal: `0x"0a1b"`.
pub(super) fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x\"{digits}\"")
}

fn enumerant(p: &Printer<'_>, enum_id: u64, index: u16) -> Result<String, String> {
    let node = p
        .node(enum_id)
        .ok_or_else(|| format!("enum @0x{enum_id:016x} is not in the header"))?;
    let Ok(node::Enum(en)) = node.which() else {
        return Err(format!("@0x{enum_id:016x} is not an enum"));
    };
    let list = en.get_enumerants().map_err(|e| e.to_string())?;
    if u32::from(index) >= list.len() {
        return Err(format!("enum value {index} is past the enum's enumerants"));
    }
    let name = list
        .get(u32::from(index))
        .get_name()
        .map_err(|e| e.to_string())?;
    let name = name.to_str().map_err(|e| e.to_string())?;
    if !super::print::is_member_name(name) {
        return Err(format!("enumerant {name:?} is not an identifier"));
    }
    Ok(name.to_string())
}

/// A struct's raw reader: read through a stand-in struct type, since a
/// struct reader is untyped underneath (only the node gives it fields).
fn raw_struct<'b>(any: any_pointer::Reader<'b>) -> Result<StructReader<'b>, String> {
    let stand_in: node::Reader<'b> = any.get_as().map_err(e)?;
    Ok(stand_in.into_internal_struct_reader())
}

/// A non-null pointer value of type `ty`: text, data, a list or a struct.
fn pointer(
    p: &Printer<'_>,
    ty: type_::Reader<'_>,
    any: any_pointer::Reader<'_>,
) -> Result<String, String> {
    match ty.which().map_err(e)? {
        type_::Text(()) => Ok(quote(
            any.get_as::<capnp::text::Reader<'_>>()
                .map_err(e)?
                .as_bytes(),
        )),
        type_::Data(()) => Ok(hex(any.get_as::<capnp::data::Reader<'_>>().map_err(e)?)),
        type_::List(list) => list_value(p, list.get_element_type().map_err(e)?, any),
        type_::Struct(st) => {
            let node = p.node(st.get_type_id()).ok_or_else(|| {
                format!("struct @0x{:016x} is not in the header", st.get_type_id())
            })?;
            struct_value(p, node, raw_struct(any)?)
        }
        _ => Err("a pointer default of this type cannot be printed".into()),
    }
}

fn joined<T>(
    items: impl Iterator<Item = T>,
    text: impl Fn(T) -> Result<String, String>,
) -> Result<String, String> {
    let parts = items.map(text).collect::<Result<Vec<_>, _>>()?;
    Ok(format!("[{}]", parts.join(", ")))
}

/// A list value whose elements are of type `element`.
fn list_value(
    p: &Printer<'_>,
    element: type_::Reader<'_>,
    any: any_pointer::Reader<'_>,
) -> Result<String, String> {
    use capnp::primitive_list;
    macro_rules! numbers {
        ($t:ty, $show:expr) => {{
            let list: primitive_list::Reader<'_, $t> = any.get_as().map_err(e)?;
            joined(list.iter(), |x| Ok($show(x)))
        }};
    }
    match element.which().map_err(e)? {
        type_::Void(()) => numbers!((), |_| "void".to_string()),
        type_::Bool(()) => numbers!(bool, |x: bool| x.to_string()),
        type_::Int8(()) => numbers!(i8, |x: i8| x.to_string()),
        type_::Int16(()) => numbers!(i16, |x: i16| x.to_string()),
        type_::Int32(()) => numbers!(i32, |x: i32| x.to_string()),
        type_::Int64(()) => numbers!(i64, |x: i64| x.to_string()),
        type_::Uint8(()) => numbers!(u8, |x: u8| x.to_string()),
        type_::Uint16(()) => numbers!(u16, |x: u16| x.to_string()),
        type_::Uint32(()) => numbers!(u32, |x: u32| x.to_string()),
        type_::Uint64(()) => numbers!(u64, |x: u64| x.to_string()),
        type_::Float32(()) => numbers!(f32, float32),
        type_::Float64(()) => numbers!(f64, float64),
        type_::Enum(en) => {
            let list: primitive_list::Reader<'_, u16> = any.get_as().map_err(e)?;
            joined(list.iter(), |x| enumerant(p, en.get_type_id(), x))
        }
        type_::Text(()) => {
            let list: capnp::text_list::Reader<'_> = any.get_as().map_err(e)?;
            joined(list.iter(), |t| Ok(quote(t.map_err(e)?.as_bytes())))
        }
        type_::Data(()) => {
            let list: capnp::data_list::Reader<'_> = any.get_as().map_err(e)?;
            joined(list.iter(), |d| Ok(hex(d.map_err(e)?)))
        }
        type_::List(inner) => {
            let inner = inner.get_element_type().map_err(e)?;
            let list: capnp::any_pointer_list::Reader<'_> = any.get_as().map_err(e)?;
            joined(list.iter(), |item| list_value(p, inner, item.map_err(e)?))
        }
        type_::Struct(st) => {
            let node = p.node(st.get_type_id()).ok_or_else(|| {
                format!("struct @0x{:016x} is not in the header", st.get_type_id())
            })?;
            let list: capnp::struct_list::Reader<'_, node::Owned> = any.get_as().map_err(e)?;
            joined(list.iter(), |item| {
                struct_value(p, node, item.into_internal_struct_reader())
            })
        }
        _ => Err("a list default of this element type cannot be printed".into()),
    }
}

/// The literal of a null pointer of type `ty` without a default.
fn empty_literal(ty: type_::Reader<'_>) -> Result<String, String> {
    Ok(match ty.which().map_err(|e| e.to_string())? {
        type_::Text(()) => "\"\"".into(),
        type_::Data(()) => "0x\"\"".into(),
        type_::List(_) => "[]".into(),
        type_::Struct(_) => "()".into(),
        _ => return Err("a null pointer of this type cannot be printed".into()),
    })
}

/// A struct value `(a = 1, b = "x")`: the fields that differ from their
/// defaults, and the union member that is set.
fn struct_value(
    p: &Printer<'_>,
    node: node::Reader<'_>,
    reader: StructReader<'_>,
) -> Result<String, String> {
    let Ok(node::Struct(st)) = node.which() else {
        return Err(format!("@0x{:016x} is not a struct", node.get_id()));
    };
    let active = (st.get_discriminant_count() > 0)
        .then(|| reader.get_data_field::<u16>(st.get_discriminant_offset() as usize));
    let mut fields: Vec<_> = st.get_fields().map_err(e)?.iter().collect();
    fields.sort_by_key(|f| f.get_code_order());
    let mut parts = Vec::new();
    for f in fields {
        let in_union = f.get_discriminant_value() != field::NO_DISCRIMINANT;
        if in_union && Some(f.get_discriminant_value()) != active {
            continue;
        }
        let name = f
            .get_name()
            .map_err(e)?
            .to_str()
            .map_err(|e| e.to_string())?;
        if !super::print::is_member_name(name) {
            return Err(format!("field {name:?} is not an identifier"));
        }
        let text = match f.which().map_err(e)? {
            field::Group(group) => {
                let group = p
                    .node(group.get_type_id())
                    .ok_or_else(|| format!("group {name} is not in the header"))?;
                let text = struct_value(p, group, reader)?;
                (in_union || text != "()").then_some(text)
            }
            field::Slot(slot) => {
                let ty = slot.get_type().map_err(e)?;
                let default = slot.get_default_value().map_err(e)?;
                slot_value(p, ty, default, slot.get_offset() as usize, reader, in_union)?
            }
        };
        if let Some(text) = text {
            parts.push(format!("{name} = {text}"));
        }
    }
    Ok(format!("({})", parts.join(", ")))
}

/// One field of a struct value: `None` when it holds its default (and is
/// not the union's set member, which is always shown).
fn slot_value(
    p: &Printer<'_>,
    ty: type_::Reader<'_>,
    default: value::Reader<'_>,
    offset: usize,
    reader: StructReader<'_>,
    always: bool,
) -> Result<Option<String>, String> {
    // A primitive is stored XORed with its default: the stored bits are
    // zero when it holds the default, and the value is stored ^ default.
    let bits = |width: usize| -> u64 {
        match width {
            8 => u64::from(reader.get_data_field::<u8>(offset)),
            16 => u64::from(reader.get_data_field::<u16>(offset)),
            32 => u64::from(reader.get_data_field::<u32>(offset)),
            _ => reader.get_data_field::<u64>(offset),
        }
    };
    let default_bits = match default.which().map_err(e)? {
        value::Bool(b) => u64::from(b),
        value::Int8(x) => u64::from(x as u8),
        value::Int16(x) => u64::from(x as u16),
        value::Int32(x) => u64::from(x as u32),
        value::Int64(x) => x as u64,
        value::Uint8(x) => u64::from(x),
        value::Uint16(x) | value::Enum(x) => u64::from(x),
        value::Uint32(x) => u64::from(x),
        value::Uint64(x) => x,
        value::Float32(x) => u64::from(x.to_bits()),
        value::Float64(x) => x.to_bits(),
        _ => 0,
    };
    let primitive = |width: usize, show: &dyn Fn(u64) -> String| -> Option<String> {
        let stored = bits(width);
        (always || stored != 0).then(|| show(stored ^ default_bits))
    };
    Ok(match ty.which().map_err(e)? {
        type_::Void(()) => always.then(|| "void".to_string()),
        type_::Bool(()) => {
            let stored = reader.get_bool_field(offset);
            (always || stored).then(|| (stored ^ (default_bits != 0)).to_string())
        }
        type_::Int8(()) => primitive(8, &|b| (b as u8 as i8).to_string()),
        type_::Int16(()) => primitive(16, &|b| (b as u16 as i16).to_string()),
        type_::Int32(()) => primitive(32, &|b| (b as u32 as i32).to_string()),
        type_::Int64(()) => primitive(64, &|b| (b as i64).to_string()),
        type_::Uint8(()) | type_::Uint16(()) | type_::Uint32(()) | type_::Uint64(()) => {
            let width = match ty.which().map_err(e)? {
                type_::Uint8(()) => 8,
                type_::Uint16(()) => 16,
                type_::Uint32(()) => 32,
                _ => 64,
            };
            primitive(width, &|b| b.to_string())
        }
        type_::Float32(()) => primitive(32, &|b| float32(f32::from_bits(b as u32))),
        type_::Float64(()) => primitive(64, &|b| float64(f64::from_bits(b))),
        type_::Enum(en) => {
            let stored = bits(16);
            if always || stored != 0 {
                Some(enumerant(
                    p,
                    en.get_type_id(),
                    (stored ^ default_bits) as u16,
                )?)
            } else {
                None
            }
        }
        _ => {
            let ptr: PointerReader<'_> = reader.get_pointer_field(offset);
            let any = any_pointer::Reader::new(ptr);
            if any.is_null() {
                // A null pointer reads as the field's default (the set
                // union member is shown even then).
                if !always {
                    return Ok(None);
                }
                return match default_text(p, ty, default)? {
                    Some(text) => Ok(Some(text)),
                    None => empty_literal(ty).map(Some),
                };
            }
            Some(pointer(p, ty, any)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_so_they_parse_back() {
        assert_eq!(float64(0.25), "0.25");
        assert_eq!(float64(1e300), "1e300");
        assert_eq!(float64(-0.0), "-0.0");
        assert_eq!(float64(f64::INFINITY), "inf");
        assert_eq!(float64(f64::NEG_INFINITY), "-inf");
        assert_eq!(float64(f64::NAN), "nan");
        assert_eq!(float32(0.1), "0.1");
        assert_eq!(float32(-2.0), "-2.0");
    }

    #[test]
    fn text_and_data_literals_escape_what_they_must() {
        assert_eq!(quote(b"a\"b\\c\nd\x01"), r#""a\"b\\c\nd\x01""#);
        assert_eq!(quote("héllo".as_bytes()), "\"héllo\"");
        assert_eq!(hex(&[0xbe, 0xef, 0x01]), "0x\"beef01\"");
    }
}
