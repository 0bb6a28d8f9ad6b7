//! Compiles hnswlib (vendored, header-only C++) behind `hnswlib/shim.cpp`: on x86-64 once
//! per instruction-set level, so that one binary runs everywhere and still uses AVX-512
//! where the CPU has it; elsewhere once.

fn main() {
    println!("cargo:rerun-if-changed=hnswlib");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let variants: &[(&str, &[&str])] = if arch == "x86_64" {
        &[
            ("hnsw_base", &[]),
            ("hnsw_v3", &["-march=x86-64-v3", "-mtune=generic"]),
            ("hnsw_v4", &["-march=x86-64-v4", "-mtune=generic"]),
        ]
    } else {
        &[("hnsw_base", &[])]
    };
    for (name, flags) in variants {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("hnswlib/shim.cpp")
            .include("hnswlib")
            .std("c++17")
            // The index is the service's hot path, in tests as in releases.
            .opt_level(3)
            .define("NDEBUG", None)
            .define("EXEMPLAR_HNSW_NS", *name)
            .warnings(false);
        for flag in *flags {
            build.flag(flag);
        }
        build.compile(name);
    }
}
