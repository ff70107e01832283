//! The dataset of the crash tests, shared by the test and the process it
//! kills: generation `g` of a small Movie dataset. Record 0 names its
//! generation, so any state a consumer holds says which model it must equal.

use std::collections::BTreeMap;

/// id → (title, year).
pub type CrashModel = BTreeMap<u64, (String, u32)>;

pub fn generation(g: u64) -> CrashModel {
    let mut model = CrashModel::new();
    model.insert(0, (format!("generation {g}"), 2000));
    for i in 1..40u64 {
        if (i + g).is_multiple_of(5) {
            continue;
        }
        model.insert(
            i,
            (format!("movie {i} v{}", g / (1 + i % 3)), 1900 + i as u32),
        );
    }
    model
}

/// The generation a state's record 0 names.
#[allow(dead_code)] // used by the test, not the process
pub fn generation_of(model: &CrashModel) -> Option<u64> {
    model.get(&0)?.0.strip_prefix("generation ")?.parse().ok()
}
