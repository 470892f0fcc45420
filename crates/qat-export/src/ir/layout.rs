//! Weight layout conversions between PyTorch/ONNX's NCHW world and this IR's NHWC conventions.

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
    (permute_conv_weights(w, shape, true), [o, kh, kw, i])
}

/// The inverse of [`ohwi_from_oihw`]: this IR's `OHWI` conv weights (`shape = [O, kh, kw, I]`)
/// in PyTorch/ONNX's `OIHW` layout `[O, I, kh, kw]` (any element type: float weights, integer
/// codes). Entries the shape names beyond `w`'s end are `T::default()`.
///
/// ```
/// use qat_export::ir::{ohwi_from_oihw, oihw_from_ohwi};
/// // O=1, kh=1, kw=2, I=3: OHWI [[[a0 a1 a2] [b0 b1 b2]]] → OIHW [[a0 b0] [a1 b1] [a2 b2]]
/// assert_eq!(oihw_from_ohwi(&[1, 2, 3, 4, 5, 6], [1, 1, 2, 3]), vec![1, 4, 2, 5, 3, 6]);
/// let oihw: Vec<f32> = (0..2 * 4 * 3 * 2).map(|v| v as f32).collect();
/// let (ohwi, shape) = ohwi_from_oihw(&oihw, [2, 4, 3, 2]);
/// assert_eq!(oihw_from_ohwi(&ohwi, shape), oihw);
/// ```
pub fn oihw_from_ohwi<T: Copy + Default>(w: &[T], shape: [usize; 4]) -> Vec<T> {
    let [o, kh, kw, i] = shape;
    permute_conv_weights(w, [o, i, kh, kw], false)
}

/// Conv weights of OIHW shape `[o, i, kh, kw]` moved from OIHW to OHWI order (`to_ohwi`) or
/// back; entries beyond `w`'s end are `T::default()`.
fn permute_conv_weights<T: Copy + Default>(
    w: &[T],
    [o, i, kh, kw]: [usize; 4],
    to_ohwi: bool,
) -> Vec<T> {
    let mut out = vec![T::default(); o * i * kh * kw];
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    let oihw = ((a * i + b) * kh + y) * kw + x;
                    let ohwi = ((a * kh + y) * kw + x) * i + b;
                    let (src, dst) = if to_ohwi { (oihw, ohwi) } else { (ohwi, oihw) };
                    if let (Some(d), Some(s)) = (out.get_mut(dst), w.get(src)) {
                        *d = *s;
                    }
                }
            }
        }
    }
    out
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
    permute_flatten_columns(w, out, chw, true)
}

/// The inverse of [`linear_from_nchw_flatten`]: linear weights `[out, H·W·C]` for this IR's NHWC
/// flatten, with their columns in PyTorch's NCHW flatten order (`chw = [C, H, W]`).
///
/// ```
/// use qat_export::ir::{linear_from_nchw_flatten, linear_to_nchw_flatten};
/// // C=2, H=1, W=2: NHWC order (w0c0, w0c1, w1c0, w1c1) → NCHW (c0w0, c0w1, c1w0, c1w1)
/// assert_eq!(linear_to_nchw_flatten(&[1.0, 3.0, 2.0, 4.0], 1, [2, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]);
/// let nchw: Vec<f32> = (0..3 * 12).map(|v| v as f32).collect();
/// assert_eq!(linear_to_nchw_flatten(&linear_from_nchw_flatten(&nchw, 3, [3, 2, 2]), 3, [3, 2, 2]), nchw);
/// ```
pub fn linear_to_nchw_flatten(w: &[f32], out: usize, chw: [usize; 3]) -> Vec<f32> {
    permute_flatten_columns(w, out, chw, false)
}

/// The columns of linear weights `[out, C·H·W]` moved from NCHW to NHWC flatten order
/// (`to_nhwc`) or back; entries beyond `w`'s end are 0.
fn permute_flatten_columns(
    w: &[f32],
    out: usize,
    [c, h, wd]: [usize; 3],
    to_nhwc: bool,
) -> Vec<f32> {
    let n = c * h * wd;
    let mut res = vec![0.0; out * n];
    for o in 0..out {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..wd {
                    let nchw = o * n + (ci * h + y) * wd + x;
                    let nhwc = o * n + (y * wd + x) * c + ci;
                    let (src, dst) = if to_nhwc { (nchw, nhwc) } else { (nhwc, nchw) };
                    if let (Some(d), Some(s)) = (res.get_mut(dst), w.get(src)) {
                        *d = *s;
                    }
                }
            }
        }
    }
    res
}
