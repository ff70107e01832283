//! The dataset of the crash tests, shared by the test and the process it
//! kills: generation `g` of a small dataset of the workload generator's
//! Movies (`burrow::testing::workload`). Record 0 is at generation `g`, so
//! its title names the generation, and any state a consumer holds says
//! which model it must equal.

use burrow::testing::workload::{self, Movie};
use std::collections::BTreeMap;

/// id → record.
pub type CrashModel = BTreeMap<u64, Movie>;

pub fn generation(g: u64) -> CrashModel {
    let mut model = CrashModel::new();
    model.insert(0, Movie::new(0, g));
    for i in 1..40u64 {
        if (i + g).is_multiple_of(5) {
            continue;
        }
        model.insert(i, Movie::new(i, g / (1 + i % 3)));
    }
    model
}

/// The generation a state's record 0 names.
#[allow(dead_code)] // used by the test, not the process
pub fn generation_of(model: &CrashModel) -> Option<u64> {
    workload::generation_of(0, &model.get(&0)?.title)
}
