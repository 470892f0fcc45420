//! The quantize command's inputs: the dataset directory (IDX or CIFAR-10 binary), the input
//! normalization (flags, the model's `metadata_props`, or the training split's statistics), and
//! normalized NHWC batches with a progress bar over them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use qat_export::onnx::proto::ModelProto;
use qat_train::data::{Dataset, Normalize, TrainTest};
use xtask::quantize_report::NormSource;

/// `metadata_props` keys holding the input normalization: comma-separated floats, one per channel
/// (or one for all), pixels `(p/255 − mean_c)/std_c`.
pub const MEAN_KEY: &str = "input_mean";
/// See [`MEAN_KEY`].
pub const STD_KEY: &str = "input_std";

/// Loads an IDX (`train-images-idx3-ubyte[.gz]` …) or CIFAR-10 binary (`data_batch_*.bin`,
/// `test_batch.bin`) directory.
pub fn load_data(dir: &Path) -> Result<TrainTest> {
    let has = |f: &str| dir.join(f).exists() || dir.join(format!("{f}.gz")).exists();
    if has("train-images-idx3-ubyte") {
        Ok(Dataset::load_mnist_dir(dir)?)
    } else if dir.join("test_batch.bin").exists() {
        Ok(Dataset::load_cifar10_dir(dir)?)
    } else {
        bail!(
            "{}: no IDX files (train-images-idx3-ubyte[.gz] …) and no CIFAR-10 batches (test_batch.bin …); see docs/import.md",
            dir.display()
        )
    }
}

/// Parses `"0.5"` or `"0.485,0.456,0.406"` into `channels` values (one value is repeated).
fn per_channel(what: &str, s: &str, channels: usize) -> Result<Vec<f32>> {
    let v = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .with_context(|| format!("{what} {s:?}: {p:?} is not a number"))
        })
        .collect::<Result<Vec<f32>>>()?;
    match v.len() {
        1 => Ok(vec![v[0]; channels]),
        n if n == channels => Ok(v),
        n => bail!("{what} {s:?}: {n} values for {channels} channels (give 1 or {channels})"),
    }
}

/// `(mean, std)` strings from the model's `metadata_props`, if both are there.
fn metadata(onnx: &[u8]) -> Result<Option<(String, String)>> {
    let model = ModelProto::decode(onnx).context("not an ONNX model")?;
    let get = |k: &str| {
        model
            .metadata_props
            .iter()
            .find(|p| p.key.as_deref() == Some(k))
            .and_then(|p| p.value.clone())
    };
    match (get(MEAN_KEY), get(STD_KEY)) {
        (Some(m), Some(s)) => Ok(Some((m, s))),
        (None, None) => Ok(None),
        _ => bail!("the model's metadata_props has only one of {MEAN_KEY} and {STD_KEY}"),
    }
}

/// The normalization: `--mean`/`--std` (both or neither), else the model's metadata, else the
/// training split's statistics. Every std must be finite and > 0.
pub fn normalization(
    mean: Option<&str>,
    std: Option<&str>,
    onnx: &[u8],
    train: &Dataset,
) -> Result<(Normalize, NormSource)> {
    let channels = train.image_shape()[0];
    let (norm, source) = match (mean, std) {
        (Some(m), Some(s)) => (
            Normalize {
                mean: per_channel("--mean", m, channels)?,
                std: per_channel("--std", s, channels)?,
            },
            NormSource::Flags,
        ),
        (None, None) => match metadata(onnx)? {
            Some((m, s)) => (
                Normalize {
                    mean: per_channel("metadata_props input_mean", &m, channels)?,
                    std: per_channel("metadata_props input_std", &s, channels)?,
                },
                NormSource::Metadata,
            ),
            None => (Normalize::from_dataset(train), NormSource::Dataset),
        },
        _ => bail!("give both --mean and --std, or neither"),
    };
    if let Some(bad) = norm.std.iter().find(|d| !(**d > 0.0 && d.is_finite())) {
        bail!("normalization ({source:?}): std {bad} is not > 0");
    }
    if let Some(bad) = norm.mean.iter().find(|m| !m.is_finite()) {
        bail!("normalization ({source:?}): mean {bad} is not finite");
    }
    Ok((norm, source))
}

/// Images `range` of `ds` as a normalized NHWC f32 batch `[n, H, W, C]`.
pub fn nhwc_batch(ds: &Dataset, range: std::ops::Range<usize>, norm: &Normalize) -> ArrayD<f32> {
    let [c, h, w] = ds.image_shape();
    let n = range.len();
    let mut out = vec![0f32; n * h * w * c];
    for (b, i) in range.enumerate() {
        let img = ds.image(i);
        for ch in 0..c {
            for p in 0..h * w {
                let x = f32::from(img[ch * h * w + p]) / 255.0;
                out[(b * h * w + p) * c + ch] = (x - norm.mean[ch]) / norm.std[ch];
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), out).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: ndarray::ArrayView1<'_, f32>) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// A progress bar over `n` items.
pub fn bar(what: &str, n: usize, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64).with_message(what.to_string());
    let template = format!("{{msg:>28}} {{bar:40}} {{pos}}/{{len}} {unit} ({{elapsed}})");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Predicted classes of `f` over the first `n` images of `ds`, 256 at a time, with a progress bar.
pub fn predict(
    what: &str,
    ds: &Dataset,
    n: usize,
    norm: &Normalize,
    mut f: impl FnMut(&ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<Vec<usize>> {
    let bar = bar(what, n, "images");
    let mut preds = Vec::with_capacity(n);
    for start in (0..n).step_by(256) {
        let x = nhwc_batch(ds, start..(start + 256).min(n), norm);
        let y = f(&x)?
            .into_dimensionality::<ndarray::Ix2>()
            .context("the model's output is not [N, classes]")?;
        preds.extend(y.rows().into_iter().map(argmax));
        bar.inc(x.shape()[0] as u64);
    }
    bar.finish();
    Ok(preds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qat_export::onnx::proto::StringStringEntryProto;

    fn onnx_with(props: &[(&str, &str)]) -> Vec<u8> {
        ModelProto {
            metadata_props: props
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn flags_then_metadata_then_the_dataset() {
        let ds = Dataset::synthetic(16, 4, 3, 8, 8, 1).unwrap();
        let meta = onnx_with(&[(MEAN_KEY, "0.4,0.5,0.6"), (STD_KEY, "0.2")]);
        let (n, src) = normalization(Some("0.1"), Some("0.3,0.3,0.25"), &meta, &ds).unwrap();
        assert_eq!(src, NormSource::Flags);
        assert_eq!((n.mean, n.std), (vec![0.1; 3], vec![0.3, 0.3, 0.25]));
        let (n, src) = normalization(None, None, &meta, &ds).unwrap();
        assert_eq!(src, NormSource::Metadata);
        assert_eq!((n.mean, n.std), (vec![0.4, 0.5, 0.6], vec![0.2; 3]));
        let (n, src) = normalization(None, None, &onnx_with(&[]), &ds).unwrap();
        assert_eq!(src, NormSource::Dataset);
        let stats = Normalize::from_dataset(&ds);
        assert_eq!((n.mean, n.std), (stats.mean, stats.std));
    }

    #[test]
    fn bad_normalizations_are_errors_that_say_where() {
        let ds = Dataset::synthetic(8, 2, 3, 4, 4, 2).unwrap();
        let none = onnx_with(&[]);
        let err = |m: Option<&str>, s: Option<&str>, onnx: &[u8]| {
            normalization(m, s, onnx, &ds).unwrap_err().to_string()
        };
        assert!(err(Some("0.1,0.2"), Some("1"), &none).contains("2 values for 3 channels"));
        assert!(err(Some("0.1"), Some("0"), &none).contains("std 0 is not > 0"));
        assert!(err(Some("0.1"), Some("nan"), &none).contains("not > 0"));
        assert!(err(Some("x"), Some("1"), &none).contains("--mean"));
        assert!(err(Some("0.1"), None, &none).contains("both --mean and --std"));
        let half = onnx_with(&[(MEAN_KEY, "0.5")]);
        assert!(err(None, None, &half).contains("only one of"));
        let bad = onnx_with(&[(MEAN_KEY, "0.5"), (STD_KEY, "-1")]);
        assert!(err(None, None, &bad).contains("Metadata"));
        assert!(err(None, None, b"\xff\xff\xff").contains("not an ONNX model"));
    }

    #[test]
    fn batches_are_nhwc_and_normalized() {
        let ds = Dataset::synthetic(3, 2, 3, 2, 2, 3).unwrap();
        let norm = Normalize {
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0, 0.5, 2.0],
        };
        let x = nhwc_batch(&ds, 1..3, &norm);
        assert_eq!(x.shape(), &[2, 2, 2, 3]);
        let img = ds.image(2);
        // Pixel (y = 1, x = 0) of channel 2 of image 2: CHW index 2·4 + 1·2 + 0.
        let want = (f32::from(img[10]) / 255.0 - 1.0) / 2.0;
        assert_eq!(x[[1, 1, 0, 2]], want);
        assert_eq!(argmax(ndarray::arr1(&[0.0, 3.0, 3.0, -1.0]).view()), 1);
    }
}
