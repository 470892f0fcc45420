//! Embeds the libtorch library directory as an rpath so binaries and tests run without
//! `LD_LIBRARY_PATH` (see shared TCH.md §1). `QAT_LINK_CUDA` opts in to linking `libtorch.so`
//! eagerly so that CUDA is visible to tch.

fn main() {
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    if std::env::var_os("QAT_LINK_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
    println!("cargo:rerun-if-env-changed=QAT_LINK_CUDA");
}
