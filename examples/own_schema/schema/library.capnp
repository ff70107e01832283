# A lending library: two record types for burrow.
@0xbad3ca0c6fa14e6b;

# Primary key: isbn (a string).
struct Book {
  isbn @0 :Text;
  title @1 :Text;
  author @2 :Text;
  year @3 :UInt16;
}

# Primary key: (branch, copy), a compound key: a branch numbers its copies.
struct Loan {
  branch @0 :Text;
  copy @1 :UInt32;
  isbn @2 :Text;
  borrower @3 :Text;
  dueDay @4 :UInt32;
}
