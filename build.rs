//! Compiles `schema/*.capnp` with the Cap'n Proto compiler embedded as
//! WebAssembly (`capnpc-embedded`), so a fresh machine needs only cargo, then
//! generates Rust with `capnpc`.

fn main() {
    let files = [
        "schema/burrow.capnp",
        "schema/examples/movies.capnp",
        "schema/examples/probe.capnp",
        "schema/examples/library.capnp",
        "schema/examples/every.capnp",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut compile = capnpc_embedded::CompileCommand::new();
    for file in files {
        compile.file(file);
    }
    let request = compile
        .src_prefix("schema")
        .compile()
        .expect("the Cap'n Proto compiler rejected schema/*.capnp");
    capnpc::codegen::CodeGenerationCommand::new()
        .output_directory(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .default_parent_module(vec!["schema".to_string()])
        // schema.capnp's Rust code ships inside the capnp crate.
        .crates_provide_map(std::collections::HashMap::from([(
            0xa93f_c509_624c_72d9,
            "capnp".to_string(),
        )]))
        .run(&request[..])
        .expect("capnpc could not generate Rust from schema/*.capnp");
}
