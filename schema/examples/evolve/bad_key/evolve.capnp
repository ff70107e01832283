# An incompatible change of v1/evolve.capnp (same ids): the primary key
# field `id` is renamed `ident`. Renaming is compatible on the wire, but a
# primary key names its fields, so a key field keeps its name.
@0xc4e1a7f35b2d9e01;

struct Item @0xf1d2c3b4a5968701 {
  ident @0 :UInt64;  # primary key
  name @1 :Text;
  count @2 :UInt32;
  kind @3 :Kind;
  tags @4 :List(Text);
}

enum Kind @0xf1d2c3b4a5968702 {
  plain @0;
  special @1;
}
