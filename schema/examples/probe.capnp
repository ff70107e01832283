# A record type with every kind of key field, non-zero defaults, an enum and
# a union: used by burrow's own tests of key encoding.
@0x92f7e04ca3aaab3f;

struct Probe {
  small @0 :Int16 = -5;
  count @1 :UInt32 = 7;
  big @2 :Int64;
  color @3 :Color;
  name @4 :Text;
  blob @5 :Data;
  flag @6 :Bool;
  ratio @7 :Float64;
  union {
    none @8 :Void;
    some @9 :UInt8;
  }

  enum Color {
    red @0;
    green @1;
    blue @2;
  }
}
