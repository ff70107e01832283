//! The record type `burrow publish` publishes: its schema compiled from a
//! `.capnp` file by the Cap'n Proto compiler the build uses (embedded as
//! WebAssembly, `capnpc-embedded`), or read from a compiled schema (the
//! `CodeGeneratorRequest` of `capnp compile -o-`), and the struct the
//! `--type` names in it.

use super::input::read_all;
use crate::config::PublishConfig;
use anyhow::{bail, Context, Result};
use burrow::schema::dynamic::DynamicSchema;
use burrow::schema::record::TypeInfo;
use capnp::schema_capnp::{code_generator_request, node};

/// The record type, by its nodes.
pub struct RecordSchema {
    pub info: TypeInfo,
    pub dynamic: DynamicSchema,
}

/// The schema's `CodeGeneratorRequest`, compiled or read.
fn request_bytes(cfg: &PublishConfig) -> Result<Vec<u8>> {
    let path = &cfg.schema;
    if path.extension().is_some_and(|e| e == "capnp") {
        let mut compile = capnpc_embedded::CompileCommand::new();
        compile.file(path);
        match &cfg.src_prefix {
            Some(prefix) => compile.src_prefix(prefix),
            None => compile.src_prefix(path.parent().unwrap_or(std::path::Path::new("."))),
        };
        for dir in &cfg.import_paths {
            compile.import_path(dir);
        }
        compile
            .compile()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot compile schema {}", path.display()))
    } else {
        read_all(path)
    }
}

/// Loads the record type `cfg.type_name` of schema `cfg.schema`.
pub fn load(cfg: &PublishConfig) -> Result<RecordSchema> {
    let bytes = request_bytes(cfg)?;
    let shown = cfg.schema.display();
    let message = capnp::serialize::read_message_from_flat_slice(
        &mut &bytes[..],
        capnp::message::ReaderOptions {
            traversal_limit_in_words: Some(1 << 28),
            nesting_limit: 128,
        },
    )
    .with_context(|| {
        format!("{shown} is not a .capnp file or a compiled schema (a CodeGeneratorRequest)")
    })?;
    let request: code_generator_request::Reader<'_> = message
        .get_root()
        .with_context(|| format!("{shown}: not a compiled schema"))?;
    let nodes = request
        .get_nodes()
        .with_context(|| format!("{shown}: cannot read its nodes"))?;
    let mut matches = Vec::new();
    let mut structs = Vec::new();
    for n in nodes.iter() {
        let Ok(node::Struct(st)) = n.which() else {
            continue;
        };
        if st.get_is_group() {
            continue;
        }
        let Some(full) = n.get_display_name().ok().and_then(|t| t.to_str().ok()) else {
            continue;
        };
        let short = full.rsplit_once(':').map_or(full, |(_, s)| s);
        if short == cfg.type_name || full == cfg.type_name {
            matches.push((n.get_id(), full.to_string()));
        }
        structs.push(short.to_string());
    }
    let type_id = match matches.as_slice() {
        [(id, _)] => *id,
        [] => bail!(
            "{shown} has no struct {} (its structs: {})",
            cfg.type_name,
            if structs.is_empty() {
                "none".to_string()
            } else {
                structs.join(", ")
            }
        ),
        more => bail!(
            "{shown} has several structs named {}: {}; give --type its full name",
            cfg.type_name,
            more.iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let info = TypeInfo::from_nodes(type_id, nodes.iter())
        .map_err(|reason| anyhow::anyhow!("{shown}: {reason}"))?;
    let dynamic = DynamicSchema::of_types(std::slice::from_ref(&info))
        .with_context(|| format!("{shown}: cannot model {}", info.name))?;
    Ok(RecordSchema { info, dynamic })
}
