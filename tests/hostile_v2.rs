//! Invariant: a v2 body whose *structure* is damaged is refused with an
//! error naming what is wrong, and a consumer at an earlier version keeps
//! serving it (its version unchanged, every record still found by key).
//!
//! Each test publishes real blobs with the producer (the Movie workload),
//! rewrites words of the one-segment body (record lists, record pointers,
//! presence bitmap, key index) and reseals both checksums, so that only
//! the body's own checks stand between the damage and a reader: the
//! record lists' pointers (`schema/blob/read.rs`, at open), the layout
//! proof (`schema/wire.rs` `check_records`, when a blob enters the cache)
//! and the index checks. tests/hostile.rs covers damage the envelope and
//! checksums catch; tests/compression.rs hostile zstd frames.

use crate::common::mangle::{refuse_v2, reseal_body, reseal_envelope, Scenario};
use crate::common::*;
use burrow::blobstore::BlobName;
use burrow::schema::blob::OpenBlob;
use burrow::schema::burrow_capnp::{snapshot, type_delta, type_snapshot};
use burrow::schema::envelope::{ENVELOPE_LEN, FORMAT_VERSION};
use burrow::schema::wire::{Ptr, SIZE_COMPOSITE, SIZE_POINTER};

/// The byte where segment word 0 starts: after the envelope and the
/// one-word segment table.
const SEGMENT: usize = ENVELOPE_LEN + 8;

/// A blob's bytes, read and written as the words of its body's segment.
struct Words(Vec<u8>);

impl Words {
    fn get(&self, i: usize) -> u64 {
        let at = SEGMENT + i * 8;
        u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap())
    }

    fn set(&mut self, i: usize, word: u64) {
        let at = SEGMENT + i * 8;
        self.0[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }

    fn len(&self) -> usize {
        (self.0.len() - SEGMENT) / 8
    }

    /// Where the pointer at word `at` points.
    fn target(&self, at: usize) -> usize {
        (at as i64 + 1 + Ptr(self.get(at)).offset()) as usize
    }

    /// A pointer at `at` aimed at word `to`: `ptr` with its offset moved.
    fn aim(&mut self, at: usize, ptr: u64, to: usize) {
        self.set(at, Ptr(ptr).with_offset(to as i64 - at as i64 - 1));
    }

    /// The bytes, with the body checksum and the envelope resealed.
    fn sealed(mut self) -> Vec<u8> {
        reseal_body(&mut self.0);
        self.0
    }
}

/// The offset of field `name` of struct `T`: for a data field in units of
/// its own size, for a pointer field its index in the pointer section.
fn slot<T: capnp::introspect::Introspect>(name: &str) -> u32 {
    let capnp::introspect::TypeVariant::Struct(raw) = T::introspect().which() else {
        panic!("not a struct");
    };
    let field = capnp::schema::StructSchema::new(raw)
        .get_field_by_name(name)
        .unwrap();
    let capnp::schema_capnp::field::Slot(slot) = field.get_proto().which().unwrap() else {
        panic!("{name} is a group");
    };
    slot.get_offset()
}

/// Where the parts of a v2 body with one type (Movie, records slot 0)
/// lie, in words of its segment, found by walking its pointers.
struct Map {
    snapshot: bool,
    /// The type entry's (`TypeSnapshot` or `TypeDelta`) data section.
    entry_data: usize,
    /// Its pointer section.
    entry_ptrs: usize,
    /// The pointer to the type's list of record lists.
    slot_ptr: usize,
    /// Each record list's pointer.
    list_ptrs: Vec<usize>,
    /// Each element (record struct), in element order.
    elements: Vec<usize>,
    /// The elements' data words and pointers.
    data: u16,
    ptrs: u16,
}

impl Map {
    fn of(w: &Words) -> Map {
        let snapshot = u16::from_le_bytes([w.0[10], w.0[11]]) == 1;
        let root = w.target(0);
        let root_data = Ptr(w.get(0)).data_words() as usize;
        let types = w.target(root + root_data + slot::<snapshot::Owned>("types") as usize);
        let entry = Ptr(w.get(types));
        assert_eq!(entry.offset(), 1, "one type in the blob");
        let entry_data = types + 1;
        let entry_ptrs = entry_data + entry.data_words() as usize;
        let records = w.target(root + root_data + slot::<snapshot::Owned>("records") as usize);
        let slot_ptr = records;
        let lists = w.target(slot_ptr);
        let count = Ptr(w.get(slot_ptr)).count() as usize;
        let (mut list_ptrs, mut elements) = (Vec::new(), Vec::new());
        let (mut data, mut ptrs) = (0, 0);
        for k in 0..count {
            list_ptrs.push(lists + k);
            let tag_at = w.target(lists + k);
            let tag = Ptr(w.get(tag_at));
            (data, ptrs) = (tag.data_words(), tag.ptr_count());
            let stride = data as usize + ptrs as usize;
            for e in 0..tag.offset() as usize {
                elements.push(tag_at + 1 + e * stride);
            }
        }
        Map {
            snapshot,
            entry_data,
            entry_ptrs,
            slot_ptr,
            list_ptrs,
            elements,
            data,
            ptrs,
        }
    }

    /// The word of the type entry's pointer field `name`.
    fn entry_ptr(&self, name: &str) -> usize {
        let index = if self.snapshot {
            slot::<type_snapshot::Owned>(name)
        } else {
            slot::<type_delta::Owned>(name)
        };
        self.entry_ptrs + index as usize
    }

    /// The word of pointer `i` of element `e`.
    fn field(&self, e: usize, i: usize) -> usize {
        self.elements[e] + self.data as usize + i
    }
}

/// Reads a u32 data field of a snapshot's type entry.
fn entry_u32(w: &Words, map: &Map, name: &str) -> u32 {
    let at = SEGMENT + map.entry_data * 8 + slot::<type_snapshot::Owned>(name) as usize * 4;
    u32::from_le_bytes(w.0[at..at + 4].try_into().unwrap())
}

/// Writes a u32 data field of a snapshot's type entry.
fn set_entry_u32(w: &mut Words, map: &Map, name: &str, value: u32) {
    let at = SEGMENT + map.entry_data * 8 + slot::<type_snapshot::Owned>(name) as usize * 4;
    w.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The word range of the list a snapshot entry's pointer field points at
/// (a list of `UInt64`).
fn entry_list(w: &Words, map: &Map, name: &str) -> std::ops::Range<usize> {
    let at = map.entry_ptr(name);
    let start = w.target(at);
    start..start + Ptr(w.get(at)).count() as usize
}

/// `damage` applied to the words of both the delta and the snapshot.
fn both(damage: impl Fn(&mut Words, &Map)) -> impl Fn(&BlobName, Vec<u8>) -> Option<Vec<u8>> {
    move |_, bytes| {
        let mut w = Words(bytes);
        let map = Map::of(&w);
        damage(&mut w, &map);
        Some(w.sealed())
    }
}

/// `damage` applied to the snapshot's words; the delta is removed from the
/// store, so that the consumer has to take the snapshot (the damage is to
/// something only snapshots hold, or needs more lists than the delta has).
fn snapshot_only(
    damage: impl Fn(&mut Words, &Map),
) -> impl Fn(&BlobName, Vec<u8>) -> Option<Vec<u8>> {
    move |name, bytes| match name {
        BlobName::Snapshot(_) => both(&damage)(name, bytes),
        _ => None,
    }
}

/// Asserts that both blobs of version 2 were refused for `reason`.
fn assert_both_refused(refused: &crate::common::mangle::Refused, reason: &str) {
    for name in [
        BlobName::Delta(refused.v1, refused.v2),
        BlobName::Snapshot(refused.v2),
    ] {
        let err = refused.at(&name);
        assert!(err.contains(reason), "{name}: {err}");
    }
}

/// Asserts that the snapshot of version 2 was refused for `reason`.
fn assert_snapshot_refused(refused: &crate::common::mangle::Refused, reason: &str) {
    let err = refused.at(&BlobName::Snapshot(refused.v2));
    assert!(err.contains(reason), "{err}");
}

/// Eight records a list: version 1's fifty records make seven lists.
fn seven_lists() -> Scenario {
    Scenario {
        max_list_shift: 3,
        ..Scenario::default()
    }
}

// 1. Record lists of the wrong element size.

/// A record list that is really a byte list (its pointer's element size
/// code says bytes, its count unchanged) is not read as records.
#[tokio::test]
async fn a_record_list_of_bytes_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let p = w.get(map.list_ptrs[0]);
            w.set(map.list_ptrs[0], p & !(7 << 32) | 2 << 32);
        }),
    )
    .await;
    assert_both_refused(&refused, "record list 0 is not a list of structs");
}

/// The type's list of record lists must be a list of pointers.
#[tokio::test]
async fn a_records_slot_that_is_not_a_list_of_lists_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let p = w.get(map.slot_ptr);
            w.set(
                map.slot_ptr,
                p & !(7 << 32) | u64::from(SIZE_COMPOSITE) << 32,
            );
        }),
    )
    .await;
    assert_both_refused(&refused, "records slot 0 is not a list of 1 list pointers");
}

/// Elements of another struct size than the type's, with the same stride
/// (one pointer of each record read as a data word): the list pointers
/// stay consistent, so the size is checked against the schema node the
/// blob carries for the type. A smaller struct is legal (the writer trims
/// trailing zeros); a section larger than the node's is not (the writer
/// refuses to write one).
#[tokio::test]
async fn elements_larger_than_the_types_struct_are_refused() {
    for (more_data, label) in [(true, "data words"), (false, "pointers")] {
        let refused = refuse_v2(
            Scenario::default(),
            both(|w, map| {
                for &at in &map.list_ptrs {
                    let tag_at = w.target(at);
                    let tag = Ptr(w.get(tag_at));
                    let (d, p) = if more_data {
                        (tag.data_words() + 1, tag.ptr_count() - 1)
                    } else {
                        (tag.data_words() - 1, tag.ptr_count() + 1)
                    };
                    w.set(tag_at, Ptr::to_struct(tag.offset(), d, p));
                }
            }),
        )
        .await;
        assert_both_refused(&refused, "larger than the type's struct");
        assert!(refused.all().contains(label), "{}", refused.all());
    }
}

/// Every record list of a type has the same element size.
#[tokio::test]
async fn record_lists_of_different_element_sizes_are_refused() {
    let refused = refuse_v2(
        seven_lists(),
        snapshot_only(|w, map| {
            let tag_at = w.target(map.list_ptrs[1]);
            let tag = Ptr(w.get(tag_at));
            // One data word less, one pointer more: the same stride.
            let (d, p) = (tag.data_words() - 1, tag.ptr_count() + 1);
            w.set(tag_at, Ptr::to_struct(tag.offset(), d, p));
        }),
    )
    .await;
    assert_snapshot_refused(
        &refused,
        "record list 1 has another element size than list 0",
    );
}

// 2. Pointers out of bounds.

/// A record list whose pointer points past the segment.
#[tokio::test]
async fn a_record_list_past_the_segment_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let at = map.list_ptrs[0];
            let end = w.len();
            w.aim(at, w.get(at), end);
        }),
    )
    .await;
    assert_both_refused(&refused, "points outside the segment");
}

/// A record's own pointer (its title) past the segment: only the layout
/// proof reads it, so a fetched blob must be proven before it is served.
#[tokio::test]
async fn a_record_pointer_past_the_segment_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let at = map.field(0, 0);
            let end = w.len() + 3;
            w.aim(at, w.get(at), end);
        }),
    )
    .await;
    assert_both_refused(&refused, "outside the body of");
}

/// A far pointer (to a landing pad in segment 1) in a record, in a list
/// of record lists, and as the records' own pointer: the body has one
/// segment, and every far pointer is refused by name.
#[tokio::test]
async fn far_pointers_are_refused() {
    let far = 2 | 1 << 32;
    let refused = refuse_v2(
        Scenario::default(),
        both(move |w, map| w.set(map.field(0, 1), far)),
    )
    .await;
    assert_both_refused(&refused, "far pointer");
    let refused = refuse_v2(
        Scenario::default(),
        both(move |w, map| w.set(map.list_ptrs[0], far)),
    )
    .await;
    assert_both_refused(&refused, "record list 0 is not a list of structs");
}

/// A segment table announcing two segments (sizes that fill the body, as
/// a standard two-segment message would): format v2 bodies are one
/// segment, and the reader says so before reading anything else.
#[tokio::test]
async fn a_two_segment_body_is_refused() {
    let refused = refuse_v2(Scenario::default(), |_, mut bytes| {
        let words = ((bytes.len() - SEGMENT) / 8) as u32;
        let table = &mut bytes[ENVELOPE_LEN..ENVELOPE_LEN + 16];
        table[0..4].copy_from_slice(&1u32.to_le_bytes());
        table[4..8].copy_from_slice(&(words - 1).to_le_bytes());
        table[8..16].fill(0);
        reseal_body(&mut bytes);
        Some(bytes)
    })
    .await;
    assert_both_refused(
        &refused,
        "the body is not one segment filling it (2 segments",
    );
}

// 3. Sharing anything but a leaf.

/// Two record lists aimed at the same struct list: the records of list 0
/// would be served again as list 1's ordinals.
#[tokio::test]
async fn two_record_lists_sharing_one_list_are_refused() {
    let refused = refuse_v2(
        seven_lists(),
        snapshot_only(|w, map| {
            let list0 = w.target(map.list_ptrs[0]);
            w.aim(map.list_ptrs[1], w.get(map.list_ptrs[1]), list0);
        }),
    )
    .await;
    assert_snapshot_refused(&refused, "shares or misplaces an object that is not a leaf");
}

/// A record's pointer aimed at another record's struct: that struct
/// would be reached twice.
#[tokio::test]
async fn a_record_pointing_at_another_record_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let to = map.elements[0];
            let at = map.field(1, 0);
            w.aim(at, Ptr::to_struct(0, map.data, map.ptrs), to);
        }),
    )
    .await;
    assert_both_refused(&refused, "shares or misplaces an object that is not a leaf");
}

/// A pointer cycle: a record's tags aimed back at the struct list that
/// holds the record (a walker following it would never end, or, depth
/// bounded, read the list again at every level).
#[tokio::test]
async fn a_pointer_cycle_is_refused() {
    let refused = refuse_v2(
        Scenario::default(),
        both(|w, map| {
            let list = map.list_ptrs[0];
            let at = map.field(0, 1);
            w.aim(at, w.get(list), w.target(list));
        }),
    )
    .await;
    assert_both_refused(&refused, "shares or misplaces an object that is not a leaf");
}

// 4. Fan-out.

/// Aims the titles of `how_many` other records at the largest title.
fn aim_titles(w: &mut Words, map: &Map, how_many: usize) {
    let count = |w: &Words, e: usize| Ptr(w.get(map.field(e, 0))).count();
    let elements = 0..map.elements.len();
    let big = elements.clone().max_by_key(|&e| count(w, e)).unwrap();
    let (ptr, target) = (w.get(map.field(big, 0)), w.target(map.field(big, 0)));
    let others: Vec<usize> = elements
        .filter(|&e| e != big && count(w, e) > 0)
        .take(how_many)
        .collect();
    for e in others {
        w.aim(map.field(e, 0), ptr, target);
    }
}

/// A fan-out bomb: every record's title aimed at one large title (a text:
/// a leaf, so sharing it is legal, as the writer's interning does). By
/// `wire::check_records`' rule, any leaf may be referenced any number of
/// times, but every reference counts the leaf's words, and a body whose
/// references add up to more than 8 times its words (plus 64 Ki words) is
/// refused: a reader that follows every pointer (restore, `verify`,
/// `canonical_record`) then reads at most a constant factor of the body.
/// Here 30 (delta) to 47 (snapshot) references to a 64 KiB title would
/// read 28 to 43 times the body: refused by that bound, by name. The same
/// title shared by two records stays within it: the proof accepts it.
#[tokio::test]
async fn a_fan_out_bomb_is_refused_by_the_walk_bound() {
    let mut scenario = Scenario::default();
    let big = "x".repeat(64 << 10);
    // Version 2 changes most records (so that the delta holds many
    // titles), and record 3's title is the large one.
    for i in 12..40 {
        scenario.v2.insert(i, movie_value(i, 1));
    }
    scenario.v2.get_mut(&3).unwrap().0 = big.clone();
    let refused = refuse_v2(
        scenario.clone(),
        both(|w, map| aim_titles(w, map, usize::MAX)),
    )
    .await;
    assert_both_refused(&refused, "shared leaves fan out too far");

    // Shared by two records, within the bound: the blob is sound.
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path()).unwrap();
    let p = scenario.producer(&store);
    let v = publish(&p, &scenario.v2).await.unwrap().version;
    let path = dir.path().join(BlobName::Snapshot(v).to_string());
    let mut w = Words(std::fs::read(path).unwrap());
    let map = Map::of(&w);
    aim_titles(&mut w, &map, 1);
    let blob = OpenBlob::from_bytes(&w.sealed(), "snapshot").unwrap();
    let check = blob.check_layout().unwrap();
    assert!(check.shared_refs >= 1, "{check:?}");
    assert!(check.walked_words > (big.len() / 8) as u64 * 2, "{check:?}");
}

// 5. A newer format version.

/// A blob of the next format version (the envelope resealed) is refused
/// by name, with the versions this build reads; the consumer keeps
/// serving. (tests/hostile.rs `wrong_format_version` covers a far-off
/// version; this is the one a newer producer would write.)
#[tokio::test]
async fn a_blob_of_the_next_format_version_is_refused() {
    let newer = FORMAT_VERSION + 1;
    let refused = refuse_v2(Scenario::default(), move |_, mut bytes| {
        bytes[8..10].copy_from_slice(&newer.to_le_bytes());
        reseal_envelope(&mut bytes);
        Some(bytes)
    })
    .await;
    assert_both_refused(
        &refused,
        &format!("format version {newer} is not supported (this build reads versions 2 to {FORMAT_VERSION})"),
    );
}

// 6. Presence bitmap and key index.

/// Version 2 of a hundred records: 98 records in 101 ordinals (three
/// holes), a bitmap of two words.
fn with_holes() -> Scenario {
    Scenario::new(100)
}

#[tokio::test]
async fn a_presence_bitmap_shorter_than_the_ordinals_is_refused() {
    let refused = refuse_v2(
        with_holes(),
        snapshot_only(|w, map| {
            let at = map.entry_ptr("present");
            let p = Ptr(w.get(at));
            assert_eq!(p.count(), 2);
            w.set(at, Ptr::to_list(p.offset(), p.elem_size(), 1));
        }),
    )
    .await;
    assert_snapshot_refused(&refused, "presence bitmap has 1 words for 101 ordinals");
}

/// A presence bit set for a hole (an all-zero element): by itself it
/// disagrees with the record count; with the count raised to match, the
/// key index (one entry per record) has no entry for it.
#[tokio::test]
async fn a_presence_bit_for_a_hole_is_refused() {
    for raise_count in [false, true] {
        let refused = refuse_v2(
            with_holes(),
            snapshot_only(move |w, map| {
                let bits = entry_list(w, map, "present");
                let limit = entry_u32(w, map, "ordinalLimit");
                let hole = (0..limit)
                    .find(|&o| w.get(bits.start + o as usize / 64) >> (o % 64) & 1 == 0)
                    .expect("a hole");
                let at = bits.start + hole as usize / 64;
                w.set(at, w.get(at) | 1 << (hole % 64));
                if raise_count {
                    let count = entry_u32(w, map, "recordCount");
                    set_entry_u32(w, map, "recordCount", count + 1);
                }
            }),
        )
        .await;
        let reason = if raise_count {
            "key index has 98 entries in"
        } else {
            "presence bitmap marks 99 ordinals, but the record count is 98"
        };
        assert_snapshot_refused(&refused, reason);
    }
}

/// A key index slot naming an ordinal past the type's.
#[tokio::test]
async fn a_key_index_slot_past_the_ordinals_is_refused() {
    let refused = refuse_v2(
        with_holes(),
        snapshot_only(|w, map| {
            let slots = entry_list(w, map, "keyIndex");
            let limit = entry_u32(w, map, "ordinalLimit");
            let at = slots.clone().find(|&s| w.get(s) != 0).unwrap();
            w.set(at, w.get(at) & !0xffff_ffff | u64::from(limit + 5));
        }),
    )
    .await;
    assert_snapshot_refused(&refused, "which holds no record");
}

/// Two key index slots with their ordinals swapped: each names a record
/// whose key hashes elsewhere, so neither record would be found by key.
#[tokio::test]
async fn a_key_index_slot_naming_another_key_is_refused() {
    let refused = refuse_v2(
        with_holes(),
        snapshot_only(|w, map| {
            let slots = entry_list(w, map, "keyIndex");
            let used: Vec<usize> = slots.filter(|&s| w.get(s) != 0).take(2).collect();
            let (a, b) = (w.get(used[0]), w.get(used[1]));
            w.set(used[0], a & !0xffff_ffff | b & 0xffff_ffff);
            w.set(used[1], b & !0xffff_ffff | a & 0xffff_ffff);
        }),
    )
    .await;
    assert_snapshot_refused(&refused, "whose key does not hash to the slot's tag");
}

/// Sanity of the tools above: an unmangled blob's map finds every record,
/// and resealing it unchanged leaves a blob that verifies.
#[tokio::test]
async fn the_word_map_finds_every_record() {
    let scenario = seven_lists();
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path()).unwrap();
    let p = scenario.producer(&store);
    let v = publish(&p, &scenario.v1).await.unwrap().version;
    let path = dir.path().join(BlobName::Snapshot(v).to_string());
    let w = Words(std::fs::read(path).unwrap());
    let map = Map::of(&w);
    assert_eq!(map.elements.len(), 50);
    assert_eq!(map.list_ptrs.len(), 7);
    assert_eq!((map.data, map.ptrs), (2, 2));
    assert_eq!(Ptr(w.get(map.slot_ptr)).elem_size(), SIZE_POINTER);
    assert_eq!(
        w.get(map.elements[7]),
        7,
        "element 7's first word is its id"
    );
    assert_eq!(entry_u32(&w, &map, "ordinalLimit"), 50);
    let blob = OpenBlob::from_bytes(&w.sealed(), "snapshot").unwrap();
    blob.verify().unwrap();
}
