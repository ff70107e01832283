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

    // The schema evolution tests' versions of one dataset: the same file
    // and node ids in each, so each is compiled on its own (the compiler
    // refuses two nodes of one id in one run), from its own directory (so
    // that every version's display names are `evolve.capnp:...`, as a
    // real evolution keeps them) into its own module `schema::evolve_<v>`.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for version in ["v1", "v2", "bad_type", "bad_key"] {
        let dir = format!("schema/examples/evolve/{version}");
        let file = format!("{dir}/evolve.capnp");
        println!("cargo:rerun-if-changed={file}");
        let request = capnpc_embedded::CompileCommand::new()
            .file(&file)
            .src_prefix(&dir)
            .compile()
            .unwrap_or_else(|e| panic!("the Cap'n Proto compiler rejected {file}: {e}"));
        let module = format!("evolve_{version}");
        let target = out.join(&module);
        std::fs::create_dir_all(&target).expect("create the evolve module's directory");
        capnpc::codegen::CodeGenerationCommand::new()
            .output_directory(&target)
            .default_parent_module(vec!["schema".to_string(), module])
            .crates_provide_map(std::collections::HashMap::from([(
                0xa93f_c509_624c_72d9,
                "capnp".to_string(),
            )]))
            .run(&request[..])
            .unwrap_or_else(|e| panic!("capnpc could not generate Rust from {file}: {e}"));
    }
}
