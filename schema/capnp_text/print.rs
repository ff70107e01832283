//! Schema nodes as Cap'n Proto source: declarations, fields, types.
//!
//! The printer declares every struct and enum node of a header: nested in
//! its parent when the parent is there and lists it among its nested
//! nodes (its original name), else at the top of the file under a name
//! made unique. Types refer to declarations by their path from the top
//! (`Shelf.Book`): Cap'n Proto has no absolute names, so top-level names
//! avoid every nested name, which would shadow them inside its parent.
//! Groups are printed inline, where their field is; a group whose fields
//! are all in its union as `name :union` (with `@N!` when the union kept
//! an ordinal from before Cap'n Proto 0.3).

use super::{value, CapnpTextError};
use capnp::schema_capnp::{field, node, type_};
use std::collections::{HashMap, HashSet};

/// How a type refers to `schema.capnp`'s `Node` (burrow's `Header.nodes`)
/// when the header does not declare it itself.
const SCHEMA_NODE: &str = "import \"/capnp/schema.capnp\".Node";

/// Prints one file's declarations from a header's nodes.
pub(super) struct Printer<'a> {
    blob: &'a str,
    /// The header's nodes, by id (groups included).
    nodes: HashMap<u64, node::Reader<'a>>,
    /// How a type names each declared node: `Movie`, `Shelf.Book`.
    paths: HashMap<u64, String>,
    /// The header's top-level declarations: id and name, in file order.
    top: Vec<(u64, String)>,
    /// Each node's nested declarations: id and name, in its order.
    nested: HashMap<u64, Vec<(u64, String)>>,
}

/// A node as errors name it: display name and id.
pub(super) fn label(node: node::Reader<'_>) -> String {
    let display = node
        .get_display_name()
        .ok()
        .and_then(|n| n.to_str().ok())
        .unwrap_or("(unnamed)");
    format!("{} (@0x{:016x})", comment_text(display), node.get_id())
}

/// Text made safe for a `#` comment: control characters dropped.
pub(super) fn comment_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// A Cap'n Proto identifier: ASCII letters and digits, a letter first
/// (the compiler refuses underscores in declaration names).
fn is_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A type's name: an identifier with a capital first letter.
fn is_type_name(name: &str) -> bool {
    is_identifier(name) && name.starts_with(|c: char| c.is_ascii_uppercase())
}

/// A field's or an enumerant's name: an identifier with a lower-case
/// first letter.
pub(super) fn is_member_name(name: &str) -> bool {
    is_identifier(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A field's or an enumerant's name from the header, checked.
fn member_name<'b>(t: capnp::Result<capnp::text::Reader<'b>>) -> Result<&'b str, String> {
    let name = text(t)?;
    if is_member_name(name) {
        Ok(name)
    } else {
        Err(format!(
            "{:?} is not a Cap'n Proto field or enumerant name",
            comment_text(name)
        ))
    }
}

fn text<'b>(t: capnp::Result<capnp::text::Reader<'b>>) -> Result<&'b str, String> {
    t.map_err(|e| e.to_string())?
        .to_str()
        .map_err(|e| e.to_string())
}

/// A nested declaration's name from the header, checked.
fn type_name<'b>(t: capnp::Result<capnp::text::Reader<'b>>) -> Result<&'b str, String> {
    let name = text(t)?;
    if is_type_name(name) {
        Ok(name)
    } else {
        Err(format!(
            "{:?} is not a Cap'n Proto type name",
            comment_text(name)
        ))
    }
}

/// Fields of a struct node in code order (the order of its source).
fn in_code_order<'b>(
    fields: capnp::struct_list::Reader<'b, field::Owned>,
) -> Vec<field::Reader<'b>> {
    let mut out: Vec<_> = fields.iter().collect();
    out.sort_by_key(|f| f.get_code_order());
    out
}

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

impl<'a> Printer<'a> {
    /// Checks the header's nodes and places their declarations; names in
    /// `reserved` are left to the file's own top-level declarations.
    pub(super) fn new(
        blob: &'a str,
        list: Vec<node::Reader<'a>>,
        reserved: &[&str],
    ) -> Result<Self, CapnpTextError> {
        let mut printer = Printer {
            blob,
            nodes: HashMap::with_capacity(list.len()),
            paths: HashMap::new(),
            top: Vec::new(),
            nested: HashMap::new(),
        };
        for n in &list {
            let kind = match n.which() {
                Ok(node::Struct(_)) | Ok(node::Enum(_)) => None,
                Ok(node::File(())) => Some("a file"),
                Ok(node::Interface(_)) => Some("an interface"),
                Ok(node::Const(_)) => Some("a constant"),
                Ok(node::Annotation(_)) => Some("an annotation"),
                Err(_) => Some("of an unknown kind"),
            };
            if let Some(kind) = kind {
                return Err(printer.unprintable(
                    *n,
                    format!("the node is {kind}; a header carries only structs and enums"),
                ));
            }
            if n.get_is_generic() {
                return Err(printer
                    .unprintable(*n, "a generic type (its parameters are not printed)".into()));
            }
            if printer.nodes.insert(n.get_id(), *n).is_some() {
                return Err(printer.unprintable(*n, "two nodes of the header share its id".into()));
            }
        }
        printer.place(&list, reserved)?;
        Ok(printer)
    }

    fn unprintable(&self, node: node::Reader<'_>, reason: String) -> CapnpTextError {
        CapnpTextError::Unprintable {
            blob: self.blob.to_string(),
            node: label(node),
            reason,
        }
    }

    fn is_group(node: node::Reader<'_>) -> bool {
        matches!(node.which(), Ok(node::Struct(st)) if st.get_is_group())
    }

    /// Decides where each node is declared and the path types name it by.
    fn place(
        &mut self,
        list: &[node::Reader<'a>],
        reserved: &[&str],
    ) -> Result<(), CapnpTextError> {
        let mut placed = HashSet::new();
        for parent in list.iter().filter(|n| !Self::is_group(**n)) {
            let nested = parent
                .get_nested_nodes()
                .map_err(|e| self.unprintable(*parent, e.to_string()))?;
            for entry in nested {
                let id = entry.get_id();
                let Some(child) = self.nodes.get(&id) else {
                    continue;
                };
                if child.get_scope_id() != parent.get_id() || Self::is_group(*child) {
                    continue;
                }
                let name = type_name(entry.get_name())
                    .map_err(|why| self.unprintable(*child, format!("its name: {why}")))?;
                if placed.insert(id) {
                    self.nested
                        .entry(parent.get_id())
                        .or_default()
                        .push((id, name.to_string()));
                }
            }
        }
        let mut tops: Vec<node::Reader<'a>> = list
            .iter()
            .copied()
            .filter(|n| !Self::is_group(*n) && !placed.contains(&n.get_id()))
            .collect();
        tops.sort_by_key(|n| {
            (
                text(n.get_display_name()).unwrap_or_default().to_string(),
                n.get_id(),
            )
        });
        // A top-level name that is also a nested one would be shadowed
        // inside that parent, so top-level names avoid every nested name.
        let mut taken: HashSet<String> = reserved.iter().map(|s| s.to_string()).collect();
        taken.extend(self.nested.values().flatten().map(|(_, name)| name.clone()));
        for n in tops {
            let display = text(n.get_display_name()).map_err(|why| self.unprintable(n, why))?;
            // `file.capnp:Outer.Inner` declared alone is `OuterInner`.
            let base: String = display
                .rsplit_once(':')
                .map_or(display, |(_, path)| path)
                .split('.')
                .collect();
            if !is_type_name(&base) {
                return Err(self.unprintable(
                    n,
                    format!(
                        "its name {:?} is not a Cap'n Proto identifier",
                        comment_text(&base)
                    ),
                ));
            }
            let mut name = base.clone();
            let mut k = 2;
            while !taken.insert(name.clone()) {
                name = format!("{base}{k}");
                k += 1;
            }
            self.top.push((n.get_id(), name));
        }
        let mut stack: Vec<(u64, String)> = self
            .top
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        while let Some((id, path)) = stack.pop() {
            for (child, name) in self.nested.get(&id).into_iter().flatten() {
                stack.push((*child, format!("{path}.{name}")));
            }
            self.paths.insert(id, path);
        }
        for n in list {
            if !Self::is_group(*n) && !self.paths.contains_key(&n.get_id()) {
                return Err(self.unprintable(
                    *n,
                    "its chain of parent scopes loops and never reaches the file".into(),
                ));
            }
        }
        Ok(())
    }

    /// Declares one of burrow's own structs, printed by [`Self::own_decl`]
    /// under `name` with no explicit id.
    pub(super) fn declare_own(
        &mut self,
        node: node::Reader<'a>,
        name: &str,
    ) -> Result<(), CapnpTextError> {
        if let Some(user) = self.nodes.get(&node.get_id()) {
            return Err(self.unprintable(*user, format!("its id is that of burrow's own {name}")));
        }
        self.nodes.insert(node.get_id(), node);
        self.paths.insert(node.get_id(), name.to_string());
        Ok(())
    }

    /// The path of the record struct `type_id`, if the header declares it.
    pub(super) fn record_type(&self, type_id: u64) -> Option<&str> {
        let node = self.nodes.get(&type_id)?;
        match node.which() {
            Ok(node::Struct(st)) if !st.get_is_group() => {
                self.paths.get(&type_id).map(String::as_str)
            }
            _ => None,
        }
    }

    /// Prints one of burrow's own structs (declared with
    /// [`Self::declare_own`]): its fields, a `records` field of type
    /// `AnyPointer` typed as `records_type` if given.
    pub(super) fn own_decl(
        &self,
        out: &mut String,
        node: node::Reader<'a>,
        name: &str,
        records_type: Option<&str>,
    ) -> Result<(), CapnpTextError> {
        out.push_str(&format!(
            "struct {name} {{  # as in burrow.capnp{}\n",
            if records_type.is_some() {
                ", with the records typed"
            } else {
                ""
            }
        ));
        self.fields(out, node, 1, records_type)?;
        out.push_str("}\n");
        Ok(())
    }

    /// Prints every declaration from the header, top-level ones in order.
    pub(super) fn user_decls(&self, out: &mut String) -> Result<(), CapnpTextError> {
        for (id, name) in &self.top {
            out.push('\n');
            self.decl(out, *id, name, 0)?;
        }
        Ok(())
    }

    fn decl(
        &self,
        out: &mut String,
        id: u64,
        name: &str,
        depth: usize,
    ) -> Result<(), CapnpTextError> {
        let node = self.nodes[&id];
        let pad = indent(depth);
        let about = comment_text(text(node.get_display_name()).unwrap_or_default());
        match node.which() {
            Ok(node::Struct(_)) => {
                out.push_str(&format!("{pad}struct {name} @0x{id:016x} {{  # {about}\n"));
                self.fields(out, node, depth + 1, None)?;
            }
            Ok(node::Enum(en)) => {
                out.push_str(&format!("{pad}enum {name} @0x{id:016x} {{  # {about}\n"));
                let list = en
                    .get_enumerants()
                    .map_err(|e| self.unprintable(node, e.to_string()))?;
                let mut enumerants: Vec<_> = list.iter().enumerate().collect();
                enumerants.sort_by_key(|(_, e)| e.get_code_order());
                for (ordinal, e) in enumerants {
                    let ename = member_name(e.get_name())
                        .map_err(|why| self.unprintable(node, format!("an enumerant: {why}")))?;
                    out.push_str(&format!("{}{ename} @{ordinal};\n", indent(depth + 1)));
                }
            }
            _ => unreachable!("Printer::new admits only structs and enums"),
        }
        for (child, child_name) in self.nested.get(&id).into_iter().flatten() {
            self.decl(out, *child, child_name, depth + 1)?;
        }
        out.push_str(&format!("{pad}}}\n"));
        Ok(())
    }

    /// Prints the fields of struct or group `node` in code order, its
    /// union (if any) in one block where its first member is.
    fn fields(
        &self,
        out: &mut String,
        node: node::Reader<'a>,
        depth: usize,
        records_type: Option<&str>,
    ) -> Result<(), CapnpTextError> {
        let Ok(node::Struct(st)) = node.which() else {
            return Err(self.unprintable(node, "a field's group is not a struct".into()));
        };
        let fields = st
            .get_fields()
            .map_err(|e| self.unprintable(node, e.to_string()))?;
        let fields = in_code_order(fields);
        let mut union_done = false;
        for f in &fields {
            if f.get_discriminant_value() == field::NO_DISCRIMINANT {
                self.field(out, node, *f, depth, records_type)?;
            } else if !union_done {
                union_done = true;
                out.push_str(&format!("{}union {{\n", indent(depth)));
                for u in fields
                    .iter()
                    .filter(|u| u.get_discriminant_value() != field::NO_DISCRIMINANT)
                {
                    self.field(out, node, *u, depth + 1, None)?;
                }
                out.push_str(&format!("{}}}\n", indent(depth)));
            }
        }
        Ok(())
    }

    fn field(
        &self,
        out: &mut String,
        owner: node::Reader<'a>,
        f: field::Reader<'a>,
        depth: usize,
        records_type: Option<&str>,
    ) -> Result<(), CapnpTextError> {
        let pad = indent(depth);
        let name = member_name(f.get_name())
            .map_err(|why| self.unprintable(owner, format!("a field: {why}")))?;
        let bad = |why: String| self.unprintable(owner, format!("field {name}: {why}"));
        let ordinal = match f.get_ordinal().which() {
            Ok(field::ordinal::Explicit(n)) => Some(n),
            Ok(field::ordinal::Implicit(())) => None,
            Err(e) => return Err(bad(e.to_string())),
        };
        match f.which().map_err(|e| bad(e.to_string()))? {
            field::Slot(slot) => {
                let ordinal = ordinal.ok_or_else(|| bad("a field without an ordinal".into()))?;
                let ty = slot.get_type().map_err(|e| bad(e.to_string()))?;
                let type_text = match (records_type, ty.which()) {
                    (Some(records), Ok(type_::AnyPointer(_))) if name == "records" => {
                        records.to_string()
                    }
                    _ => self.type_text(ty).map_err(bad)?,
                };
                let default = slot.get_default_value().map_err(|e| bad(e.to_string()))?;
                let default = value::default_text(self, ty, default).map_err(bad)?;
                let default = default.map(|d| format!(" = {d}")).unwrap_or_default();
                out.push_str(&format!("{pad}{name} @{ordinal} :{type_text}{default};\n"));
            }
            field::Group(group) => {
                let node = self
                    .group(group.get_type_id())
                    .ok_or_else(|| bad("its group's node is not in the header".into()))?;
                let Ok(node::Struct(st)) = node.which() else {
                    unreachable!("Self::group returns struct nodes")
                };
                let members = st.get_fields().map_err(|e| bad(e.to_string()))?;
                let union_only = st.get_discriminant_count() > 0
                    && members
                        .iter()
                        .all(|m| m.get_discriminant_value() != field::NO_DISCRIMINANT);
                if union_only {
                    // A union kept an ordinal from before Cap'n Proto 0.3.
                    let ordinal = ordinal.map(|n| format!(" @{n}!")).unwrap_or_default();
                    out.push_str(&format!("{pad}{name}{ordinal} :union {{\n"));
                    for m in in_code_order(members) {
                        self.field(out, node, m, depth + 1, None)?;
                    }
                } else {
                    if ordinal.is_some() {
                        return Err(bad("a group with an ordinal".into()));
                    }
                    out.push_str(&format!("{pad}{name} :group {{\n"));
                    self.fields(out, node, depth + 1, None)?;
                }
                out.push_str(&format!("{pad}}}\n"));
            }
        }
        Ok(())
    }

    /// The group node `id`, if the header carries it as a group.
    fn group(&self, id: u64) -> Option<node::Reader<'a>> {
        self.nodes.get(&id).copied().filter(|n| Self::is_group(*n))
    }

    /// A struct or enum node, by id (for values of its type).
    pub(super) fn node(&self, id: u64) -> Option<node::Reader<'a>> {
        self.nodes.get(&id).copied()
    }

    /// A field type as source text; the error says why it cannot be.
    pub(super) fn type_text(&self, ty: type_::Reader<'_>) -> Result<String, String> {
        use type_::any_pointer::unconstrained;
        Ok(match ty.which().map_err(|e| e.to_string())? {
            type_::Void(()) => "Void".into(),
            type_::Bool(()) => "Bool".into(),
            type_::Int8(()) => "Int8".into(),
            type_::Int16(()) => "Int16".into(),
            type_::Int32(()) => "Int32".into(),
            type_::Int64(()) => "Int64".into(),
            type_::Uint8(()) => "UInt8".into(),
            type_::Uint16(()) => "UInt16".into(),
            type_::Uint32(()) => "UInt32".into(),
            type_::Uint64(()) => "UInt64".into(),
            type_::Float32(()) => "Float32".into(),
            type_::Float64(()) => "Float64".into(),
            type_::Text(()) => "Text".into(),
            type_::Data(()) => "Data".into(),
            type_::List(list) => {
                let element = list.get_element_type().map_err(|e| e.to_string())?;
                format!("List({})", self.type_text(element)?)
            }
            type_::Enum(e) => self.path(e.get_type_id(), "enum")?,
            type_::Struct(s) => self.path(s.get_type_id(), "struct")?,
            type_::Interface(i) => {
                return Err(format!(
                    "interface @0x{:016x}: capabilities cannot be printed",
                    i.get_type_id()
                ))
            }
            type_::AnyPointer(any) => match any.which().map_err(|e| e.to_string())? {
                type_::any_pointer::Unconstrained(u) => {
                    match u.which().map_err(|e| e.to_string())? {
                        unconstrained::AnyKind(()) => "AnyPointer".into(),
                        unconstrained::Struct(()) => "AnyStruct".into(),
                        unconstrained::List(()) => "AnyList".into(),
                        unconstrained::Capability(()) => "Capability".into(),
                    }
                }
                type_::any_pointer::Parameter(_)
                | type_::any_pointer::ImplicitMethodParameter(_) => {
                    return Err("a generic parameter".into())
                }
            },
        })
    }

    fn path(&self, id: u64, what: &str) -> Result<String, String> {
        if let Some(path) = self.paths.get(&id) {
            return Ok(path.clone());
        }
        if id == <node::Reader<'_> as capnp::traits::HasTypeId>::TYPE_ID {
            return Ok(SCHEMA_NODE.into());
        }
        Err(format!("{what} @0x{id:016x} is not in the header"))
    }
}
