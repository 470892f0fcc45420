//! Build script: with feature `torch`, embeds libtorch's library directory as an rpath
//! (docs/libtorch.md, "Linking: why each torch crate has a build script"). One script serves every
//! package that links libtorch; without the feature it does nothing.

include!("../../build-support/libtorch_rpath.rs");
