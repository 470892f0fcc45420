//! Whole-model timing of one `.qat8` model in the executor: µs per image at each batch size and
//! thread count, the cells alternated round by round (so they see the same machine load), best
//! and median of the rounds; and a checksum of the outputs' uint8 codes (equal checksums: two
//! builds computed the same results).
//!
//! `cargo run --release -p qat-int8-runtime --example bench_model -- MODEL.qat8 [--threads 1,2] [--batch 1,64] [--rounds 9] [--min-time 0.2] [--calls N] [--op-split W] [--ops]`
//!
//! `--ops`: after the timed rounds, one more round per cell with [`Executor::set_op_profiling`]
//! on, and each op's share of the cell's time (the profile of the whole model, op by op).
//!
//! `--calls N`: exactly `N` calls per cell and round instead of `--min-time` (fixed work, for
//! counting cycles with `perf stat -e cycles:u`, which a loaded machine disturbs less than
//! wall-clock time).
//!
//! `--op-split W`: run every cell as one chunk with ops splitting across the threads from `W`
//! units of work ([`Executor::with_op_split`]) instead of the executor's default choice.
//!
//! `cargo xtask bench models` writes such a model (`target/qat-bench/models/model.qat8`).

use std::time::Instant;

use ndarray::ArrayD;
use qat_int8_runtime::{Executor, Int8Model};

fn list(v: &str) -> Vec<usize> {
    v.split(',')
        .map(|s| s.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

/// SplitMix64 uniform reals in `[-1, 1)`.
fn input(shape: &[usize], n: usize) -> ArrayD<f32> {
    let len = n * shape.iter().product::<usize>();
    let mut s = 3u64;
    let data = (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let full: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    ArrayD::from_shape_vec(full, data).expect("shape")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench_model MODEL.qat8 [options]")?;
    let (mut threads, mut batches, mut rounds, mut min_time) = (vec![1, 2], vec![1, 64], 9, 0.2);
    let mut fixed: Option<usize> = None;
    let mut ops = false;
    let mut op_split: Option<usize> = None;
    while let Some(k) = args.next() {
        if k == "--ops" {
            ops = true;
            continue;
        }
        let v = args.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--threads" => threads = list(&v),
            "--batch" => batches = list(&v),
            "--rounds" => rounds = v.parse()?,
            "--min-time" => min_time = v.parse()?,
            "--calls" => fixed = Some(v.parse()?),
            "--op-split" => op_split = Some(v.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let model = Int8Model::load(&path)?;
    let shape = model.tensors[model.input].shape.clone();
    let mut cells = Vec::new();
    for &t in &threads {
        let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(t).build()?);
        for &n in &batches {
            let x = input(&shape, n);
            let mut exec = Executor::new(&model)?;
            if let Some(w) = op_split {
                exec = exec.with_op_split(w);
            }
            let out = pool.install(|| exec.run_u8(x.view()))?;
            let sum = out
                .iter()
                .flatten()
                .fold(0u64, |h, &c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3));
            cells.push((t, n, pool.clone(), x, exec, sum, Vec::new()));
        }
    }
    for _ in 0..rounds {
        for (_, n, pool, x, exec, _, times) in cells.iter_mut() {
            pool.install(|| {
                let (start, mut calls) = (Instant::now(), 0usize);
                while fixed.map_or(start.elapsed().as_secs_f64() < min_time, |f| calls < f) {
                    exec.run(x.view()).expect("run");
                    calls += 1;
                }
                times.push(start.elapsed().as_secs_f64() * 1e6 / (calls * *n) as f64);
            });
        }
    }
    let mut profiles = Vec::new();
    if ops {
        for (t, n, pool, x, exec, _, _) in cells.iter_mut() {
            exec.set_op_profiling(true);
            pool.install(|| {
                let (start, mut calls) = (Instant::now(), 0usize);
                while fixed.map_or(start.elapsed().as_secs_f64() < min_time, |f| calls < f) {
                    exec.run(x.view()).expect("run");
                    calls += 1;
                }
            });
            let profile = exec.op_profile().expect("profiling is on");
            exec.set_op_profiling(false);
            profiles.push((*t, *n, profile));
        }
    }
    println!("threads batch best_us median_us checksum");
    for (t, n, _, _, _, sum, mut times) in cells {
        times.sort_by(f64::total_cmp);
        println!(
            "{t} {n} {:.1} {:.1} {sum:016x}",
            times[0],
            times[times.len() / 2]
        );
    }
    for (t, n, profile) in profiles {
        let total: f64 = profile.iter().map(|p| p.seconds).sum();
        println!("\nop shares, {t} thread(s), batch {n} (op kind output share)");
        for p in profile {
            let share = 100.0 * p.seconds / total.max(f64::MIN_POSITIVE);
            println!("{:>3} {:<15} {:<24} {share:5.1}%", p.op, p.kind, p.output);
        }
    }
    Ok(())
}
