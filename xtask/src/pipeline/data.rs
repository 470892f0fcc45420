//! The dataset of a run: where it comes from, its splits, and its images as NHWC (integer runtime)
//! or NCHW (libtorch) arrays.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use ndarray::{ArrayD, Axis, IxDyn};
use qat_train::data::{Dataset, Normalize};
use tch::{Device, Tensor};
use xtask::report::DatasetInfo;

use xtask::config::Config;

use super::{Args, Pipeline};

/// The directory a configuration's data comes from, and the dataset's name: `data.dataset` is a
/// dataset installed by `cargo xtask setup --data NAME` into the per-user cache; `data.dir` is a
/// directory (relative to the workspace root unless absolute).
fn resolve(cfg: &Config, root: &Path) -> Result<(String, PathBuf)> {
    if let Some(name) = &cfg.data.dataset {
        let dir = xtask::cache::cache_root()?.join("datasets").join(name);
        ensure!(
            dir.is_dir(),
            "dataset `{name}` is not installed ({} does not exist): run `cargo xtask setup --data {name}`",
            dir.display()
        );
        return Ok((name.clone(), dir));
    }
    let d = PathBuf::from(cfg.data.dir.as_deref().unwrap_or_default());
    let dir = if d.is_absolute() { d } else { root.join(d) };
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    Ok((name, dir))
}

impl Pipeline {
    /// Loads the data: the training split (less the held-out validation images at its end), the
    /// test split, and the test split as one normalized NHWC array.
    pub fn new(cfg: Config, root: &Path, out: &Path, args: &Args) -> Result<Self> {
        let (name, dir) = resolve(&cfg, root)?;
        let tt = Dataset::load_mnist_dir(&dir)
            .with_context(|| format!("cannot load the dataset in {}", dir.display()))?;
        let limit = |ds: Dataset, n: Option<usize>| match n {
            Some(n) if n < ds.len() => ds.take(n),
            _ => ds,
        };
        let full = limit(tt.train, cfg.data.train_limit);
        let test = limit(tt.test, cfg.data.test_limit);
        let validation = cfg.data.validation;
        ensure!(
            validation < full.len(),
            "data.validation = {validation} leaves no training images of {}",
            full.len()
        );
        // Never trained on: the last `validation` images of the training split.
        let keep = full.len() - validation;
        let (train, held_out) = if validation > 0 {
            let idx: Vec<usize> = (0..full.len()).collect();
            let val = full.subset(&idx[keep..], format!("{name} validation"))?;
            (
                full.subset(&idx[..keep], format!("{name} train"))?,
                Some(val),
            )
        } else {
            (full, None)
        };
        ensure!(
            !train.is_empty() && !test.is_empty(),
            "empty train or test split in {}",
            dir.display()
        );
        let normalize = match cfg.data.normalize {
            Some([mean, std]) => Normalize {
                mean: vec![mean],
                std: vec![std],
            },
            None => Normalize::mnist(),
        };
        let (test_nhwc, test_labels) = to_nhwc(&test, &normalize, 0, test.len())?;
        let validation_nhwc = held_out
            .map(|v| to_nhwc(&v, &normalize, 0, v.len()))
            .transpose()?;
        tracing::info!(train = train.len(), test = test.len(), dir = %dir.display(), "data loaded");
        let dataset = DatasetInfo {
            name,
            dir: dir.display().to_string(),
            train: train.len(),
            validation,
            test: test.len(),
        };
        Ok(Self {
            cfg,
            out: out.to_path_buf(),
            progress: !args.no_progress,
            ablations: args.ablations,
            studies: args.study.clone(),
            quick: args.quick,
            device: Device::cuda_if_available(),
            dataset,
            train,
            test,
            normalize,
            test_nhwc,
            test_labels,
            validation: validation_nhwc,
        })
    }

    /// NHWC calibration batches from the training split.
    pub(super) fn calibration_batches(&self) -> Result<Vec<ArrayD<f32>>> {
        let bs = self.cfg.data.batch_size;
        (0..self.cfg.data.calibration_batches)
            .map(|i| i * bs)
            .take_while(|&s| s < self.train.len())
            .map(|s| {
                to_nhwc(
                    &self.train,
                    &self.normalize,
                    s,
                    (s + bs).min(self.train.len()),
                )
                .map(|(x, _)| x)
            })
            .collect()
    }
}

/// Images `[start, end)` of `ds`, normalized, as an NHWC f32 array, and their labels.
pub(super) fn to_nhwc(
    ds: &Dataset,
    norm: &Normalize,
    start: usize,
    end: usize,
) -> Result<(ArrayD<f32>, Vec<i64>)> {
    let [c, h, w] = ds.image_shape();
    ensure!(
        norm.mean.len() == c && norm.std.len() == c,
        "normalization has {} means / {} stds for {c}-channel images",
        norm.mean.len(),
        norm.std.len()
    );
    let n = end.saturating_sub(start);
    let mut x = vec![0f32; n * h * w * c];
    let mut labels = Vec::with_capacity(n);
    for (k, i) in (start..end).enumerate() {
        let img = ds.image(i); // CHW
        for ch in 0..c {
            let (m, s) = (norm.mean[ch], norm.std[ch]);
            for p in 0..h * w {
                x[(k * h * w + p) * c + ch] = (img[ch * h * w + p] as f32 / 255.0 - m) / s;
            }
        }
        labels.push(i64::from(ds.labels[i]));
    }
    Ok((ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), x)?, labels))
}

/// Rows `[start, end)` of an NHWC array as an NCHW tch tensor.
pub(super) fn nchw_tensor(nhwc: &ArrayD<f32>, start: usize, end: usize) -> Result<Tensor> {
    let s = nhwc.shape();
    ensure!(s.len() == 4, "expected NHWC images");
    let (h, w, c) = (s[1], s[2], s[3]);
    let part = nhwc.slice_axis(Axis(0), (start..end).into());
    let flat: Vec<f32> = part.iter().copied().collect();
    let t = Tensor::from_slice(&flat)
        .f_view([(end - start) as i64, h as i64, w as i64, c as i64])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?;
    Ok(t)
}
