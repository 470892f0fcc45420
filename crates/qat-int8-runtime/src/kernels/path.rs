//! [`KernelPath`]: the user-facing name of a kernel family, generated from the ISA registry in
//! [`super`] (`register_isas!`), and the process-wide choice of the best one.

use std::sync::OnceLock;

use super::KernelPath;

/// Environment variable that forces a kernel path.
pub const KERNEL_ENV: &str = "QAT_KERNEL";

/// Generates [`KernelPath`] from the registered ISAs: `Reference` first, then one variant per
/// registered ISA in order (slowest first). Each entry is
/// `Variant = "name" => isa::Type` (the type implements [`crate::kernels::frame::Isa`]), optionally
/// preceded by doc comments and one `#[cfg(...)]` that says where the ISA's code is compiled.
/// The variant exists on every target (so code that names it compiles everywhere); where the
/// `cfg` is false it is never supported.
macro_rules! register_isas {
    ($(
        $(#[doc = $doc:expr])*
        $(#[cfg($cfg:meta)])?
        $variant:ident = $name:literal => $isa:ty
    ),* $(,)?) => {
        /// A family of kernels. `Reference` runs the reference kernels' obvious loops (the paper's
        /// eq. 7–10), the oracle every other path is tested against; every other variant is one
        /// instruction set's micro-kernels plugged into the shared packed-GEMM and depthwise frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum KernelPath {
            /// Obvious loops, one output element at a time, never optimized.
            Reference,
            $(
                $(#[doc = $doc])*
                $variant,
            )*
        }

        impl KernelPath {
            /// Every path, slowest first.
            pub const ALL: [KernelPath; 1 + [$($name),*].len()] =
                [KernelPath::Reference, $(KernelPath::$variant),*];

            /// The name used by `QAT_KERNEL` and in logs/benchmarks.
            pub fn name(self) -> &'static str {
                match self {
                    KernelPath::Reference => "reference",
                    $(KernelPath::$variant => $name,)*
                }
            }

            /// The kernel table of an optimized path (`None` for `Reference`, and for an ISA
            /// whose code is not compiled for this target).
            pub(crate) fn kernels(self) -> Option<&'static dyn crate::kernels::frame::Kernels> {
                match self {
                    KernelPath::Reference => None,
                    $(KernelPath::$variant => {
                        $(#[cfg($cfg)])?
                        let k: Option<&'static dyn crate::kernels::frame::Kernels> =
                            Some(&crate::kernels::frame::Frame::<$isa>::TABLE);
                        $(#[cfg(not($cfg))] let k = None;)?
                        k
                    })*
                }
            }
        }
    };
}

pub(crate) use register_isas;

impl KernelPath {
    /// Parses a [`KernelPath::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether this CPU can run the path (`Reference` always; an ISA when its CPU features are
    /// detected, `is_x86_feature_detected!` on x86-64).
    pub fn is_supported_here(self) -> bool {
        match self {
            KernelPath::Reference => true,
            p => p.kernels().is_some_and(|k| k.is_supported_here()),
        }
    }

    /// Every path this CPU supports, slowest first (`Reference` included).
    pub fn supported() -> impl Iterator<Item = KernelPath> {
        Self::ALL.into_iter().filter(|p| p.is_supported_here())
    }

    /// Every optimized path this CPU supports (everything but `Reference`), slowest first.
    pub fn optimized() -> impl Iterator<Item = KernelPath> {
        Self::supported().filter(|&p| p != KernelPath::Reference)
    }

    /// The fastest supported path, detected once per process and logged with `tracing`.
    /// `QAT_KERNEL` overrides it; a value that is unknown or not supported on this CPU is logged
    /// and ignored (an unsupported SIMD path would be undefined behaviour).
    pub fn best() -> KernelPath {
        static BEST: OnceLock<KernelPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = Self::supported().last().unwrap_or(KernelPath::Reference);
            let chosen = match std::env::var(KERNEL_ENV) {
                Ok(v) => match Self::from_name(&v) {
                    Some(p) if p.is_supported_here() => p,
                    Some(p) => {
                        tracing::warn!(requested = p.name(), fallback = detected.name(), "{KERNEL_ENV}: kernel path not supported on this CPU");
                        detected
                    }
                    None => {
                        let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                        tracing::warn!(value = %v, fallback = detected.name(), known = ?known, "{KERNEL_ENV}: unknown kernel path");
                        detected
                    }
                },
                Err(_) => detected,
            };
            tracing::info!(kernel = chosen.name(), detected = detected.name(), "qat-int8-runtime kernel path");
            chosen
        })
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
