//! Datasets: IDX (MNIST/Fashion-MNIST), CIFAR-10 binary, the shipped MNIST-10k, synthetic data for tests.
//!
//! A [`Dataset`] holds `u8` images in NCHW order (`[N, C, H, W]`, the layout the tch models train in; the
//! export graph and the int8 runtime use NHWC, and [`crate::convert`] handles the change) and one class label
//! per image. A [`Loader`] turns a dataset into [`Batch`]es of `f32` tensors:
//!
//! * pixels become `x = (p/255 − mean_c) / std_c` ([`Normalize`], per channel);
//! * the sample order of epoch `e` is a Fisher–Yates permutation drawn from [`SplitMix64`] seeded by
//!   `(seed, e)`, so every epoch (and every resumed epoch) sees the same order on every machine;
//! * optional CIFAR augmentation ([`Augment`]): random crop after zero padding and random horizontal flip, with
//!   the randomness of batch `b` seeded by `(seed, e, b)` so that skipping batches on resume is exact;
//! * batches are assembled on a background thread and handed over through a bounded channel
//!   (`prefetch` batches ahead), then turned into tensors on the calling thread.
//!
//! Malformed input is a [`DataError`] naming the file: missing, truncated, bad magic, inconsistent counts,
//! labels out of range.
//!
//! ```
//! use qat_train::data::{Dataset, Loader, LoaderConfig, Normalize};
//! let ds = Dataset::synthetic(64, 4, 1, 8, 8, 7)?;
//! let loader = Loader::new(ds.into(), LoaderConfig { batch_size: 16, normalize: Normalize::unit(1), ..Default::default() })?;
//! let batches: Vec<_> = loader.epoch(0, 0).collect::<Result<_, _>>()?;
//! assert_eq!(batches.len(), 4);
//! assert_eq!(batches[0].images.size(), vec![16, 1, 8, 8]);
//! # Ok::<(), qat_train::data::DataError>(())
//! ```

mod cifar;
mod idx;
mod loader;
mod rng;

use std::path::{Path, PathBuf};

pub use cifar::{CIFAR10_CLASSES, read_cifar10_batch};
pub use idx::{read_idx_images, read_idx_labels};
pub use loader::{Augment, Batch, EpochIter, Loader, LoaderConfig, Normalize};
pub use rng::SplitMix64;

/// Errors of the data readers and loaders; every variant names the file (or dataset) it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read (missing, permissions, corrupt gzip stream).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends before the data its header announces.
    #[error("{path} is truncated: expected {expected} bytes, found {got}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header (or record size) requires.
        expected: usize,
        /// Bytes present (after decompression).
        got: usize,
    },
    /// The IDX magic number is not the one expected (`0x00000803` images, `0x00000801` labels).
    #[error("{path}: bad magic 0x{got:08x}, expected 0x{expected:08x}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number expected.
        expected: u32,
        /// The magic number found.
        got: u32,
    },
    /// The file is well formed but its content is not usable (extra bytes, zero dimensions, …).
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Image and label files disagree on the number of samples.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// A label is not in `0..num_classes`.
    #[error("{path}: label {label} of sample {index} is not below the class count {num_classes}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Sample index.
        index: usize,
        /// The label found.
        label: u8,
        /// Number of classes.
        num_classes: usize,
    },
    /// A directory does not contain the expected dataset file (raw or `.gz`).
    #[error("dataset file {name} (or {name}.gz) not found in {dir}")]
    MissingFile {
        /// The directory searched.
        dir: PathBuf,
        /// The file name looked for.
        name: String,
    },
    /// A loader or split was configured with invalid values.
    #[error("invalid data configuration: {0}")]
    Config(String),
    /// The background batch thread stopped unexpectedly.
    #[error("the prefetch thread stopped: {0}")]
    Prefetch(String),
    /// Turning a batch into a tensor failed.
    #[error("tensor conversion failed: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, DataError>;

/// An image-classification dataset held in memory: `u8` pixels in NCHW order plus one label per image.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Human-readable name (file or directory it came from).
    pub name: String,
    /// Pixels, `len × channels × height × width` bytes, NCHW.
    pub images: Vec<u8>,
    /// Labels in `0..num_classes`.
    pub labels: Vec<u8>,
    /// Channels per image (1 for MNIST, 3 for CIFAR).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
}

/// A train/test pair as shipped by MNIST-style and CIFAR-style datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTest {
    /// Training set.
    pub train: Dataset,
    /// Test set.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a dataset from NCHW `u8` pixels and labels, checking sizes and labels.
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u8>,
        [channels, height, width]: [usize; 3],
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        let per = channels * height * width;
        if per == 0 || num_classes == 0 {
            return Err(DataError::Config(format!(
                "{name}: zero-sized images or no classes"
            )));
        }
        if images.len() != labels.len() * per {
            return Err(DataError::Config(format!(
                "{name}: {} pixel bytes for {} labels of {per} bytes each",
                images.len(),
                labels.len()
            )));
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| usize::from(**l) >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                path: PathBuf::from(&name),
                index,
                label,
                num_classes,
            });
        }
        Ok(Self {
            name,
            images,
            labels,
            channels,
            height,
            width,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The pixels of sample `i` (NCHW slice of `C·H·W` bytes). Panics if `i >= len()` (an index bug, not input).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order (indices must be `< len()`, else [`DataError::Config`]).
    pub fn subset(&self, indices: &[usize], name: impl Into<String>) -> Result<Self> {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(DataError::Config(format!(
                    "{}: index {i} out of {} samples",
                    self.name,
                    self.len()
                )));
            }
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Self {
            name: name.into(),
            images,
            labels,
            ..self.clone_meta()
        })
    }

    fn clone_meta(&self) -> Self {
        Self {
            name: self.name.clone(),
            images: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
        }
    }

    /// The first `n` samples (all if `n >= len()`).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone_meta()
        }
    }

    /// Deterministic shuffled split: a permutation drawn from `SplitMix64(seed)` puts `n_second` samples in the
    /// second set and the rest in the first (e.g. train/validation). Same seed, same split on every machine.
    pub fn split(&self, n_second: usize, seed: u64) -> Result<(Self, Self)> {
        if n_second > self.len() {
            return Err(DataError::Config(format!(
                "{}: cannot split {n_second} samples off {}",
                self.name,
                self.len()
            )));
        }
        let perm = SplitMix64::new(seed).permutation(self.len());
        let (a, b) = perm.split_at(self.len() - n_second);
        Ok((
            self.subset(a, format!("{}[split a]", self.name))?,
            self.subset(b, format!("{}[split b]", self.name))?,
        ))
    }

    /// Per-class sample counts.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            c[usize::from(l)] += 1;
        }
        c
    }

    /// Per-channel mean and standard deviation of `p/255` over the whole set (for [`Normalize`]).
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let hw = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.images.chunks_exact(self.image_len()) {
            for (c, plane) in img.chunks_exact(hw).enumerate() {
                for &p in plane {
                    let v = f64::from(p) / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * hw).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| ((q / count - (s / count).powi(2)).max(0.0).sqrt() as f32).max(1e-6))
            .collect();
        (mean, std)
    }

    /// A learnable synthetic dataset for tests and benchmarks: class `k` is a bright square at a class-specific
    /// position (on a `√classes`-sided grid) plus uniform noise in `[0, 64)`, all drawn from `SplitMix64(seed)`.
    /// Zero-sized images are a [`DataError::Config`], as in [`Dataset::new`].
    pub fn synthetic(
        n: usize,
        num_classes: usize,
        channels: usize,
        height: usize,
        width: usize,
        seed: u64,
    ) -> Result<Self> {
        let num_classes = num_classes.max(1);
        let mut rng = SplitMix64::new(seed);
        let grid = (num_classes as f64).sqrt().ceil() as usize;
        let (ch, cw) = ((height / grid).max(1), (width / grid).max(1));
        let per = channels * height * width;
        let mut images = vec![0u8; n * per];
        let mut labels = Vec::with_capacity(n);
        // Zero-sized images: no chunks, no labels, and `new` says what is wrong.
        for (i, img) in images.chunks_exact_mut(per.max(1)).enumerate() {
            let label = (i % num_classes) as u8;
            labels.push(label);
            let (gy, gx) = (usize::from(label) / grid, usize::from(label) % grid);
            for c in 0..channels {
                for y in 0..height {
                    for x in 0..width {
                        let noise = (rng.next_u64() % 64) as u8;
                        let inside = y / ch == gy && x / cw == gx;
                        img[(c * height + y) * width + x] =
                            if inside { 180 + noise } else { noise };
                    }
                }
            }
        }
        Self::new(
            format!("synthetic[{n}x{channels}x{height}x{width}, {num_classes} classes]"),
            images,
            labels,
            [channels, height, width],
            num_classes,
        )
    }

    /// Loads an MNIST-style directory (MNIST, Fashion-MNIST, the shipped `data/mnist-10k`): the four standard
    /// files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    /// `t10k-labels-idx1-ubyte`, each raw or `.gz`.
    pub fn load_mnist_dir(dir: impl AsRef<Path>) -> Result<TrainTest> {
        let dir = dir.as_ref();
        let train = idx::load_idx_pair(
            &find_file(dir, "train-images-idx3-ubyte")?,
            &find_file(dir, "train-labels-idx1-ubyte")?,
            10,
        )?;
        let test = idx::load_idx_pair(
            &find_file(dir, "t10k-images-idx3-ubyte")?,
            &find_file(dir, "t10k-labels-idx1-ubyte")?,
            10,
        )?;
        Ok(TrainTest { train, test })
    }

    /// Loads an IDX image file and its label file (raw or `.gz`) as one dataset with `num_classes` classes.
    pub fn load_idx(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        num_classes: usize,
    ) -> Result<Self> {
        idx::load_idx_pair(images.as_ref(), labels.as_ref(), num_classes)
    }

    /// Loads the CIFAR-10 binary directory (`cifar-10-batches-bin`): `data_batch_1.bin` … `data_batch_5.bin` for
    /// training and `test_batch.bin` for testing (each raw or `.gz`).
    pub fn load_cifar10_dir(dir: impl AsRef<Path>) -> Result<TrainTest> {
        let dir = dir.as_ref();
        let train_files: Vec<PathBuf> = (1..=5)
            .map(|i| find_file(dir, &format!("data_batch_{i}.bin")))
            .collect::<Result<_>>()?;
        let train = Self::load_cifar10_files(&train_files)?;
        let test = Self::load_cifar10_files(&[find_file(dir, "test_batch.bin")?])?;
        Ok(TrainTest { train, test })
    }

    /// Loads and concatenates CIFAR-10 binary batch files (records of 1 label byte + 3072 CHW pixel bytes).
    pub fn load_cifar10_files(files: &[PathBuf]) -> Result<Self> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let (img, lab) = read_cifar10_batch(f)?;
            images.extend(img);
            labels.extend(lab);
        }
        let name = files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "cifar10[empty]".into());
        Self::new(name, images, labels, [3, 32, 32], CIFAR10_CLASSES)
    }
}

/// Finds `name` or `name.gz` in `dir`.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::MissingFile {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })
}

/// Largest data file read, before and after gunzipping (1 GiB; MNIST's largest file is 47 MB,
/// a CIFAR-10 batch 30 MB): a device, a pipe or a gzip bomb cannot make a reader allocate more.
pub const MAX_DATA_FILE_BYTES: u64 = 1 << 30;

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic `1f 8b`.
/// Reads at most [`MAX_DATA_FILE_BYTES`] (+ 1 to detect more) before and after decompression; a
/// truncated or corrupt gzip stream is [`DataError::Io`] naming the file.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |what: &str| DataError::Malformed {
        path: path.to_path_buf(),
        reason: format!("{what} is larger than the {MAX_DATA_FILE_BYTES}-byte limit"),
    };
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_DATA_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    if raw.len() as u64 > MAX_DATA_FILE_BYTES {
        return Err(too_large("the file"));
    }
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_DATA_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(io)?;
        if out.len() as u64 > MAX_DATA_FILE_BYTES {
            return Err(too_large("the decompressed content"));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}
