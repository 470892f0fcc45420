//! Compiles `csrc/gloo_group.cpp` against libtorch's headers (c10d) and Gloo's headers.
//!
//! libtorch: `LIBTORCH` (as for torch-sys; `cargo xtask` sets it). Gloo's headers, which the
//! libtorch wheels do not ship although their c10d is built with Gloo: `QAT_GLOO_INCLUDE`, else
//! the directory that `cargo xtask setup` records in `<cache>/gloo/READY` (cache: `QAT_CACHE_DIR`,
//! else `XDG_CACHE_HOME/qat`, else `~/.cache/qat`), else the system's `/usr/include` when it has
//! `gloo/context.h` (Debian's `libgloo-dev`). Only declarations are taken from those headers: the
//! Gloo code that runs is the copy inside libtorch_cpu.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

mod rpath {
    include!("../../build-support/libtorch_rpath.rs");

    pub fn emit() {
        main();
    }
}

fn cache_root() -> Option<PathBuf> {
    if let Some(d) = env::var_os("QAT_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("qat"));
    }
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("qat"))
}

fn has_gloo(dir: &Path) -> bool {
    dir.join("gloo").join("context.h").exists()
}

fn gloo_include() -> PathBuf {
    if let Some(d) = env::var_os("QAT_GLOO_INCLUDE") {
        let d = PathBuf::from(d);
        assert!(
            has_gloo(&d),
            "QAT_GLOO_INCLUDE={} has no gloo/context.h",
            d.display()
        );
        return d;
    }
    if let Some(ready) = cache_root().map(|c| c.join("gloo").join("READY"))
        && let Ok(s) = fs::read_to_string(&ready)
    {
        println!("cargo:rerun-if-changed={}", ready.display());
        let d = PathBuf::from(s.trim());
        if has_gloo(&d) {
            return d;
        }
    }
    let system = PathBuf::from("/usr/include");
    if has_gloo(&system) {
        return system;
    }
    panic!(
        "qat-dist needs Gloo's C++ headers: run `cargo xtask setup` (it unpacks Debian's \
         libgloo-dev into the qat cache), install libgloo-dev, or set QAT_GLOO_INCLUDE to a \
         directory with gloo/context.h"
    );
}

fn main() {
    rpath::emit();
    println!("cargo:rerun-if-changed=csrc/gloo_group.cpp");
    for var in [
        "LIBTORCH",
        "LIBTORCH_CXX11_ABI",
        "QAT_GLOO_INCLUDE",
        "QAT_CACHE_DIR",
        "XDG_CACHE_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let libtorch = PathBuf::from(env::var_os("LIBTORCH").expect(
        "qat-dist needs LIBTORCH (the libtorch directory, as for torch-sys; `cargo xtask` sets it)",
    ));
    let gloo = gloo_include();
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .file("csrc/gloo_group.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .std("c++20")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false)
        .compile("qat_dist_gloo");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
