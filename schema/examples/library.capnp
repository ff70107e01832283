# A record type with nested structs, enums, groups, unions (one with an
# ordinal kept from before Cap'n Proto 0.3), lists and defaults of every
# kind, fields declared out of ordinal order: the tests of `burrow schema
# --capnp` publish it and decode it with the reference tool.
@0xca3f57da9764f88a;

struct Shelf {
  id @0 :UInt64;  # primary key
  label @1 :Text = "unlabelled";
  books @2 :List(Book);
  genre @3 :Genre = history;
  location :group {
    room @4 :Text;
    row @5 :UInt16 = 1;
  }
  owner :union {
    nobody @6 :Void;
    person @7 :Text;
    library @8 :UInt32;
  }
  union {
    open @9 :Void;
    closedSince @10 :Int64;
  }
  scores @11 :List(Float32) = [1.5, -2, 0.1];
  stamp @12 :Data = 0x"beef";
  ratio @13 :Float64 = 0.25;
  sizes @14 :List(List(UInt8));
  favourite @15 :Book = (title = "Dune", pages = 412, genres = [scifi], format = (paperback = void));
  genres @16 :List(Genre);
  shelved @18 :Bool = true;
  tilt @17 :Int8 = -3;
  old @20! :union {
    legacy @19 :UInt32;
    modern @21 :Text;
  }
  weights @22 :List(Float64) = [inf, -inf, 1e300, -0.0];
  notes @23 :List(Text) = ["a \"quoted\" line", "tab\there"];

  struct Book {
    title @0 :Text;
    pages @1 :UInt32 = 100;
    genres @2 :List(Genre);
    isbn @3 :Data;
    format :union {
      hardcover @4 :Void;
      paperback @5 :Void;
      ebook @6 :Text;
    }
    condition @7 :Condition;

    enum Condition {
      mint @0;
      good @1;
      worn @2;
    }
  }
}

enum Genre {
  poetry @0;
  scifi @1;
  history @2;
}
