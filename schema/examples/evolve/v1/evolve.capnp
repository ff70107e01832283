# Version 1 of the schema evolution tests' dataset (tests/evolve.rs):
# v2/evolve.capnp is a compatible evolution of it (same file and struct
# ids), bad_type/ and bad_key/ are incompatible ones. Each version is
# compiled on its own (the compiler refuses two nodes of one id in one
# run) into its own module, `schema::evolve_v1` and so on.
@0xc4e1a7f35b2d9e01;

struct Item @0xf1d2c3b4a5968701 {
  id @0 :UInt64;     # primary key
  name @1 :Text;
  count @2 :UInt32;
  kind @3 :Kind;
  tags @4 :List(Text);
}

enum Kind @0xf1d2c3b4a5968702 {
  plain @0;
  special @1;
}
