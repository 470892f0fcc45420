//! Plots (plotters), each written as PNG and SVG: accuracy vs bit width, latency vs accuracy in the
//! style of the paper's Fig. 1.1, and training curves.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::{coord::Shift, prelude::*};

use super::report::Report;

const SIZE: (u32, u32) = (800, 520);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Draws one plot on both backends: `<dir>/<stem>.png` and `<dir>/<stem>.svg`.
/// Draws one plot function on both backends: `<dir>/<stem>.png` and `<dir>/<stem>.svg`.
macro_rules! render {
    ($dir:expr, $stem:expr, $report:expr, $draw:ident) => {{
        let png = $dir.join(format!("{}.png", $stem));
        {
            let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
            area.fill(&WHITE).map_err(err)?;
            $draw(&area, $report)?;
            area.present().map_err(err)?;
        }
        let svg = $dir.join(format!("{}.svg", $stem));
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        area.fill(&WHITE).map_err(err)?;
        $draw(&area, $report)?;
        area.present().map_err(err)?;
    }};
}

/// Writes all plots into `dir`.
pub fn write_all(dir: &Path, report: &Report) -> Result<()> {
    render!(dir, "accuracy_vs_bits", report, accuracy_vs_bits);
    render!(dir, "latency_vs_accuracy", report, latency_vs_accuracy);
    render!(dir, "training", report, training);
    Ok(())
}

fn acc_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.map(|a| 100.0 * a).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 100.0);
    }
    let pad = ((hi - lo) * 0.1).max(1.0);
    ((lo - pad).max(0.0), (hi + pad).min(100.0))
}

fn accuracy_vs_bits<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    // Points where weights and activations share the bit width (W8A8 … W4A4), plus the float line.
    let mut pts: Vec<_> = r
        .bit_sweep
        .iter()
        .filter(|b| b.weight_bits == b.act_bits)
        .cloned()
        .collect();
    pts.sort_by_key(|b| b.weight_bits);
    let float = r
        .results
        .iter()
        .find(|x| x.name == "float")
        .map(|x| x.accuracy);
    let (lo, hi) = acc_range(pts.iter().flat_map(|b| [b.ptq, b.qat]).chain(float));
    let (bmin, bmax) = pts.iter().fold((4u32, 8u32), |(a, b), p| {
        (a.min(p.weight_bits), b.max(p.weight_bits))
    });
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Top-1 vs bit width (weights = activations)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((bmin as f64 - 0.3)..(bmax as f64 + 0.3), lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("bits")
        .y_desc("top-1 (%)")
        .x_labels(6)
        .draw()
        .map_err(err)?;
    let series = |f: fn(&super::report::BitPoint) -> f64| {
        pts.iter()
            .map(move |b| (b.weight_bits as f64, 100.0 * f(b)))
            .collect::<Vec<_>>()
    };
    let ptq = series(|b| b.ptq);
    let qat = series(|b| b.qat);
    chart
        .draw_series(LineSeries::new(ptq.clone(), RED.stroke_width(2)))
        .map_err(err)?
        .label("PTQ (per channel)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(ptq.iter().map(|&p| Circle::new(p, 4, RED.filled())))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(qat.clone(), BLUE.stroke_width(2)))
        .map_err(err)?
        .label("QAT")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(
            qat.iter()
                .map(|&p| TriangleMarker::new(p, 5, BLUE.filled())),
        )
        .map_err(err)?;
    if let Some(f) = float {
        let line = vec![
            (bmin as f64 - 0.3, 100.0 * f),
            (bmax as f64 + 0.3, 100.0 * f),
        ];
        chart
            .draw_series(LineSeries::new(line, BLACK.stroke_width(1)))
            .map_err(err)?
            .label("float")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn latency_vs_accuracy<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    r: &Report,
) -> Result<()> {
    let (lo, hi) = acc_range(r.latency.iter().map(|l| l.accuracy));
    let tmax = r
        .latency
        .iter()
        .map(|l| l.us_per_image)
        .fold(1.0f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency vs accuracy, batch 1 (paper Fig. 1.1 style)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..tmax, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("µs per image")
        .y_desc("top-1 (%)")
        .draw()
        .map_err(err)?;
    for (i, l) in r.latency.iter().enumerate() {
        let color = if l.path.starts_with("int8") {
            BLUE
        } else {
            RED
        };
        let p = (l.us_per_image, 100.0 * l.accuracy);
        chart
            .draw_series(std::iter::once(Circle::new(p, 6, color.filled())))
            .map_err(err)?;
        let label = format!("{} ×{}", l.path, l.threads);
        // Points of one engine sit at the same accuracy: stagger the labels above and below.
        let step = 0.06 * (hi - lo) * (i / 2 + 1) as f64;
        let dy = if i % 2 == 0 { step } else { -step };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (p.0, p.1 + dy),
                ("sans-serif", 14).into_font(),
            )))
            .map_err(err)?;
    }
    Ok(())
}

fn training<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let c = &r.curves;
    let all = c.float_loss.iter().chain(&c.qat_loss);
    let smax = all.clone().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let lmax = all
        .map(|p| p.1)
        .filter(|l| l.is_finite())
        .fold(0.1f64, f64::max)
        .min(5.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Training loss: float, then QAT fine-tuning",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..smax, 0.0..lmax * 1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .draw()
        .map_err(err)?;
    let pts = |v: &[(usize, f64)]| {
        v.iter()
            .map(|&(s, l)| (s as f64, l.min(lmax)))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(pts(&c.float_loss), RED))
        .map_err(err)?
        .label("float")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(pts(&c.qat_loss), BLUE))
        .map_err(err)?
        .label("QAT")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    Ok(())
}
