//! The producer.

/// Errors of a producer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {}
