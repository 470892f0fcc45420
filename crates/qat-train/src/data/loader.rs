//! Batching: normalization, augmentation, deterministic per-epoch order, background prefetch.

use std::iter::StepBy;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{DataError, Dataset, Result, SplitMix64};

/// Per-channel normalization `x = (p/255 − mean_c) / std_c`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Mean of `p/255` per channel.
    pub mean: Vec<f32>,
    /// Standard deviation of `p/255` per channel (must be > 0).
    pub std: Vec<f32>,
}

impl Normalize {
    /// No shift, no scaling beyond `p/255` (values in `[0, 1]`).
    pub fn unit(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The customary MNIST statistics (mean 0.1307, std 0.3081 of the full training set).
    pub fn mnist() -> Self {
        Self {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }

    /// The customary CIFAR-10 training-set statistics.
    pub fn cifar10() -> Self {
        Self {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// Statistics measured on `ds` ([`Dataset::channel_stats`]).
    pub fn from_dataset(ds: &Dataset) -> Self {
        let (mean, std) = ds.channel_stats();
        Self { mean, std }
    }
}

/// Training-time augmentation (the standard CIFAR recipe): zero-pad by `pad` pixels and crop back to the
/// original size at a uniformly random offset, then flip horizontally with probability ½ if `flip`.
/// Padding happens in pixel space (value 0) before normalization, as torchvision's `RandomCrop(padding=4)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Padding on each side before the random crop (0: no crop).
    pub pad: usize,
    /// Random horizontal flip.
    pub flip: bool,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Self::default()
    }

    /// Crop with 4-pixel padding and horizontal flip (CIFAR-10).
    pub fn cifar() -> Self {
        Self { pad: 4, flip: true }
    }

    fn is_none(&self) -> bool {
        self.pad == 0 && !self.flip
    }
}

/// How a [`Loader`] cuts a dataset into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Draw a new permutation every epoch (training) or keep the file order (evaluation).
    pub shuffle: bool,
    /// Seed of the permutations and augmentation draws.
    pub seed: u64,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Pixel normalization; `mean.len()` must equal the dataset's channel count.
    pub normalize: Normalize,
    /// Augmentation (training only).
    pub augment: Augment,
    /// Batches assembled ahead on a background thread; 0 assembles them on the calling thread.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: false,
            seed: 0,
            drop_last: false,
            normalize: Normalize::unit(1),
            augment: Augment::none(),
            prefetch: 2,
        }
    }
}

/// One batch: `images` f32 `[B, C, H, W]` on the CPU, `labels` i64 `[B]`.
#[derive(Debug)]
pub struct Batch {
    /// Index of the batch within its epoch.
    pub index: usize,
    /// Normalized images, NCHW, f32.
    pub images: Tensor,
    /// Class labels, i64.
    pub labels: Tensor,
}

/// A batch as plain vectors, built off the main thread (no tensor is created on the worker).
struct HostBatch {
    index: usize,
    images: Vec<f32>,
    labels: Vec<i64>,
}

/// Cuts a shared [`Dataset`] into [`Batch`]es according to a [`LoaderConfig`].
#[derive(Debug, Clone)]
pub struct Loader {
    data: Arc<Dataset>,
    cfg: LoaderConfig,
}

impl Loader {
    /// Validates the configuration against the dataset.
    pub fn new(data: Arc<Dataset>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::Config(format!(
                "{}: batch_size must be > 0",
                data.name
            )));
        }
        if cfg.normalize.mean.len() != data.channels || cfg.normalize.std.len() != data.channels {
            return Err(DataError::Config(format!(
                "{}: normalization has {}/{} mean/std values for {} channels",
                data.name,
                cfg.normalize.mean.len(),
                cfg.normalize.std.len(),
                data.channels
            )));
        }
        if cfg
            .normalize
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(DataError::Config(format!(
                "{}: normalization std must be finite and > 0",
                data.name
            )));
        }
        if data.is_empty() {
            return Err(DataError::Config(format!(
                "{}: dataset is empty",
                data.name
            )));
        }
        Ok(Self { data, cfg })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.data.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Samples per epoch (after `drop_last`).
    pub fn samples_per_epoch(&self) -> usize {
        if self.cfg.drop_last {
            self.num_batches() * self.cfg.batch_size
        } else {
            self.data.len()
        }
    }

    /// The sample order of epoch `epoch`: identity without shuffle, else `SplitMix64::derived([seed, epoch])`
    /// permutation.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.cfg.shuffle {
            SplitMix64::derived(&[self.cfg.seed, epoch]).permutation(self.data.len())
        } else {
            (0..self.data.len()).collect()
        }
    }

    /// The batches of epoch `epoch`, starting at batch `start_batch` (for exact resume in the middle of an
    /// epoch). With `prefetch > 0` they are assembled on a background thread, at most `prefetch` ahead.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> EpochIter {
        self.epoch_shard(epoch, start_batch, 0, 1)
    }

    /// The batches `b` of epoch `epoch` with `b ≥ start_batch` and `b mod world = rank`, in order:
    /// one rank's shard for data-parallel training. Only these batches are assembled (the others
    /// cost nothing); their contents and indices are those [`Loader::epoch`] gives them. A `world`
    /// of 0 is taken as 1 and a `rank ≥ world` yields nothing.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use qat_train::data::{Dataset, Loader, LoaderConfig};
    /// let data = Arc::new(Dataset::synthetic(40, 4, 1, 4, 4, 1)?);
    /// let loader = Loader::new(data, LoaderConfig { batch_size: 4, ..LoaderConfig::default() })?;
    /// let idx: Vec<usize> = loader.epoch_shard(0, 3, 1, 3).map(|b| b.unwrap().index).collect();
    /// assert_eq!(idx, [4, 7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn epoch_shard(
        &self,
        epoch: u64,
        start_batch: usize,
        rank: usize,
        world: usize,
    ) -> EpochIter {
        let world = world.max(1);
        let total = self.num_batches();
        // The first batch at or after `start_batch` that belongs to `rank`.
        let first = if rank < world {
            start_batch.saturating_add((rank + world - start_batch % world) % world)
        } else {
            total
        };
        let batches = (first.min(total)..total).step_by(world);
        let job = Job {
            data: Arc::clone(&self.data),
            cfg: self.cfg.clone(),
            order: self.order(epoch),
            epoch,
        };
        let shape = [
            self.data.channels as i64,
            self.data.height as i64,
            self.data.width as i64,
        ];
        if self.cfg.prefetch == 0 {
            return EpochIter {
                source: Source::Inline { job, batches },
                shape,
            };
        }
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let handle = std::thread::Builder::new()
            .name("qat-prefetch".into())
            .spawn(move || job.run(batches, tx))
            .map_err(|e| e.to_string());
        match handle {
            Ok(h) => EpochIter {
                source: Source::Thread {
                    rx: Some(rx),
                    handle: Some(h),
                },
                shape,
            },
            Err(e) => EpochIter {
                source: Source::Failed(Some(e)),
                shape,
            },
        }
    }
}

struct Job {
    data: Arc<Dataset>,
    cfg: LoaderConfig,
    order: Vec<usize>,
    epoch: u64,
}

impl Job {
    fn run(self, batches: StepBy<Range<usize>>, tx: SyncSender<HostBatch>) {
        for b in batches {
            if tx.send(self.batch(b)).is_err() {
                return; // the consumer went away: stop quietly
            }
        }
    }

    fn batch(&self, b: usize) -> HostBatch {
        let bs = self.cfg.batch_size;
        let idx = &self.order[b * bs..((b + 1) * bs).min(self.order.len())];
        let ds = &*self.data;
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let per = c * h * w;
        let mut images = vec![0f32; idx.len() * per];
        let mut labels = Vec::with_capacity(idx.len());
        let mut rng = SplitMix64::derived(&[self.cfg.seed, self.epoch, b as u64, 0xa06]);
        // Lookup table per channel: normalized value of each byte.
        let lut: Vec<[f32; 256]> = (0..c)
            .map(|ch| {
                let (m, s) = (self.cfg.normalize.mean[ch], self.cfg.normalize.std[ch]);
                std::array::from_fn(|p| (p as f32 / 255.0 - m) / s)
            })
            .collect();
        let aug = self.cfg.augment;
        for (k, &i) in idx.iter().enumerate() {
            labels.push(i64::from(ds.labels[i]));
            let src = ds.image(i);
            let dst = &mut images[k * per..(k + 1) * per];
            if aug.is_none() {
                for ch in 0..c {
                    let plane = h * w;
                    for (d, &p) in dst[ch * plane..(ch + 1) * plane]
                        .iter_mut()
                        .zip(&src[ch * plane..(ch + 1) * plane])
                    {
                        *d = lut[ch][usize::from(p)];
                    }
                }
                continue;
            }
            let pad = aug.pad as isize;
            let (dy, dx) = if aug.pad > 0 {
                (
                    rng.below(2 * aug.pad + 1) as isize - pad,
                    rng.below(2 * aug.pad + 1) as isize - pad,
                )
            } else {
                (0, 0)
            };
            let flip = aug.flip && rng.next_u64() & 1 == 1;
            for ch in 0..c {
                for y in 0..h {
                    let sy = y as isize + dy;
                    for x in 0..w {
                        let xs = if flip { w - 1 - x } else { x };
                        let sx = xs as isize + dx;
                        let p = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                            src[(ch * h + sy as usize) * w + sx as usize]
                        } else {
                            0
                        };
                        dst[(ch * h + y) * w + x] = lut[ch][usize::from(p)];
                    }
                }
            }
        }
        HostBatch {
            index: b,
            images,
            labels,
        }
    }
}

enum Source {
    Inline {
        job: Job,
        batches: StepBy<Range<usize>>,
    },
    Thread {
        rx: Option<Receiver<HostBatch>>,
        handle: Option<JoinHandle<()>>,
    },
    Failed(Option<String>),
}

/// Iterator over the batches of one epoch (see [`Loader::epoch`]). Dropping it stops the prefetch thread.
pub struct EpochIter {
    source: Source,
    shape: [i64; 3],
}

impl EpochIter {
    fn to_batch(&self, hb: HostBatch) -> Result<Batch> {
        let n = hb.labels.len() as i64;
        let [c, h, w] = self.shape;
        let images = Tensor::f_from_slice(&hb.images)?.f_view([n, c, h, w])?;
        let labels = Tensor::f_from_slice(&hb.labels)?;
        Ok(Batch {
            index: hb.index,
            images,
            labels,
        })
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let hb = match &mut self.source {
            Source::Inline { job, batches } => job.batch(batches.next()?),
            Source::Thread { rx, handle } => match rx.as_ref().map(|r| r.recv()) {
                Some(Ok(hb)) => hb,
                _ => {
                    // Channel closed: normal end of the epoch, or the worker panicked.
                    rx.take();
                    if let Some(h) = handle.take()
                        && h.join().is_err()
                    {
                        return Some(Err(DataError::Prefetch("batch thread panicked".into())));
                    }
                    return None;
                }
            },
            Source::Failed(e) => return e.take().map(|e| Err(DataError::Prefetch(e))),
        };
        Some(self.to_batch(hb))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let Source::Thread { rx, handle } = &mut self.source {
            rx.take(); // unblocks a worker waiting in send()
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for EpochIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochIter")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}
