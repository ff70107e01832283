# The anchor workload's record type (../shared/WORKLOAD.md).
@0xef07729cdd5d9f18;

struct Movie {
  id @0 :UInt64;          # primary key
  title @1 :Text;
  year @2 :UInt32;
  tags @3 :List(Text);
}
