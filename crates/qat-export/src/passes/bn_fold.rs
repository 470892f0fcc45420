//! Batch-norm folding (paper §3.2, eq. 14; whitepaper §3.2.2; TF `fold_batch_norms.py`).

use crate::ir::{Conv2d, FloatGraph, FloatOp};

/// Folds a conv's batch norm into its weights and bias; a conv without batch norm is returned
/// unchanged. With `σ[c] = √(var[c] + eps)`:
///
/// * `W'[c, …] = W[c, …] · γ[c]/σ[c]` (paper eq. 14, `w_fold = γ·w/√(EMA(σ_B²) + ε)`),
/// * `b'[c] = β[c] + γ[c]·(b[c] − mean[c])/σ[c]` (`b = 0` without a conv bias).
///
/// Computed in f64 and rounded once to f32. The float function is unchanged:
/// `γ(W·x + b − mean)/σ + β = W'·x + b'`. The fused activation is kept (it follows BN).
///
/// ```
/// use qat_export::ir::{BatchNorm, Conv2d};
/// use qat_export::passes::bn_fold::fold_batch_norm;
/// let conv = Conv2d::new(vec![1.0, 2.0], [2, 1, 1, 1]).with_bias(vec![0.5, 0.0])
///     .with_batch_norm(BatchNorm { gamma: vec![2.0, 1.0], beta: vec![1.0, 0.0],
///                                  mean: vec![0.5, 1.0], var: vec![4.0, 0.25], eps: 0.0 });
/// let f = fold_batch_norm(&conv);
/// assert_eq!(f.weight, vec![1.0, 4.0]);          // 1·2/2, 2·1/0.5
/// assert_eq!(f.bias, Some(vec![1.0, -2.0]));     // 1 + 2(0.5 − 0.5)/2, 0 + 1(0 − 1)/0.5
/// assert!(f.batch_norm.is_none());
/// ```
pub fn fold_batch_norm(conv: &Conv2d) -> Conv2d {
    let Some(bn) = &conv.batch_norm else {
        return conv.clone();
    };
    let o = conv.out_channels();
    let per_out = conv.weight.len() / o.max(1);
    let mut weight = conv.weight.clone();
    let mut bias = vec![0f32; o];
    for c in 0..o {
        let sigma = (bn.var[c] as f64 + bn.eps as f64).sqrt();
        let k = bn.gamma[c] as f64 / sigma;
        for w in &mut weight[c * per_out..(c + 1) * per_out] {
            *w = (*w as f64 * k) as f32;
        }
        let b = conv.bias.as_ref().map_or(0.0, |b| b[c] as f64);
        bias[c] = (bn.beta[c] as f64 + k * (b - bn.mean[c] as f64)) as f32;
    }
    Conv2d {
        weight,
        bias: Some(bias),
        batch_norm: None,
        ..conv.clone()
    }
}

/// Applies [`fold_batch_norm`] to every conv of the graph (ranges, names and everything else are
/// kept).
pub fn fold_graph_batch_norms(g: &FloatGraph) -> FloatGraph {
    let mut out = g.clone();
    for n in &mut out.nodes {
        if let FloatOp::Conv2d(c) = &n.op
            && c.batch_norm.is_some()
        {
            n.op = FloatOp::Conv2d(fold_batch_norm(c));
        }
    }
    out
}
