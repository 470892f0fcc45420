//! Checkpoints through `qat_train::checkpoint::load`: a case is the three files of a checkpoint
//! directory in one input (see [`encode`]), written into a scratch directory and loaded into a
//! small model and an Adam optimizer that have taken a step. The load must succeed or give a typed
//! `CheckpointError` naming one of the files, and a refused load must leave the model and the
//! optimizer exactly as they were.
//!
//! Structure-aware mutations edit one file: a field of a safetensors header (shape, dtype, data
//! offsets, a tensor's name; the header length is fixed up so the edit reaches the reader), a
//! value of `state.json` (format, version, state), or its bytes; or drop a file.

use std::path::Path;

use qat_train::checkpoint::{self, CheckpointError};
use qat_train::schedule::{Optimizer, OptimizerConfig, OptimizerKind};
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

use crate::rng::Rng;
use crate::targets::BUG;
use crate::{mutate, scratch, structure};

/// The files of a checkpoint directory, in input order.
pub const FILES: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "state.json"];

/// Length prefix of a file that is absent.
const ABSENT: u32 = u32::MAX;

/// One input from the three files (`None`: absent): for each, a little-endian `u32` length
/// (`u32::MAX`: absent) and the bytes.
pub fn encode(files: &[Option<Vec<u8>>; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        match f {
            Some(b) => {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            None => out.extend_from_slice(&ABSENT.to_le_bytes()),
        }
    }
    out
}

/// The files of an input. A length beyond the input takes what is left (a truncated file); files
/// after the end are absent.
pub fn decode(bytes: &[u8]) -> [Option<Vec<u8>>; 3] {
    let mut files: [Option<Vec<u8>>; 3] = [None, None, None];
    let mut at = 0usize;
    for f in &mut files {
        let Some(len) = bytes.get(at..at + 4) else {
            break;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len == ABSENT {
            continue;
        }
        let end = at.saturating_add(len as usize).min(bytes.len());
        *f = Some(bytes[at..end].to_vec());
        at = end;
    }
    files
}

/// The model every case loads into: a conv weight and bias and a BN-like buffer, after one step
/// of `cfg` (so the optimizer has buffers a refused load must keep).
fn store(cfg: OptimizerConfig) -> Result<(nn::VarStore, Optimizer), String> {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = (&root / "conv").var("weight", &[2, 1, 3, 3], nn::Init::Const(0.0));
    let b = (&root / "conv").var("bias", &[2], nn::Init::Const(0.0));
    let _m = (&root / "bn").zeros_no_train("running_mean", &[2]);
    tch::no_grad(|| {
        let mut w = w.shallow_clone();
        let mut b = b.shallow_clone();
        w.copy_(&Tensor::arange(18, (Kind::Float, Device::Cpu)).view([2, 1, 3, 3]));
        b.copy_(&Tensor::from_slice(&[0.5f32, -0.25]));
    });
    let mut opt = Optimizer::new(&vs, cfg).map_err(|e| e.to_string())?;
    opt.zero_grad();
    let loss = (&w * &w).sum(Kind::Float) + (&b * &b).sum(Kind::Float);
    loss.backward();
    opt.step();
    Ok((vs, opt))
}

fn adam() -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::adam(),
        ..OptimizerConfig::default()
    }
}

/// Every variable and optimizer buffer as bits, by name.
fn snapshot(vs: &nn::VarStore, opt: &Optimizer) -> Vec<(String, Vec<u64>)> {
    let bits = |t: &Tensor| {
        let v: Vec<f64> = Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default();
        v.into_iter().map(f64::to_bits).collect::<Vec<_>>()
    };
    let mut out: Vec<_> = vs
        .variables()
        .iter()
        .map(|(n, t)| (n.clone(), bits(t)))
        .chain(
            opt.state_tensors()
                .iter()
                .map(|(n, t)| (format!("#{n}"), bits(t))),
        )
        .collect();
    out.sort();
    out
}

/// Seeds: a real checkpoint of [`store`]'s model (Adam state) and one with SGD momentum state.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(dir) = scratch::dir() else {
        return out;
    };
    for (i, cfg) in [adam(), OptimizerConfig::default()].into_iter().enumerate() {
        let Ok((vs, opt)) = store(cfg) else { continue };
        let ck = dir.join(format!("seed{i}"));
        let state = serde_json::json!({"epoch": 2, "step": 17, "history": [0.5, 0.25]});
        if checkpoint::save(&ck, &vs, &opt, &state).is_err() {
            continue;
        }
        let files = FILES.map(|f| std::fs::read(ck.join(f)).ok());
        out.push(encode(&files));
        let _ = std::fs::remove_dir_all(&ck);
    }
    out
}

/// A mutant of a safetensors file: one header field edited, the length prefix fixed up.
fn safetensors(rng: &mut Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let mut v: Value = serde_json::from_slice(header).ok()?;
    if rng.one_in(4) {
        // A tensor renamed or removed.
        let o = v.as_object_mut()?;
        let keys: Vec<String> = o.keys().cloned().collect();
        let k = rng.pick(&keys).clone();
        let t = o.remove(&k)?;
        if rng.one_in(2) {
            o.insert(format!("{k}x"), t);
        }
    } else {
        structure::json_value(rng, &mut v);
    }
    let h = serde_json::to_vec(&v).ok()?;
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    Some(out)
}

/// A structure-aware mutant of checkpoint input `base`.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut files = decode(base);
    let others = decode(other);
    let i = rng.below(3);
    if rng.one_in(16) {
        files[i] = None;
        return encode(&files);
    }
    let Some(f) = files[i].take() else {
        files[i] = others[i].clone();
        return encode(&files);
    };
    let structured = match (i, rng.one_in(2)) {
        (0 | 1, true) => safetensors(rng, &f),
        (2, true) => serde_json::from_slice::<Value>(&f).ok().and_then(|mut v| {
            structure::json_value(rng, &mut v);
            serde_json::to_vec_pretty(&v).ok()
        }),
        _ => None,
    };
    files[i] = Some(structured.unwrap_or_else(|| {
        let mut f = f;
        mutate::bytes(rng, &mut f, others[i].as_deref().unwrap_or(&[]));
        f
    }));
    encode(&files)
}

fn named(e: &CheckpointError) -> &Path {
    match e {
        CheckpointError::Io { path, .. }
        | CheckpointError::Tensor { path, .. }
        | CheckpointError::Json { path, .. }
        | CheckpointError::Version { path, .. }
        | CheckpointError::Optimizer { path, .. } => path,
    }
}

/// One case: write the files, load them, check the result.
pub fn run(bytes: &[u8]) -> Result<(), String> {
    let dir = scratch::dir()?.join("ckpt");
    std::fs::create_dir_all(&dir).map_err(|e| format!("scratch: {e}"))?;
    for (name, f) in FILES.iter().zip(decode(bytes)) {
        let path = dir.join(name);
        let r = match f {
            Some(b) => std::fs::write(&path, b),
            None => std::fs::remove_file(&path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        r.map_err(|e| format!("scratch: {e}"))?;
    }
    let (vs, mut opt) = store(adam())?;
    let before = snapshot(&vs, &opt);
    match checkpoint::load::<Value>(&dir, &vs, &mut opt) {
        Ok(_) => Ok(()),
        Err(e) => {
            if !FILES.iter().any(|f| named(&e) == dir.join(f)) {
                return Err(format!("{BUG}the error names no checkpoint file: {e}"));
            }
            if snapshot(&vs, &opt) != before {
                return Err(format!("{BUG}a refused load changed the model: {e}"));
            }
            Err(e.to_string())
        }
    }
}
