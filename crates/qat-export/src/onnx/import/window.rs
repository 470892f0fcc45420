//! Windowed ops: `Conv`, `AveragePool`, `MaxPool`, and their padding (`pads`, `auto_pad`).

use super::super::proto::NodeProto;
use super::tensor::{self, Attrs};
use super::{Form, Importer, Val};
use crate::ir::{Conv2d, Pool2d, ohwi_from_oihw};

type R<T = ()> = Result<T, String>;

/// `auto_pad` and `pads` as `[top, left, bottom, right]` for a window over `[h, w]`.
fn padding(
    attrs: &Attrs<'_>,
    hw: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> R<[usize; 4]> {
    let auto = attrs.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" => tensor::usizes::<4>(attrs, "pads", [0; 4]),
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0usize; 4];
            for a in 0..2 {
                let out = hw[a].div_ceil(s[a]);
                let span = (k[a] - 1) * d[a] + 1;
                let total = ((out - 1) * s[a] + span).saturating_sub(hw[a]);
                let (lo, hi) = (total / 2, total - total / 2);
                let (lo, hi) = if auto == "SAME_UPPER" {
                    (lo, hi)
                } else {
                    (hi, lo)
                };
                p[a] = lo;
                p[a + 2] = hi;
            }
            Ok(p)
        }
        other => Err(format!("auto_pad {other:?}")),
    }
}

/// Output size of a window: `(in + pads − span)/s + 1`, or an error when the window does not fit.
fn window_out(len: usize, pad: usize, k: usize, s: usize, d: usize) -> R<usize> {
    let span = (k.max(1) - 1) * d + 1;
    (len + pad)
        .checked_sub(span)
        .filter(|_| s > 0)
        .map(|r| r / s + 1)
        .ok_or_else(|| {
            format!("a window of {span} does not fit an input of {len} with padding {pad}")
        })
}

pub(super) fn conv(
    imp: &mut Importer<'_>,
    n: &NodeProto,
    attrs: &Attrs<'_>,
    label: &str,
) -> R<Val> {
    let (x, shape) = imp.nchw_act(n.input.first().ok_or("no input")?)?;
    let w = imp.constant(n.input.get(1).ok_or("no weight")?)?;
    let [o, ci, kh, kw] = <[usize; 4]>::try_from(w.dims.as_slice()).map_err(|_| {
        format!(
            "weight dims {:?} (a 2-D conv's OIHW weights expected)",
            w.dims
        )
    })?;
    let group = usize::try_from(attrs.int("group", 1)).map_err(|_| "negative group")?;
    if group == 0 || shape[2] != ci * group || o % group != 0 {
        return Err(format!(
            "group {group}: {} input channels, weights [{o}, {ci}, {kh}, {kw}]",
            shape[2]
        ));
    }
    let k = tensor::usizes::<2>(attrs, "kernel_shape", [kh, kw])?;
    if k != [kh, kw] {
        return Err(format!(
            "kernel_shape {k:?} differs from the weights' [{kh}, {kw}]"
        ));
    }
    let s = tensor::usizes::<2>(attrs, "strides", [1, 1])?;
    let d = tensor::usizes::<2>(attrs, "dilations", [1, 1])?;
    let p = padding(attrs, [shape[0], shape[1]], k, s, d)?;
    let oh = window_out(shape[0], p[0] + p[2], kh, s[0], d[0])?;
    let ow = window_out(shape[1], p[1] + p[3], kw, s[1], d[1])?;
    let (weight, wshape) = ohwi_from_oihw(&w.f32s(), [o, ci, kh, kw]);
    let mut c = Conv2d::new(weight, wshape)
        .with_stride(s)
        .with_padding(p)
        .with_dilation(d)
        .with_groups(group);
    if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
        let b = imp.constant(b)?;
        if b.len() != o {
            return Err(format!(
                "bias has {} values for {o} output channels",
                b.len()
            ));
        }
        c = c.with_bias(b.f32s());
    }
    let id = imp.g.conv2d(imp.fresh(label), x, c);
    Ok(Val::Act {
        id,
        form: Form::Nchw,
        shape: vec![oh, ow, o],
    })
}

pub(super) fn pool(
    imp: &mut Importer<'_>,
    n: &NodeProto,
    attrs: &Attrs<'_>,
    op: &str,
    label: &str,
) -> R<Val> {
    let (x, shape) = imp.nchw_act(n.input.first().ok_or("no input")?)?;
    let k = tensor::usizes::<2>(attrs, "kernel_shape", [0, 0])?;
    if k.contains(&0) {
        return Err("kernel_shape is missing or zero".into());
    }
    let s = tensor::usizes::<2>(attrs, "strides", [1, 1])?;
    if tensor::usizes::<2>(attrs, "dilations", [1, 1])? != [1, 1] {
        return Err("dilated pooling".into());
    }
    if attrs.int("storage_order", 0) != 0 {
        return Err("storage_order 1".into());
    }
    let p = padding(attrs, [shape[0], shape[1]], k, s, [1, 1])?;
    let oh = window_out(shape[0], p[0] + p[2], k[0], s[0], 1)?;
    let ow = window_out(shape[1], p[1] + p[3], k[1], s[1], 1)?;
    if attrs.int("ceil_mode", 0) != 0 {
        let ceil = |len: usize, pad: usize, k: usize, s: usize| (len + pad - k).div_ceil(s) + 1;
        if ceil(shape[0], p[0] + p[2], k[0], s[0]) != oh
            || ceil(shape[1], p[1] + p[3], k[1], s[1]) != ow
        {
            return Err("ceil_mode = 1 changes the output size".into());
        }
    }
    let pool = Pool2d {
        kernel: k,
        stride: s,
        padding: p,
    };
    let id = if op == "MaxPool" {
        imp.g.max_pool(imp.fresh(label), x, pool)
    } else {
        if attrs.int("count_include_pad", 0) != 0 && p != [0; 4] {
            return Err(
                "count_include_pad = 1 with padding (padding is excluded from the average)".into(),
            );
        }
        imp.g.avg_pool(imp.fresh(label), x, pool)
    };
    Ok(Val::Act {
        id,
        form: Form::Nchw,
        shape: vec![oh, ow, shape[2]],
    })
}
