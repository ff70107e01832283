//! Validators: checks that see a cycle's new state before it is announced.
//! A validator that fails stops the cycle before anything is published.

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
