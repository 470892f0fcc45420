//! What one fuzz case runs: the user-facing entry points, each fed the same bytes.

use ndarray::ArrayD;
use qat_export::ir::FloatGraph;
use qat_export::limits::GraphLimits;
use qat_export::{CalibrationMethod, ExportOptions, calibrate, export, interp};
use qat_int8_runtime::{Executor, Int8Model, KernelPath, LoadOptions, limits::Limits};

use crate::rng::Rng;

/// Prefix of a case error that is a defect (not a rejection of bad input): an exported model
/// that does not load back, an error that does not locate itself, a refused checkpoint load that
/// changed the model.
pub const BUG: &str = "BUG: ";

/// The input formats the fuzzer feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `.qat8` bytes: load → validate → `Executor::run` on every kernel path this CPU has.
    Qat8,
    /// FloatGraph JSON: parse → validate → interpret → calibrate → export → run the export.
    GraphJson,
    /// FloatGraph bincode, the same pipeline as JSON.
    GraphBincode,
    /// Pipeline configuration TOML: parse and validate ([`crate::config`]).
    Config,
    /// A checkpoint directory's three files: `qat_train::checkpoint::load` (feature `torch`).
    Checkpoint,
    /// An IDX file, raw or gzip: read as images and as labels (feature `torch`).
    Idx,
    /// A CIFAR-10 batch file, raw or gzip (feature `torch`).
    Cifar,
}

impl Target {
    /// Number of targets (built or not).
    pub const COUNT: usize = 7;

    /// Every target this build runs (the checkpoint, IDX and CIFAR targets need feature `torch`).
    pub const ALL: &'static [Target] = if cfg!(feature = "torch") {
        &[
            Target::Qat8,
            Target::GraphJson,
            Target::GraphBincode,
            Target::Config,
            Target::Checkpoint,
            Target::Idx,
            Target::Cifar,
        ]
    } else {
        &[
            Target::Qat8,
            Target::GraphJson,
            Target::GraphBincode,
            Target::Config,
        ]
    };

    /// File extension of a corpus entry for this target.
    pub fn extension(self) -> &'static str {
        match self {
            Target::Qat8 => "qat8",
            Target::GraphJson => "json",
            Target::GraphBincode => "graphbin",
            Target::Config => "toml",
            Target::Checkpoint => "ckpt",
            Target::Idx => "idx",
            Target::Cifar => "cifar",
        }
    }

    /// The target of a corpus file, by extension.
    pub fn from_extension(ext: &str) -> Option<Target> {
        Target::ALL.iter().copied().find(|t| t.extension() == ext)
    }
}

/// The limits a fuzz case runs under: small enough that every accepted input runs in
/// milliseconds, so a slow case means work that the limits failed to bound.
pub fn fuzz_load_options() -> LoadOptions {
    LoadOptions {
        limits: Limits {
            max_payload_bytes: 4 << 20,
            max_activation_bytes: 4 << 20,
            max_macs: 1 << 24,
            max_pool_work: 1 << 24,
        },
    }
}

/// The float graph counterpart of [`fuzz_load_options`].
pub fn fuzz_graph_limits() -> GraphLimits {
    GraphLimits {
        max_activation_bytes: 4 << 20,
        max_macs: 1 << 24,
        max_pool_work: 1 << 24,
    }
}

/// Random input of per-sample `shape` and batch 1 or 2, with NaN, ±∞ and huge values mixed in
/// when `specials`.
pub fn input(rng: &mut Rng, shape: &[usize], specials: bool) -> ArrayD<f32> {
    let n = 1 + rng.below(2);
    let mut full = vec![n];
    full.extend_from_slice(shape);
    let len: usize = full.iter().product();
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3e38,
        -3e38,
        1e-45,
        0.0,
    ];
    let data = (0..len)
        .map(|_| {
            if specials && rng.one_in(16) {
                *rng.pick(&special)
            } else {
                (rng.below(2001) as f32 - 1000.0) / 250.0
            }
        })
        .collect();
    ArrayD::from_shape_vec(full, data).unwrap_or_else(|_| ArrayD::zeros(vec![0]))
}

/// Runs `model` on every kernel path this CPU supports; `Ok` if nothing failed unexpectedly.
pub fn run_model(rng: &mut Rng, model: &Int8Model) -> Result<(), String> {
    let shape = model.tensors[model.input].shape.clone();
    let x = input(rng, &shape, true);
    for path in KernelPath::supported() {
        let mut exec = Executor::with_path(model, path).map_err(|e| e.to_string())?;
        exec.run(x.view()).map_err(|e| format!("{path:?}: {e}"))?;
        let _ = exec.run_u8(x.view());
    }
    Ok(())
}

/// One `.qat8` case. `Err` is a rejection (fine); a panic is what the fuzzer looks for.
pub fn qat8(rng: &mut Rng, bytes: &[u8]) -> Result<(), String> {
    let model =
        Int8Model::from_bytes_with(bytes, &fuzz_load_options()).map_err(|e| e.to_string())?;
    run_model(rng, &model)
}

/// One FloatGraph case from JSON text or bincode bytes.
pub fn graph(rng: &mut Rng, target: Target, bytes: &[u8]) -> Result<(), String> {
    let g = match target {
        Target::GraphJson => {
            let s = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            FloatGraph::from_json(s)
        }
        _ => FloatGraph::from_bincode(bytes),
    }
    .map_err(|e| e.to_string())?;
    run_graph(rng, &g)
}

/// Validates `g` under the fuzz limits, then interprets, calibrates, exports and runs it.
pub fn run_graph(rng: &mut Rng, g: &FloatGraph) -> Result<(), String> {
    let shapes = qat_export::validate::infer_shapes_with(g, &fuzz_graph_limits())
        .map_err(|e| e.to_string())?;
    let input_shape = g
        .input_id()
        .map(|id| shapes[id.0].clone())
        .map_err(|e| e.to_string())?;
    let x = input(rng, &input_shape, true);
    interp::run(g, x.view(), None).map_err(|e| e.to_string())?;
    let x = input(rng, &input_shape, false);
    // Export the graph as given (it may carry ranges) and once calibrated.
    let exported = export(g, &ExportOptions::default());
    let calibrated =
        calibrate(g, [x.view()], CalibrationMethod::MinMax).map_err(|e| e.to_string())?;
    for model in [
        exported.ok(),
        export(&calibrated, &ExportOptions::default()).ok(),
    ]
    .into_iter()
    .flatten()
    {
        // What export writes must load back (and within limits, run).
        let bytes = model
            .to_bytes()
            .map_err(|e| format!("{BUG}export wrote an invalid model: {e}"))?;
        match Int8Model::from_bytes_with(&bytes, &fuzz_load_options()) {
            Ok(m) => run_model(rng, &m)?,
            Err(qat_int8_runtime::LoadError::Invalid(
                qat_int8_runtime::ValidationError::Limit { .. },
            )) => {}
            Err(e) => return Err(format!("{BUG}exported model does not load: {e}")),
        }
    }
    Ok(())
}

/// Runs one case of `target` on `bytes`.
pub fn run(rng: &mut Rng, target: Target, bytes: &[u8]) -> Result<(), String> {
    match target {
        Target::Qat8 => qat8(rng, bytes),
        Target::GraphJson | Target::GraphBincode => graph(rng, target, bytes),
        Target::Config => crate::config::run(bytes),
        #[cfg(feature = "torch")]
        Target::Checkpoint => crate::checkpoint::run(bytes),
        #[cfg(feature = "torch")]
        Target::Idx => crate::datafile::run_idx(bytes),
        #[cfg(feature = "torch")]
        Target::Cifar => crate::datafile::run_cifar(bytes),
        #[cfg(not(feature = "torch"))]
        Target::Checkpoint | Target::Idx | Target::Cifar => {
            Err(format!("{target:?} needs qat-fuzz's feature `torch`"))
        }
    }
}
