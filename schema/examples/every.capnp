# A record type that uses every kind of field Cap'n Proto has (but
# interfaces): each scalar, with and without defaults; text and data;
# lists of scalars, bools, texts, data, enums, structs and lists; nested
# structs; an enum; an unnamed union, a named union and a group; an
# AnyPointer. The tests of `burrow::schema::dynamic` read it against the
# generated code.
@0xd4b1a6e3c2f05a17;

struct Every {
  id @0 :UInt64;  # primary key
  void @1 :Void;
  flag @2 :Bool;
  flagOn @3 :Bool = true;
  i8 @4 :Int8;
  i16 @5 :Int16 = -300;
  i32 @6 :Int32;
  i64 @7 :Int64 = -9007199254740993;
  u8 @8 :UInt8 = 200;
  u16 @9 :UInt16;
  u32 @10 :UInt32;
  u64 @11 :UInt64 = 18446744073709551615;
  f32 @12 :Float32 = 0.1;
  f64 @13 :Float64;
  name @14 :Text;
  named @15 :Text = "anon";
  bytes @16 :Data;
  kind @17 :Kind = beta;
  inner @18 :Inner;
  innerDefault @19 :Inner = (label = "preset", points = [1, 2, 3]);
  bools @20 :List(Bool);
  i16s @21 :List(Int16);
  u64s @22 :List(UInt64);
  f32s @23 :List(Float32);
  f64s @24 :List(Float64);
  texts @25 :List(Text);
  datas @26 :List(Data);
  kinds @27 :List(Kind);
  inners @28 :List(Inner);
  matrix @29 :List(List(Int32));
  voids @30 :List(Void);
  any @31 :AnyPointer;
  union {
    nothing @32 :Void;
    number @33 :Int32;
    word @34 :Text;
    nested @35 :Inner;
  }
  choice :union {
    left @36 :UInt16;
    right @37 :List(Text);
  }
  place :group {
    x @38 :Int32 = 7;
    y @39 :Float64 = -1.5;
    tag @40 :Text;
  }
  i8s @41 :List(Int8);
  u32s @42 :List(UInt32);

  enum Kind {
    alpha @0;
    beta @1;
    gamma @2;
  }

  struct Inner {
    label @0 :Text;
    points @1 :List(Int64);
    deeper @2 :Inner;
    kind @3 :Kind;
  }
}
