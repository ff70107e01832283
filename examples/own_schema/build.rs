//! Compiles schema/library.capnp (no capnp install needed) and generates
//! Rust against burrow's re-exported `capnp`.

fn main() {
    let file = "schema/library.capnp";
    println!("cargo:rerun-if-changed={file}");
    let request = capnpc_embedded::CompileCommand::new()
        .file(file)
        // Names are relative to schema/, so the type names written into
        // every blob ("library.capnp:Book") and the schema hash do not carry
        // the path of the machine that built this crate.
        .src_prefix("schema")
        .compile()
        .expect("the Cap'n Proto compiler rejected schema/library.capnp");
    capnpc::codegen::CodeGenerationCommand::new()
        .output_directory(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        // Generated code says `::burrow::capnp::...`: no `capnp` dependency.
        .capnp_root("::burrow::capnp")
        .run(&request[..])
        .expect("capnpc could not generate Rust from schema/library.capnp");
}
