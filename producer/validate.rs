//! Validators: checks that see a cycle's new state before it is announced.
//! A validator that fails stops the cycle before anything is published.
//!
//! Two kinds: a [`Validator`] sees each type's counts ([`TypeChange`]); a
//! [`RecordValidator`] sees the records themselves ([`CycleDiff`]: added,
//! removed, changed old and new, and the new state), so that a check such
//! as "no more than 5% of movies may lose their title" can be written.
//! Both run on full and incremental cycles: the count validators first,
//! then the record validators, each kind in the order added.

use super::builder::RegisteredType;
use super::state::Changed;
use super::ProducerError;
use crate::error::Error;
use crate::schema::record::{record_message, OneSegment, RecordType, TypeInfo};

/// What one cycle did to one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChange {
    /// The type's display name.
    pub type_name: String,
    /// Records at the last announced version.
    pub records_before: u32,
    /// Records at the new version.
    pub records_after: u32,
    /// Records whose keys are new.
    pub added: u32,
    /// Records whose keys stayed and whose content changed.
    pub changed: u32,
    /// Records whose keys are gone.
    pub removed: u32,
}

/// Checks a cycle before it is announced.
///
/// # Contract
///
/// `validate` is called once per cycle that changes something, after the
/// new state is computed and before any blob is written. An `Err` stops the
/// cycle: nothing is published, the producer stays at its last announced
/// version, and the cycle's error names the validator and its reason.
pub trait Validator: Send + Sync {
    /// A short name for error messages.
    fn name(&self) -> &str;
    /// Checks the changes that would make `version`; `Err` says why the cycle must stop.
    fn validate(&self, version: u64, changes: &[TypeChange]) -> Result<(), String>;
}

/// Refuses a cycle that changes any type's record count by more than a
/// fraction of its previous count (a populate that lost half its input, for
/// instance). A type's first cycle (no records before) is not checked.
#[derive(Debug, Clone)]
pub struct RecordCountChangeLimit {
    /// The largest change allowed, as a fraction of the previous count (0.5: half).
    pub max_fraction: f64,
}

impl Validator for RecordCountChangeLimit {
    fn name(&self) -> &str {
        "record count change limit"
    }

    fn validate(&self, _version: u64, changes: &[TypeChange]) -> Result<(), String> {
        for c in changes {
            if c.records_before == 0 {
                continue;
            }
            let delta = (i64::from(c.records_after) - i64::from(c.records_before)).unsigned_abs();
            let fraction = delta as f64 / f64::from(c.records_before);
            if fraction > self.max_fraction {
                return Err(format!(
                    "{}: record count went from {} to {} ({:.1}% change, limit {:.1}%)",
                    c.type_name,
                    c.records_before,
                    c.records_after,
                    fraction * 100.0,
                    self.max_fraction * 100.0
                ));
            }
        }
        Ok(())
    }
}

/// A validator from a closure.
pub struct FnValidator<F> {
    name: String,
    check: F,
}

impl<F> FnValidator<F>
where
    F: Fn(u64, &[TypeChange]) -> Result<(), String> + Send + Sync,
{
    /// A validator named `name` that runs `check`.
    pub fn new(name: impl Into<String>, check: F) -> Self {
        FnValidator {
            name: name.into(),
            check,
        }
    }
}

impl<F> Validator for FnValidator<F>
where
    F: Fn(u64, &[TypeChange]) -> Result<(), String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, version: u64, changes: &[TypeChange]) -> Result<(), String> {
        (self.check)(version, changes)
    }
}

/// A cycle's changes with their records, as [`RecordValidator`]s see them:
/// for each registered type, the records added, removed and changed (old
/// and new, by ordinal; a changed record kept its key) and the new state.
pub struct CycleDiff<'a> {
    pub(super) version: u64,
    pub(super) changes: &'a [TypeChange],
    pub(super) types: &'a [RegisteredType],
    /// One per registered type, in registration order.
    pub(super) diffs: &'a [Changed<'a>],
}

impl<'a> CycleDiff<'a> {
    /// The version the cycle would publish.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Each type's counts, as [`Validator`]s see them.
    pub fn changes(&self) -> &[TypeChange] {
        self.changes
    }

    /// The changed records of type `T`; an error if `T` is not registered.
    pub fn records<T: RecordType>(&self) -> Result<RecordChanges<'_, T>, Error> {
        let id = std::any::TypeId::of::<T>();
        let t = self
            .types
            .iter()
            .position(|t| t.rust_type == Some(id))
            .ok_or_else(|| ProducerError::UnknownType {
                type_name: TypeInfo::of::<T>().name,
            })?;
        Ok(RecordChanges {
            name: &self.types[t].info.name,
            diff: &self.diffs[t],
            _type: std::marker::PhantomData,
        })
    }
}

/// One type's changed records in a [`CycleDiff`].
pub struct RecordChanges<'a, T> {
    name: &'a str,
    diff: &'a Changed<'a>,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<'a, T: RecordType> RecordChanges<'a, T> {
    /// Records before the cycle.
    pub fn count_before(&self) -> u32 {
        self.diff.before.0
    }

    /// Records after the cycle.
    pub fn count_after(&self) -> u32 {
        self.diff.after.0
    }

    fn record(&self, words: &'a [u64]) -> Record<'a, T> {
        Record {
            name: self.name,
            message: record_message(words, u64::MAX >> 8),
            _type: std::marker::PhantomData,
        }
    }

    /// The records whose keys are new, with their ordinals.
    pub fn added(&self) -> impl Iterator<Item = (u32, Record<'a, T>)> + '_ {
        self.diff
            .added
            .iter()
            .map(|&(o, r)| (o, self.record(self.diff.new.record(r))))
    }

    /// The records whose keys are gone, as they were.
    pub fn removed(&self) -> impl Iterator<Item = (u32, Record<'a, T>)> + '_ {
        self.diff
            .removed
            .iter()
            .map(|&(o, r)| (o, self.record(self.diff.prev.batch.record(r))))
    }

    /// The records whose keys stayed and whose content changed: (ordinal,
    /// old record, new record).
    pub fn changed(&self) -> impl Iterator<Item = (u32, Record<'a, T>, Record<'a, T>)> + '_ {
        self.diff.changed.iter().map(|&(o, new, old)| {
            (
                o,
                self.record(self.diff.prev.batch.record(old)),
                self.record(self.diff.new.record(new)),
            )
        })
    }

    /// The record at `ordinal` in the new state.
    pub fn get_after(&self, ordinal: u32) -> Option<Record<'a, T>> {
        self.diff.record_after(ordinal).map(|w| self.record(w))
    }

    /// Every record of the new state, by ordinal (in proportion to the
    /// type, not to the change: for checks of the whole state).
    pub fn iter_after(&self) -> impl Iterator<Item = (u32, Record<'a, T>)> + '_ {
        (0..self.diff.after.1).filter_map(|o| self.get_after(o).map(|r| (o, r)))
    }
}

/// One record of a [`CycleDiff`], read through its generated reader
/// ([`Record::get`]) or by reflection ([`Record::dynamic`]).
pub struct Record<'a, T> {
    name: &'a str,
    message: capnp::message::Reader<OneSegment<'a>>,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T: RecordType> Record<'_, T> {
    /// The record's generated reader.
    pub fn get(&self) -> Result<<T as capnp::traits::Owned>::Reader<'_>, Error> {
        self.message.get_root().map_err(|source| {
            ProducerError::BadRecord {
                type_name: self.name.to_string(),
                source,
            }
            .into()
        })
    }

    /// The record as a dynamic struct (fields by name).
    pub fn dynamic(&self) -> Result<capnp::dynamic_struct::Reader<'_>, Error> {
        Ok(T::dynamic(self.get()?))
    }
}

/// Checks a cycle's changed records before it is announced.
///
/// # Contract
///
/// As [`Validator`]'s: called once per cycle (full or incremental) that
/// changes something, after the record-count [`Validator`]s and before
/// any blob is written; an `Err` stops the cycle, naming the validator.
pub trait RecordValidator: Send + Sync {
    /// A short name for error messages.
    fn name(&self) -> &str;
    /// Checks the cycle's changes; `Err` says why the cycle must stop.
    fn validate(&self, cycle: &CycleDiff<'_>) -> Result<(), String>;
}

/// A [`RecordValidator`] from a closure.
pub struct FnRecordValidator<F> {
    name: String,
    check: F,
}

impl<F> FnRecordValidator<F>
where
    F: Fn(&CycleDiff<'_>) -> Result<(), String> + Send + Sync,
{
    /// A validator named `name` that runs `check`.
    pub fn new(name: impl Into<String>, check: F) -> Self {
        FnRecordValidator {
            name: name.into(),
            check,
        }
    }
}

impl<F> RecordValidator for FnRecordValidator<F>
where
    F: Fn(&CycleDiff<'_>) -> Result<(), String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, cycle: &CycleDiff<'_>) -> Result<(), String> {
        (self.check)(cycle)
    }
}
