//! One model in four engines: the qat runtime, onnxruntime int8 (QDQ), onnxruntime f32 and LiteRT
//! int8 (its default XNNPACK delegate), at batch 1 and 64 with 1 and 2 threads; µs per image and
//! the ratios to the qat runtime, as JSON and a Markdown table. `cargo xtask bench models` runs it
//! with the peers' Python.
//!
//! The model is a MobileNet-v1 for 28×28×1 inputs (the default pipeline's architecture: a 3×3 stride-1
//! stem, depthwise-separable blocks with ReLU6, global average pool, a fully connected layer),
//! with seeded random weights, PTQ-calibrated on random batches and planned for the `qat`
//! target: the timings depend on the shapes, not on the weights' values. `--model M.qat8` times
//! a given `.qat8` model in the qat runtime and its `.tflite`/QDQ exports instead (its float
//! ONNX is then not available: f32 is skipped).
//!
//! ```text
//! cargo run --release -p qat-export --example bench_models -- --python PY --script xtask/py/bench_models.py
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ndarray::ArrayD;
use qat_export::FloatGraph;
use qat_export::ir::{Activation, Conv2d, Linear};
use qat_export::onnx::{OnnxOptions, float_to_onnx, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{PtqConfig, ptq};
use qat_int8_runtime::{Executor, Int8Model};

const SHAPE: [usize; 3] = [28, 28, 1];

/// SplitMix64 uniform reals in `[lo, hi)`.
fn uniform(seed: &mut u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            (lo as f64 + (hi - lo) as f64 * u) as f32
        })
        .collect()
}

fn conv(s: &mut u64, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> Conv2d {
    let cig = cin / groups;
    let a = 1.5 / ((cig * k * k) as f32).sqrt();
    let p = (k - 1) / 2;
    Conv2d::new(uniform(s, cout * k * k * cig, -a, a), [cout, k, k, cig])
        .with_stride([stride, stride])
        .with_padding([p; 4])
        .with_groups(groups)
        .with_bias(uniform(s, cout, -0.1, 0.1))
        .with_activation(Activation::Relu6)
}

/// MobileNet-v1 for 28×28×1 as the default pipeline builds it (`qat-train`'s zoo: stride-1 stem for
/// inputs under 64 pixels): stem 3×3/1 (16), separable blocks 32, 64/2, 64, 128/2, 128; GAP;
/// FC to 10.
fn mobilenet_v1() -> FloatGraph {
    let s = &mut 7u64;
    let mut g = FloatGraph::new("mobilenet-v1-28");
    let x = g.input("x", &SHAPE);
    let mut cur = g.conv2d("stem", x, conv(s, 1, 16, 3, 1, 1));
    let mut c = 16;
    for (i, (cout, st)) in [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]
        .into_iter()
        .enumerate()
    {
        let dw = g.conv2d(format!("b{i}_dw"), cur, conv(s, c, c, 3, st, c));
        cur = g.conv2d(format!("b{i}_pw"), dw, conv(s, c, cout, 1, 1, 1));
        c = cout;
    }
    let gap = g.global_avg_pool("gap", cur);
    let a = 1.5 / (c as f32).sqrt();
    let fc = Linear::new(uniform(s, 10 * c, -a, a), [10, c]).with_bias(uniform(s, 10, -0.1, 0.1));
    let y = g.linear("fc", gap, fc);
    g.output("logits", y);
    g
}

fn batch(seed: u64, n: usize) -> ArrayD<f32> {
    let len = n * SHAPE.iter().product::<usize>();
    ArrayD::from_shape_vec(
        vec![n, SHAPE[0], SHAPE[1], SHAPE[2]],
        uniform(&mut { seed }, len, -1.0, 1.0),
    )
    .expect("shape")
}

/// Best-of-`rounds` mean call time (µs per image) of the qat runtime in each `(batch, threads)`
/// cell. The cells are alternated round by round, so that a change of the machine's load during
/// the measurement reaches every cell alike (batch 1 and batch 64 compare fairly).
fn time_qat(model: &Int8Model, cells: &[(usize, usize)], min_time: f64, rounds: usize) -> Vec<f64> {
    struct Cell<'m> {
        n: usize,
        pool: rayon::ThreadPool,
        x: ArrayD<f32>,
        exec: Executor<'m>,
        best: f64,
    }
    let mut cells: Vec<Cell<'_>> = cells
        .iter()
        .map(|&(n, threads)| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            let x = batch(3, n);
            let mut exec = Executor::new(model).expect("executor");
            pool.install(|| exec.run(x.view()).expect("warm-up"));
            Cell {
                n,
                pool,
                x,
                exec,
                best: f64::INFINITY,
            }
        })
        .collect();
    for _ in 0..rounds {
        for c in cells.iter_mut() {
            let (pool, x, exec) = (&c.pool, &c.x, &mut c.exec);
            let t = pool.install(|| {
                let (start, mut calls) = (Instant::now(), 0usize);
                while start.elapsed().as_secs_f64() < min_time {
                    exec.run(x.view()).expect("run");
                    calls += 1;
                }
                start.elapsed().as_secs_f64() / calls as f64
            });
            c.best = c.best.min(t);
        }
    }
    cells.iter().map(|c| c.best * 1e6 / c.n as f64).collect()
}

struct Args {
    out: PathBuf,
    python: PathBuf,
    script: PathBuf,
    min_time: f64,
    rounds: usize,
    model: Option<PathBuf>,
}

fn parse() -> Args {
    let mut a = Args {
        out: PathBuf::from("target/qat-bench/models"),
        python: PathBuf::from("python3"),
        script: PathBuf::from("xtask/py/bench_models.py"),
        min_time: 0.5,
        rounds: 3,
        model: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = v().into(),
            "--python" => a.python = v().into(),
            "--script" => a.script = v().into(),
            "--min-time" => a.min_time = v().parse().expect("--min-time seconds"),
            "--rounds" => a.rounds = v().parse().expect("--rounds count"),
            "--model" => a.model = Some(v().into()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse();
    std::fs::create_dir_all(&a.out)?;
    let (model, float) = match &a.model {
        Some(p) => (Int8Model::load(p)?, None),
        None => {
            let g = mobilenet_v1();
            let cal = [batch(1, 16), batch(2, 16)];
            let plan = ptq(&g, cal.iter().map(|b| b.view()), &PtqConfig::default())?;
            (
                plan.to_int8_model()?,
                Some(float_to_onnx(&plan.graph)?.bytes),
            )
        }
    };
    std::fs::write(a.out.join("model.qat8"), model.to_bytes()?)?;
    std::fs::write(
        a.out.join("model.tflite"),
        to_tflite(&model, &TfliteOptions::default())?.bytes,
    )?;
    std::fs::write(
        a.out.join("model.onnx"),
        to_onnx_qdq(&model, &OnnxOptions::default())?.bytes,
    )?;
    if let Some(f) = &float {
        std::fs::write(a.out.join("model.float.onnx"), f)?;
    }
    let cells: Vec<(usize, usize)> = [1, 64]
        .into_iter()
        .flat_map(|b| [1, 2].map(|t| (b, t)))
        .collect();
    let qat = time_qat(&model, &cells, a.min_time, a.rounds);
    let peers_json = a.out.join("peers.json");
    let status = Command::new(&a.python)
        .arg(&a.script)
        .arg(&a.out)
        .args(["--shape", "28", "28", "1", "--out"])
        .arg(&peers_json)
        .args([
            "--min-time",
            &a.min_time.to_string(),
            "--rounds",
            &a.rounds.to_string(),
        ])
        .status()?;
    if !status.success() {
        return Err(format!("{} failed ({status})", a.script.display()).into());
    }
    let peers: serde_json::Value = serde_json::from_slice(&std::fs::read(&peers_json)?)?;
    let peer = |engine: &str, b: usize, t: usize| -> Option<f64> {
        peers["engines"][engine]["cells"]
            .as_array()?
            .iter()
            .find(|c| c["batch"] == b && c["threads"] == t)?["us_per_image"]
            .as_f64()
    };
    let mut md = format!(
        "Model: {} ({} ops), input 28×28×1. µs per image (best of {} rounds of ≥ {} s); ratio = engine / qat.\n\n\
         | batch | threads | qat | ort int8 | ort f32 | LiteRT int8 (XNNPACK) | ort int8 / qat | ort f32 / qat | LiteRT / qat |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        model.name,
        model.ops.len(),
        a.rounds,
        a.min_time
    );
    let mut rows = Vec::new();
    let fmt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
    let ratio = |v: Option<f64>, q: f64| v.map_or("—".to_string(), |v| format!("{:.2}×", v / q));
    for (&(b, t), &q) in cells.iter().zip(&qat) {
        let (oi, of, lt) = (
            peer("ort_int8", b, t),
            peer("ort_f32", b, t),
            peer("litert_int8", b, t),
        );
        md.push_str(&format!(
            "| {b} | {t} | {q:.1} | {} | {} | {} | {} | {} | {} |\n",
            fmt(oi),
            fmt(of),
            fmt(lt),
            ratio(oi, q),
            ratio(of, q),
            ratio(lt, q)
        ));
        rows.push(serde_json::json!({
            "batch": b, "threads": t, "qat_us_per_image": q,
            "ort_int8_us_per_image": oi, "ort_f32_us_per_image": of, "litert_int8_us_per_image": lt,
        }));
    }
    let json = serde_json::json!({
        "model": model.name, "ops": model.ops.len(), "kernel_path": qat_int8_runtime::KernelPath::best().name(),
        "peers": peers, "rows": rows,
    });
    std::fs::write(
        a.out.join("models.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(a.out.join("models.md"), &md)?;
    print!("{md}");
    Ok(())
}
