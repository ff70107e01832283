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

#[cfg(test)]
mod tests {
    use crate::announcer::AnnouncementLog;
    use crate::blobstore::BlobStore;
    use crate::producer::{ProducerBuilder, ProducerError};
    use crate::schema::blob::DatasetSchema;
    use crate::schema::dynamic::{BuildOptions, DynamicSchema, RecordBuilder};
    use crate::schema::examples::movies_capnp::movie;
    use crate::schema::record::TypeInfo;
    use crate::Error;

    /// The error inside a failed cycle's.
    fn inner(e: &Error) -> &Error {
        match e {
            Error::Producer(ProducerError::Cycle { source, .. }) => source,
            other => other,
        }
    }

    /// The Movie type as a runtime producer sees it: only its nodes.
    fn movie_by_nodes() -> TypeInfo {
        let generated = TypeInfo::of::<movie::Owned>();
        let schema = DatasetSchema::of(std::slice::from_ref(&generated)).unwrap();
        let messages = schema.node_messages();
        let nodes = messages.iter().map(|m| m.get_root().unwrap());
        TypeInfo::from_nodes(generated.type_id, nodes).unwrap()
    }

    /// Invariant: a type given by its nodes is published like generated
    /// code (a text key read by node, records canonicalized); a duplicate
    /// key or a record that does not read back fails the cycle inside
    /// populate, and a failed cycle announces nothing.
    #[tokio::test]
    async fn node_types_publish_and_bad_records_announce_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let info = movie_by_nodes();
        assert!(info.schema().is_none());
        let dynamic = DynamicSchema::of_types(std::slice::from_ref(&info)).unwrap();
        let builder = RecordBuilder::new(&dynamic, info.type_id, BuildOptions::default()).unwrap();
        let type_id = info.type_id;
        let producer = ProducerBuilder::new(store.clone())
            .retention(None)
            .node_type(info, &["title"])
            .build()
            .unwrap();
        let record = |id: u64, title: &str| {
            builder
                .build(&serde_json::json!({"id": id, "title": title}))
                .unwrap()
        };
        let log = AnnouncementLog::new(store.clone());

        let dup = producer
            .run_cycle(|p| {
                p.add_canonical(type_id, &record(1, "Alien"))?;
                p.add_canonical(type_id, &record(2, "Alien"))
            })
            .await
            .unwrap_err();
        assert!(
            matches!(inner(&dup), Error::Producer(ProducerError::DuplicateKey { key, .. }) if key == "title=\"Alien\""),
            "{dup}"
        );
        let garbage = producer
            .run_cycle(|p| p.add_canonical(type_id, &[u64::MAX, 1]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                inner(&garbage),
                Error::Producer(ProducerError::BadRecord { .. })
            ),
            "{garbage}"
        );
        let unknown = producer
            .run_cycle(|p| p.add_canonical(type_id ^ 1, &record(1, "Alien")))
            .await
            .unwrap_err();
        assert!(
            matches!(
                inner(&unknown),
                Error::Producer(ProducerError::UnknownType { .. })
            ),
            "{unknown}"
        );
        assert!(log.latest().await.unwrap().is_none(), "nothing announced");

        let report = producer
            .run_cycle(|p| {
                p.add_canonical(type_id, &record(1, "Alien"))?;
                p.add_canonical(type_id, &record(2, "Heat"))
            })
            .await
            .unwrap();
        assert!(report.published);
        assert_eq!(log.latest().await.unwrap().unwrap().version, 1);
    }
}
