//! Record types given by their schema nodes at run time, with no generated
//! code: what `burrow publish` registers for a schema it compiled from a
//! `.capnp` file.
//!
//! [`ProducerBuilder::node_type`] registers the type from a
//! [`TypeInfo::from_nodes`] and its primary key's field names;
//! [`Populate::add_canonical`] adds a record of it as a Cap'n Proto message
//! (its root pointer in word 0, one segment), which is canonicalized as a
//! generated builder's record is. Keys are read from the canonical words
//! at the places the node gives the key fields
//! ([`crate::schema::node_key`]), in the same bytes a generated type's
//! keys have; ordinals, blobs and the announcement follow as for any type.

use super::builder::RegisteredType;
use super::{Populate, ProducerBuilder, ProducerError};
use crate::error::Error;
use crate::schema::record::{record_message, KeyBuf, KeySpec, TypeInfo};

/// Encodes the key of a canonical record of a type given by its nodes.
fn node_key_of(spec: &KeySpec, words: &[u64], out: &mut KeyBuf) -> capnp::Result<()> {
    if spec.encode_words(words, out) {
        return Ok(());
    }
    match spec.encode_by_node(words, out) {
        Some(result) => result.map_err(|reason| capnp::Error::failed(format!("its key: {reason}"))),
        None => Err(capnp::Error::failed(
            "a type given by its nodes has no key resolved by node".into(),
        )),
    }
}

impl ProducerBuilder {
    /// Registers the record type `info` describes by its schema nodes
    /// ([`TypeInfo::from_nodes`]), with a primary key of the named fields
    /// (as [`ProducerBuilder::primary_key`]). Its records are added with
    /// [`Populate::add_canonical`].
    pub fn node_type(self, info: TypeInfo, key: &[&str]) -> Self {
        let registered = KeySpec::resolve(&info, key)
            .map(|spec| RegisteredType {
                rust_type: None,
                key_fields: spec.names().map(str::to_string).collect(),
                key: Some(spec),
                info,
                key_of: node_key_of,
                indexes: Vec::new(),
            })
            .map_err(Error::from);
        self.push_type(registered)
    }
}

impl Populate<'_> {
    /// Adds a record of the registered type of node id `type_id` (any
    /// registered type, generated or given by its nodes), as the words of
    /// a single-segment message whose root is the record's struct. The
    /// words are read bounds-checked and canonicalized as a generated
    /// builder's record is; a message that does not read back or a type
    /// not registered is an error naming it.
    pub fn add_canonical(&mut self, type_id: u64, words: &[u64]) -> Result<(), Error> {
        let t = self
            .type_position(type_id)
            .ok_or_else(|| ProducerError::UnknownType {
                type_name: format!("{type_id:#018x}"),
            })?;
        // Canonicalizing reads the message twice (its size, then its
        // objects); the bound keeps shared pointers from multiplying that.
        let message = record_message(words, 4 * words.len() as u64 + 64);
        let root = message
            .get_root::<capnp::any_pointer::Reader<'_>>()
            .map_err(|source| ProducerError::BadRecord {
                type_name: format!("{type_id:#018x}"),
                source,
            })?;
        self.add_root(t, root)
    }
}
