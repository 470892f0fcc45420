//! Limits a [`FloatGraph`](crate::FloatGraph) must respect, checked by
//! [`FloatGraph::validate`](crate::FloatGraph::validate) before the interpreter, calibration or
//! export does any work.
//!
//! Structural limits are those of the `.qat8` runtime (so that a graph that validates here never
//! fails the runtime's validation at export):
//! [`MAX_SPATIAL`] for every kernel extent, stride, dilation and padding,
//! [`MAX_TENSOR_ELEMENTS`] elements per node output and sample, [`MAX_REDUCTION`] for a conv's
//! `kh·kw·C_in/groups` and a linear layer's `C_in`, [`MAX_POOL_WINDOW`] window cells. Every
//! product is computed with checked arithmetic.
//!
//! Cost limits ([`GraphLimits`]), per sample, from the inferred shapes:
//! `activation_bytes = Σ_node 4·elements(node)` (the interpreter's f32 values),
//! `macs = Σ_conv H_out·W_out·C_out·kh·kw·C_in/groups + Σ_linear C_out·C_in`,
//! `pool_work = Σ_pool H_out·W_out·C·kh·kw + Σ_global H·W·C`.

pub use qat_int8_runtime::validate::{
    MAX_POOL_WINDOW, MAX_REDUCTION, MAX_SPATIAL, MAX_TENSOR_ELEMENTS,
};

/// Per-sample cost limits of a float graph (see the [module docs](crate::limits)).
///
/// ```
/// let l = qat_export::limits::GraphLimits::default();
/// assert_eq!(l.max_activation_bytes, 1 << 30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphLimits {
    /// Largest `Σ 4·elements` over every node, bytes (default 1 GiB).
    pub max_activation_bytes: u64,
    /// Largest number of multiply-accumulates (default 2^34).
    pub max_macs: u64,
    /// Largest number of pooling window cells visited (default 2^32).
    pub max_pool_work: u64,
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            max_activation_bytes: 1 << 30,
            max_macs: 1 << 34,
            max_pool_work: 1 << 32,
        }
    }
}

/// Running totals checked against [`GraphLimits`] node by node.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub activation_bytes: u64,
    pub macs: u64,
    pub pool_work: u64,
}

/// Product of `dims`, `None` on overflow.
pub(crate) fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}
