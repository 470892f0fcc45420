// The build script of every package whose binaries or tests link libtorch; each package's
// `build.rs` includes this file. Why every torch package needs one: docs/libtorch.md, "Linking: why
// each torch crate has a build script".
//
// - Embeds libtorch's library directory (`DEP_TCH_LIBTORCH_LIB`, handed to packages that depend on
//   `torch-sys` directly) as an rpath, so binaries and tests run without `LD_LIBRARY_PATH`.
// - `QAT_LINK_CUDA` opts in to linking `libtorch.so` eagerly so that CUDA is visible to tch
//   (docs/libtorch.md, "CUDA is opt-in").

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
