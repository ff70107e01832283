# The record type of `burrow publish`'s example (README, "Publishing from
# files"): compiled at run time, no Rust needed.
@0xd1f0c4a7b2e95c13;

struct Movie {
  id @0 :UInt64;        # primary key (`--key id`)
  title @1 :Text;
  year @2 :UInt16;
  genre @3 :Genre;
  tags @4 :List(Text);

  enum Genre {
    drama @0;
    crime @1;
    scifi @2;
  }
}
