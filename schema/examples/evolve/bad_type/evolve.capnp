# An incompatible change of v1/evolve.capnp and v2/evolve.capnp (same
# ids): `Item.count` changes type from UInt32 to Text, and `Extra.info`
# (new in v2) from Text to UInt32. Refused by producers and consumers
# alike.
@0xc4e1a7f35b2d9e01;

struct Item @0xf1d2c3b4a5968701 {
  id @0 :UInt64;     # primary key
  name @1 :Text;
  count @2 :Text;
  kind @3 :Kind;
  tags @4 :List(Text);
}

enum Kind @0xf1d2c3b4a5968702 {
  plain @0;
  special @1;
}

struct Extra @0xf1d2c3b4a5968704 {
  id @0 :UInt64;     # primary key
  info @1 :UInt32;
}
