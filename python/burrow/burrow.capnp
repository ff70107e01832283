# burrow's blob and announcement format. schema/FORMAT.md describes the
# envelope that precedes every message and the meaning of each field.
#
# Format v2 (the envelope's format version). Compatibility rule within a
# format version: fields are only ever added (with new ordinals); a
# reader ignores fields it does not know. A change that old readers would
# misread bumps the envelope's format version instead.

@0x8e3c52f4e74758fd;

using Schema = import "/capnp/schema.capnp";

# Written once per blob. Snapshot, delta and reverse delta share it.
struct Header {
  fromVersion @0 :UInt64;      # 0 for a snapshot
  toVersion @1 :UInt64;
  producerId @2 :Text;
  cycleStartMicros @3 :Int64;  # Unix time, microseconds, when the cycle began
  schemaHash @4 :UInt64;       # xxh3-64 over the canonical bytes of `nodes`, sorted by id
  nodes @5 :List(Schema.Node); # every struct and enum node the dataset's types reach
  tags @6 :List(Tag);          # user header tags
  # The dataset's identity: 128 random bits minted at its first cycle, high
  # 64 bits first. Never zero (zero: written before dataset ids; refused).
  datasetIdHi @7 :UInt64;
  datasetIdLo @8 :UInt64;
  # The checksum of every type of the state the blob makes (a reverse
  # delta: the older state), sorted by type id (schema/checksum.rs). Empty
  # in blobs written before state checksums: nothing is checked then.
  typeChecksums @9 :List(TypeChecksum);
}

struct TypeChecksum {
  typeId @0 :UInt64;
  checksum @1 :UInt64;         # wrapping sum over the type's records of entry(typeId, ordinal, xxh3-64 of the canonical record)
}

struct Tag {
  key @0 :Text;
  value @1 :Text;
}

# One type's records in a snapshot (format v2).
#
# The records themselves are not in this struct: they are the elements of
# a struct list reached through the root's `records` (see `Records`), so
# that a reader validates each list once and reaches any record by
# arithmetic. This entry says where (`recordsSlot`) and how to read them.
struct TypeSnapshot {
  typeId @0 :UInt64;           # the Cap'n Proto node id of the record struct
  name @1 :Text;               # its display name, e.g. "movies.capnp:Movie"
  keyFields @2 :List(Text);    # primary key field names, in key order; empty = no key
  recordCount @3 :UInt32;      # number of ordinals holding a record
  ordinalLimit @4 :UInt32;     # one past the highest ordinal; the lists hold this many elements
  recordsSlot @5 :UInt16;      # the pointer of `Records` that holds this type's lists
  listShift @6 :UInt8;         # list k holds ordinals [k << listShift, (k + 1) << listShift)
  # Bit (o % 64) of word (o / 64) is set when ordinal o holds a record.
  # Empty when every ordinal below ordinalLimit holds one (no holes). A
  # hole's element is all zeros.
  present @7 :List(UInt64);
  # Open-addressing key index: one UInt64 slot per entry, linear probing
  # from slot ((keyHash & 0xffffffff) * slots) >> 32. A slot is 0 when free,
  # else (keyHash >> 32) << 32 | (ordinal + 1). Empty when the type has no key.
  keyIndex @8 :List(UInt64);
  indexes @9 :List(SecondaryIndex);  # the producer's secondary indexes; empty = none
}

# A secondary hash index over one or more fields of a type (schema/index.rs).
struct SecondaryIndex {
  name @0 :Text;               # e.g. "by_year"; distinct within the type
  fields @1 :List(Text);       # field names, in value order; at most one a list
  unique @2 :Bool;             # at most one record per value
  table @3 :List(UInt64);      # hash table of groups, laid out as a key index
  starts @4 :List(UInt32);     # group g's ordinals are postings[starts[g]..starts[g + 1]]
  postings @5 :List(UInt32);   # ordinals, ascending within each group
}

struct Snapshot {
  header @0 :Header;
  types @1 :List(TypeSnapshot);
  # A struct with no data and one pointer per slot: pointer `recordsSlot`
  # of a type is a List(List(<the type's struct>)) of its records, split
  # into lists of 1 << listShift ordinals (the last may be shorter).
  # `burrow schema --capnp` prints this struct typed for one dataset.
  records @2 :AnyPointer;
}

# One type's changes between two versions. Applied in this order: clear every
# ordinal in `removed`, then set every ordinal in `ordinals` to its record.
# A type the state does not hold yet is created (empty) first; a `dropped`
# entry removes the type from the state entirely.
struct TypeDelta {
  typeId @0 :UInt64;
  name @1 :Text;
  keyFields @2 :List(Text);
  removed @3 :List(UInt32);         # sorted, distinct
  removedKeyHashes @4 :List(UInt64);# key hash of each removed record (parallel to `removed`)
  ordinals @5 :List(UInt32);        # sorted, distinct: records added or changed
  # Key hash of each record in `ordinals` whose key is new at its ordinal
  # (it held no record, or this delta removed it); 0 for a record whose
  # key stays (a changed record), which a reader never looks at.
  keyHashes @6 :List(UInt64);
  recordCountAfter @7 :UInt32;      # the type's record count once applied
  ordinalLimitAfter @8 :UInt32;     # one past the highest ordinal in use once applied
  # The type leaves the state, records, key index and all (the producer no
  # longer registers it). A dropped entry carries nothing else: its lists
  # are empty and both counts are 0.
  dropped @9 :Bool;
  recordsSlot @10 :UInt16;          # as in TypeSnapshot: element i of the lists is ordinals[i]
  listShift @11 :UInt8;
}

# A delta (fromVersion -> toVersion) or a reverse delta (toVersion ->
# fromVersion of the forward one); the envelope's kind says which.
struct Delta {
  header @0 :Header;
  types @1 :List(TypeDelta);
  records @2 :AnyPointer;      # as in Snapshot
}

# One entry of the announcement log, stored at announce/<seq>.
struct Announcement {
  seq @0 :UInt64;
  kind @1 :Kind;
  version @2 :UInt64;          # newest version the producer published
  fromVersion @3 :UInt64;      # the version `version`'s delta starts from; 0 if none
  snapshotVersion @4 :UInt64;  # nearest version at or below `version` with a snapshot
  hasSnapshot @5 :Bool;        # snapshot/<version> exists
  pinnedVersion @6 :UInt64;    # consumers should be here instead; 0 = not pinned
  producerId @7 :Text;
  timestampMicros @8 :Int64;
  snapshotBytes @9 :UInt64;    # sizes of this version's blobs, for update planning
  deltaBytes @10 :UInt64;
  reverseBytes @11 :UInt64;
  # The dataset's identity, as in every blob's Header; every entry of one
  # log carries the same one (pins and unpins too). Never zero.
  datasetIdHi @12 :UInt64;
  datasetIdLo @13 :UInt64;

  enum Kind {
    announce @0;
    pin @1;
    unpin @2;
  }
}
