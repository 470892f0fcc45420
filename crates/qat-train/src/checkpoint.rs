//! Checkpoints: VarStore safetensors plus optimizer state plus a JSON file with the schedule, observer and
//! trainer state.
//!
//! A checkpoint is a directory:
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every VarStore variable: weights, BN γ/β and moving statistics, observer min/max/frozen buffers, learned ranges |
//! | `optimizer.safetensors` | the optimizer's buffers (momentum, Adam moments) and step count ([`Optimizer::state_tensors`]) |
//! | `state.json` | `{"format": "qat-train-checkpoint", "version": 1, "state": …}`: the caller's serde state (schedule counters, epoch, history, observer snapshot) |
//!
//! All tensors are stored bit-exactly (f32), so a resumed run continues exactly as the uninterrupted one would.
//! Saving is atomic: everything is written into a sibling temporary directory `.NAME.tmp-PID`, each file and
//! the directory are flushed to disk (`fsync`), then the previous checkpoint is renamed aside to
//! `.NAME.old-PID` and the new one renamed into place. A process killed at any point leaves either the new
//! checkpoint or the previous one: when `NAME` is missing or incomplete, [`exists`], [`load`],
//! [`load_model`] and [`load_state`] use the complete `.NAME.old-*` sibling (the kill fell between the two
//! renames). Stale siblings are removed by the next successful save. A truncated or corrupt file is a
//! typed [`CheckpointError`] naming it; anything but a regular file (a device, a FIFO) is refused
//! before it is read, so a read is bounded by the file's size. A refused [`load`] changes nothing.
//!
//! ```no_run
//! # fn main() -> Result<(), qat_train::checkpoint::CheckpointError> {
//! use qat_train::checkpoint;
//! use qat_train::schedule::{Optimizer, OptimizerConfig};
//! let vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! let _w = vs.root().var("w", &[2, 2], tch::nn::Init::Const(1.0));
//! let mut opt = Optimizer::new(&vs, OptimizerConfig::default()).unwrap();
//! checkpoint::save("ckpt/last", &vs, &opt, &serde_json::json!({"epoch": 3}))?;
//! let state: serde_json::Value = checkpoint::load("ckpt/last", &vs, &mut opt)?;
//! assert_eq!(state["epoch"], 3);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tch::{Tensor, nn};

use crate::schedule::Optimizer;

/// Version of the checkpoint layout written by this crate.
pub const CHECKPOINT_VERSION: u32 = 1;
const FORMAT: &str = "qat-train-checkpoint";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// Checkpoint errors, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File-system error.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing tensors failed (missing variable, wrong shape, corrupt file).
    #[error("checkpoint {path}: {source}")]
    Tensor {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: tch::TchError,
    },
    /// The JSON state could not be written or parsed.
    #[error("checkpoint {path}: {message}")]
    Json {
        /// The path.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// The checkpoint was written by an incompatible version.
    #[error(
        "checkpoint {path}: format {format} version {version}, expected {FORMAT} version {CHECKPOINT_VERSION}"
    )]
    Version {
        /// The path.
        path: PathBuf,
        /// Format tag found.
        format: String,
        /// Version found.
        version: u32,
    },
    /// The optimizer state does not match the model.
    #[error("checkpoint {path}: optimizer state: {source}")]
    Optimizer {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: crate::schedule::ScheduleError,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: String,
    version: u32,
    state: T,
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

fn complete(d: &Path) -> bool {
    [MODEL, OPTIMIZER, STATE]
        .iter()
        .all(|f| d.join(f).is_file())
}

/// `dir`'s parent (`.` for a bare name) and file name.
fn parent_and_name(dir: &Path) -> (PathBuf, String) {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    (parent, name)
}

/// Siblings `.NAME.<kind>-PID` of `dir` (`kind` = `old` or `tmp`).
fn siblings(dir: &Path, kind: &str) -> Vec<PathBuf> {
    let (parent, name) = parent_and_name(dir);
    let prefix = format!(".{name}.{kind}-");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The directory holding the last complete checkpoint saved to `dir`: `dir` itself, or the previous
/// checkpoint a save renamed aside just before it was interrupted.
fn resolve(dir: &Path) -> PathBuf {
    if complete(dir) {
        return dir.to_path_buf();
    }
    siblings(dir, "old")
        .into_iter()
        .find(|d| complete(d))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Whether `dir` holds a complete checkpoint (or an interrupted save left the previous one aside).
pub fn exists(dir: impl AsRef<Path>) -> bool {
    complete(&resolve(dir.as_ref()))
}

/// Refuses anything but a regular file before it is read: a device or FIFO named like a
/// checkpoint file (`/dev/zero` linked as `state.json`) would otherwise be read without end.
fn regular(path: &Path) -> Result<(), CheckpointError> {
    let meta = std::fs::metadata(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        })
    }
}

/// Flushes a file or directory to disk.
fn sync(path: &Path) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    match f.sync_all() {
        // Some platforms cannot fsync a directory opened read-only; the data files are synced.
        Err(e) if path.is_dir() && e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        r => r.map_err(io),
    }
}

/// Saves `vs`, the optimizer state and `state` (any serde value) into directory `dir`, atomically replacing
/// what was there.
pub fn save<T: Serialize>(
    dir: impl AsRef<Path>,
    vs: &nn::VarStore,
    opt: &Optimizer,
    state: &T,
) -> Result<(), CheckpointError> {
    let dir = dir.as_ref();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    let (parent, name) = parent_and_name(dir);
    let parent = parent.as_path();
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let model = tmp.join(MODEL);
    vs.save(&model).map_err(|source| CheckpointError::Tensor {
        path: model.clone(),
        source,
    })?;
    let optf = tmp.join(OPTIMIZER);
    let opt_state = opt.state_tensors();
    Tensor::write_safetensors(&opt_state, &optf).map_err(|source| CheckpointError::Tensor {
        path: optf.clone(),
        source,
    })?;
    let statef = tmp.join(STATE);
    let env = Envelope {
        format: FORMAT.to_string(),
        version: CHECKPOINT_VERSION,
        state,
    };
    let json = serde_json::to_vec_pretty(&env).map_err(|e| CheckpointError::Json {
        path: statef.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&statef, json).map_err(io(&statef))?;
    for f in [&model, &optf, &statef, &tmp] {
        sync(f)?;
    }

    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if dir.exists() {
        if complete(dir) {
            std::fs::rename(dir, &old).map_err(io(dir))?;
        } else {
            // An incomplete directory (never written by `save`) is not kept as a fallback.
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    sync(parent)?;
    // The new checkpoint is in place: every sibling left by this or an interrupted save goes.
    for stale in siblings(dir, "old").into_iter().chain(siblings(dir, "tmp")) {
        std::fs::remove_dir_all(&stale).map_err(io(&stale))?;
    }
    Ok(())
}

/// Loads a checkpoint written by [`save`] into `vs` (every variable must be present with its shape) and
/// `opt`, and returns the JSON state.
///
/// All or nothing: the state, every model tensor (name and shape) and the optimizer state are read and
/// checked before `vs` or `opt` change, so a truncated or corrupt checkpoint is an error that leaves
/// both exactly as they were (a run can go on, or load another checkpoint, bit-exactly).
pub fn load<T: DeserializeOwned>(
    dir: impl AsRef<Path>,
    vs: &nn::VarStore,
    opt: &mut Optimizer,
) -> Result<T, CheckpointError> {
    let dir = resolve(dir.as_ref());
    let dir = dir.as_path();
    let state = load_state(dir)?;
    let model = read_model(&dir.join(MODEL), vs)?;
    let optf = dir.join(OPTIMIZER);
    regular(&optf)?;
    let tensors = Tensor::read_safetensors(&optf).map_err(|source| CheckpointError::Tensor {
        path: optf.clone(),
        source,
    })?;
    opt.load_state(tensors)
        .map_err(|source| CheckpointError::Optimizer { path: optf, source })?;
    copy_model(model);
    Ok(state)
}

/// Loads only the model variables (e.g. to evaluate or export a trained model); on error `vs` is
/// unchanged.
pub fn load_model(dir: impl AsRef<Path>, vs: &nn::VarStore) -> Result<(), CheckpointError> {
    let model = read_model(&resolve(dir.as_ref()).join(MODEL), vs)?;
    copy_model(model);
    Ok(())
}

/// Reads the model file and pairs every variable of `vs` with its value, converted to the
/// variable's kind: every name must be present with the variable's shape. Changes nothing.
fn read_model(path: &Path, vs: &nn::VarStore) -> Result<Vec<(Tensor, Tensor)>, CheckpointError> {
    let err = |source| CheckpointError::Tensor {
        path: path.to_path_buf(),
        source,
    };
    regular(path)?;
    let mut file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(err)?
        .into_iter()
        .collect();
    let mut pairs = Vec::new();
    for (name, var) in vs.variables() {
        let src = file.remove(&name).ok_or_else(|| {
            err(tch::TchError::TensorNameNotFound(
                name.clone(),
                path.display().to_string(),
            ))
        })?;
        if src.size() != var.size() {
            return Err(err(tch::TchError::Shape(format!(
                "{name}: file has {:?}, model has {:?}",
                src.size(),
                var.size()
            ))));
        }
        let src = src
            .f_to_kind(var.kind())
            .and_then(|s| s.f_to_device(var.device()))
            .map_err(err)?;
        pairs.push((var, src));
    }
    Ok(pairs)
}

/// Copies checked values into their variables (same shape, kind and device: cannot fail).
fn copy_model(pairs: Vec<(Tensor, Tensor)>) {
    tch::no_grad(|| {
        for (mut var, src) in pairs {
            var.copy_(&src);
        }
    });
}

/// Reads only the JSON state of a checkpoint.
pub fn load_state<T: DeserializeOwned>(dir: impl AsRef<Path>) -> Result<T, CheckpointError> {
    let statef = resolve(dir.as_ref()).join(STATE);
    regular(&statef)?;
    let bytes = std::fs::read(&statef).map_err(|source| CheckpointError::Io {
        path: statef.clone(),
        source,
    })?;
    let json = |e: serde_json::Error| CheckpointError::Json {
        path: statef.clone(),
        message: e.to_string(),
    };
    let h: Header = serde_json::from_slice(&bytes).map_err(json)?;
    if h.format != FORMAT || h.version != CHECKPOINT_VERSION {
        return Err(CheckpointError::Version {
            path: statef.clone(),
            format: h.format,
            version: h.version,
        });
    }
    let env: Envelope<T> = serde_json::from_slice(&bytes).map_err(json)?;
    Ok(env.state)
}
