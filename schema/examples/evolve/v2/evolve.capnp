# Version 2 of the schema evolution tests' dataset: a compatible evolution
# of v1/evolve.capnp under Cap'n Proto's rules. `name` is renamed
# `title`; `rating` (with a non-zero default), `note` and `detail` are new
# fields; `Kind` gains an enumerant; `Detail` and `Extra` are new types.
@0xc4e1a7f35b2d9e01;

struct Item @0xf1d2c3b4a5968701 {
  id @0 :UInt64;     # primary key
  title @1 :Text;
  count @2 :UInt32;
  kind @3 :Kind;
  tags @4 :List(Text);
  rating @5 :Float32 = 2.5;
  note @6 :Text;
  detail @7 :Detail;
}

enum Kind @0xf1d2c3b4a5968702 {
  plain @0;
  special @1;
  rare @2;
}

struct Detail @0xf1d2c3b4a5968703 {
  origin @0 :Text;
  weight @1 :UInt16 = 10;
}

struct Extra @0xf1d2c3b4a5968704 {
  id @0 :UInt64;     # primary key
  info @1 :Text;
}
