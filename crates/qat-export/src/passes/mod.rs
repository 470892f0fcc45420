//! The export passes, one small function each, in the order export applies them:
//!
//! | pass | function | formula |
//! |---|---|---|
//! | BN folding (paper §3.2, eq. 14; whitepaper §3.2.2) | [`bn_fold::fold_batch_norm`] | `W' = W·γ/√(var + eps)`, `b' = β + γ(b − mean)/√(var + eps)` |
//! | range → activation params (paper §2.1, eq. 1; §3 nudging) | [`ranges::activation_params`] | `S = (max − min)/(2^b − 1)`, `Z = round(−min/S)`, 0 exact |
//! | weight quantization (paper §2.1; whitepaper §2.2) | [`weights::quantize_weights`] | per channel `S_w[c] = max_i abs(W[c,i])/(2^(b−1) − 1)`, `q = round(W/S_w)` |
//! | int32 bias (paper §2.4) | [`weights::quantize_bias`] | `b_q[c] = round(b[c]/(S_in·S_w[c]))`, `Z = 0` |
//! | multipliers (paper eq. 5–6) | [`weights::requant_multipliers`] | `M[c] = S_in·S_w[c]/S_out = 2^−n·M0` |
//! | activation fusion (paper §2.4) | [`fuse::activation_clamp`] | ReLU `[Z_out, qmax]`, ReLU6 `[Z_out, min(qmax, Z_out + round(6/S_out))]` |

pub mod bn_fold;
pub mod fuse;
pub mod ranges;
pub mod weights;
