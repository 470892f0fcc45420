//! Weight layout conversions from PyTorch/ONNX's NCHW world into this IR's NHWC conventions.

/// Converts PyTorch `OIHW` conv weights (`shape = [O, I, kh, kw]`) to this IR's `OHWI`
/// layout; returns the data and the OHWI shape `[O, kh, kw, I]`.
///
/// ```
/// // O=1, I=2, kh=1, kw=2: OIHW [[ [a b] ], [ [c d] ]] → OHWI [[ [a c], [b d] ]]
/// let (w, s) = qat_export::ir::ohwi_from_oihw(&[1.0, 2.0, 3.0, 4.0], [1, 2, 1, 2]);
/// assert_eq!(w, vec![1.0, 3.0, 2.0, 4.0]);
/// assert_eq!(s, [1, 1, 2, 2]);
/// ```
pub fn ohwi_from_oihw(w: &[f32], shape: [usize; 4]) -> (Vec<f32>, [usize; 4]) {
    let [o, i, kh, kw] = shape;
    let mut out = vec![0.0; o * i * kh * kw];
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((a * i + b) * kh + y) * kw + x;
                    let dst = ((a * kh + y) * kw + x) * i + b;
                    if let (Some(d), Some(s)) = (out.get_mut(dst), w.get(src)) {
                        *d = *s;
                    }
                }
            }
        }
    }
    (out, [o, kh, kw, i])
}

/// Permutes the columns of linear weights `[out, C·H·W]` that follow a PyTorch NCHW flatten so
/// that they apply to this IR's NHWC flatten (`[H·W·C]`).
///
/// ```
/// // C=2, H=1, W=2: NCHW order (c0w0, c0w1, c1w0, c1w1) → NHWC (w0c0, w0c1, w1c0, w1c1)
/// let w = qat_export::ir::linear_from_nchw_flatten(&[1.0, 2.0, 3.0, 4.0], 1, [2, 1, 2]);
/// assert_eq!(w, vec![1.0, 3.0, 2.0, 4.0]);
/// ```
pub fn linear_from_nchw_flatten(w: &[f32], out: usize, chw: [usize; 3]) -> Vec<f32> {
    let [c, h, wd] = chw;
    let n = c * h * wd;
    let mut res = vec![0.0; out * n];
    for o in 0..out {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..wd {
                    let src = o * n + (ci * h + y) * wd + x;
                    let dst = o * n + (y * wd + x) * c + ci;
                    if let (Some(d), Some(s)) = (res.get_mut(dst), w.get(src)) {
                        *d = *s;
                    }
                }
            }
        }
    }
    res
}
