//! Plots (plotters), each written as PNG and SVG: accuracy vs bit width, latency vs accuracy in the
//! style of the paper's Fig. 1.1, training curves, and the two causes of PTQ loss (per-channel weight
//! ranges of the layer with the widest spread, the weight histogram of the layer with the largest
//! outlier ratio). Plots are optional: drawing needs a system font.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::{
    coord::{CoordTranslate, Shift, types::RangedCoordf64},
    prelude::*,
};
use qat_export::analysis::LayerWeightAnalysis;
use xtask::report::{BitPoint, PlotStatus, Report};

const SIZE: (u32, u32) = (800, 520);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// The report's optional section `what`, or an error saying that the report has none.
fn present<'r, T>(section: &'r Option<T>, what: &str) -> Result<&'r T> {
    section.as_ref().ok_or_else(|| anyhow!("no {what}"))
}

/// Draws the legend of `chart`'s labelled series at `position` (black border, white background
/// at 80 %).
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(position)
        .draw()
        .map_err(err)
}

/// Draws `points` as a line of `color`, `width` px wide, with the legend entry `label`.
fn labelled_line<'a, DB: DrawingBackend + 'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    label: &str,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(width)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    Ok(())
}

/// Draws the chosen mixed-precision assignment's QAT point `p` (if any) as a red cross with the
/// legend entry `label`.
fn chosen_cross<'a, DB: DrawingBackend + 'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, DB, CT>,
    p: Option<(f64, f64)>,
    label: &str,
) -> Result<()> {
    if let Some(p) = p {
        chart
            .draw_series(std::iter::once(Cross::new(p, 8, RED.stroke_width(3))))
            .map_err(err)?
            .label(label)
            .legend(|(x, y)| Cross::new((x + 10, y), 6, RED.stroke_width(3)));
    }
    Ok(())
}

/// A chart on `area` captioned `caption` (sans-serif, `font` px) with the plots' margin and axis
/// label areas (`y_label` px wide).
fn chart_on<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: impl AsRef<str>,
    font: i32,
    y_label: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", font))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label);
    b
}

/// A chart on `area` captioned `caption` whose x axis (`x_desc`) runs over `[0, xmax]` and whose y
/// axis is top-1 in percent over `[lo, hi]`, its mesh drawn.
fn top1_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x_desc: &str,
    xmax: f64,
    (lo, hi): (f64, f64),
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let mut chart = chart_on(area, caption, 22, 56)
        .build_cartesian_2d(0.0..xmax, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("top-1 (%)")
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// [`top1_chart`] fitted to `points` `(x, top-1 %)`: x up to the largest x (at least 1) times
/// `x_grow`, y over [`acc_range`] of the points.
fn top1_chart_of<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x_desc: &str,
    points: impl Iterator<Item = (f64, f64)> + Clone,
    x_grow: f64,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let xmax = points.clone().map(|p| p.0).fold(1.0f64, f64::max) * x_grow;
    let range = acc_range(points.map(|p| p.1 / 100.0));
    top1_chart(area, caption, x_desc, xmax, range)
}

/// Draws one plot function on both backends: `<dir>/<stem>.png` and `<dir>/<stem>.svg`.
macro_rules! render {
    ($dir:expr, $written:expr, $stem:expr, $report:expr, $draw:ident) => {{
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
        $written.extend([format!("{}.png", $stem), format!("{}.svg", $stem)]);
    }};
}

/// Writes all plots into `dir`: the files written, or why plotting stopped (the files drawn before
/// that are listed too).
pub fn write_all(dir: &Path, report: &Report) -> PlotStatus {
    let mut written = Vec::new();
    let skipped = draw_all(dir, report, &mut written)
        .err()
        .map(|e| format!("{e:#}"));
    PlotStatus { written, skipped }
}

fn draw_all(dir: &Path, report: &Report, written: &mut Vec<String>) -> Result<()> {
    render!(dir, written, "accuracy_vs_bits", report, accuracy_vs_bits);
    render!(
        dir,
        written,
        "latency_vs_accuracy",
        report,
        latency_vs_accuracy
    );
    render!(dir, written, "training", report, training);
    if report.causes.is_some() {
        render!(dir, written, "channel_ranges", report, channel_ranges);
        render!(dir, written, "weight_histogram", report, weight_histogram);
    }
    if report.sensitivity.is_some() {
        render!(dir, written, "sensitivity", report, sensitivity);
    }
    if report.mixed_precision.is_some() {
        render!(dir, written, "pareto", report, pareto);
        render!(dir, written, "pareto_latency", report, pareto_latency);
    }
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
    let (lo, hi) = acc_range(
        pts.iter()
            .flat_map(|b| b.ptq.into_iter().chain([b.qat]))
            .chain(float),
    );
    let (bmin, bmax) = pts.iter().fold((4u32, 8u32), |(a, b), p| {
        (a.min(p.weight_bits), b.max(p.weight_bits))
    });
    let mut chart = chart_on(area, "Top-1 vs bit width (weights = activations)", 22, 56)
        .build_cartesian_2d((bmin as f64 - 0.3)..(bmax as f64 + 0.3), lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("bits")
        .y_desc("top-1 (%)")
        .x_labels(6)
        .draw()
        .map_err(err)?;
    let series = |f: fn(&BitPoint) -> Option<f64>| {
        pts.iter()
            .filter_map(move |b| f(b).map(|v| (b.weight_bits as f64, 100.0 * v)))
            .collect::<Vec<_>>()
    };
    let ptq = series(|b| b.ptq);
    let qat = series(|b| Some(b.qat));
    labelled_line(&mut chart, ptq.clone(), RED, 2, "PTQ (per channel)")?;
    chart
        .draw_series(ptq.iter().map(|&p| Circle::new(p, 4, RED.filled())))
        .map_err(err)?;
    labelled_line(&mut chart, qat.clone(), BLUE, 2, "QAT")?;
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
        labelled_line(&mut chart, line, BLACK, 1, "float")?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn latency_vs_accuracy<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    r: &Report,
) -> Result<()> {
    let measured: Vec<_> = r.latency.iter().filter(|l| l.skipped.is_none()).collect();
    let (lo, hi) = acc_range(measured.iter().map(|l| l.accuracy));
    let tmax = measured
        .iter()
        .map(|l| l.us_per_image)
        .fold(1.0f64, f64::max)
        * 1.2;
    let mut chart = top1_chart(
        area,
        "Latency vs accuracy, batch 1 (paper Fig. 1.1 style)",
        "µs per image",
        tmax,
        (lo, hi),
    )?;
    for (i, l) in measured.iter().enumerate() {
        let color = if l.path.starts_with("int8") {
            BLUE
        } else if l.path.starts_with("onnxruntime") {
            GREEN
        } else {
            RED
        };
        let p = (l.us_per_image, 100.0 * l.accuracy);
        chart
            .draw_series(std::iter::once(Circle::new(p, 6, color.filled())))
            .map_err(err)?;
        let label = format!("{} ×{}", l.path, l.threads);
        // Points of one model sit at the same accuracy: stagger their labels above and below.
        let k = measured[..i]
            .iter()
            .filter(|m| m.accuracy == l.accuracy)
            .count();
        let step = 0.06 * (hi - lo) * (k / 2 + 1) as f64;
        let dy = if k % 2 == 0 { step } else { -step };
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
    let mut chart = chart_on(area, "Training loss: float, then QAT fine-tuning", 22, 56)
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
    labelled_line(&mut chart, pts(&c.float_loss), RED, 1, "float")?;
    labelled_line(&mut chart, pts(&c.qat_loss), BLUE, 1, "QAT")?;
    legend(&mut chart, SeriesLabelPosition::MiddleRight)
}

/// The analyzed layer with the largest `key` (range spread, outlier ratio).
fn worst_layer(
    r: &Report,
    key: fn(&LayerWeightAnalysis) -> Option<f64>,
) -> Result<&LayerWeightAnalysis> {
    r.causes
        .iter()
        .flat_map(|c| &c.layers)
        .filter(|l| key(l).is_some())
        .max_by(|a, b| key(a).unwrap_or(0.0).total_cmp(&key(b).unwrap_or(0.0)))
        .ok_or_else(|| anyhow!("no analyzed layer to plot"))
}

/// Cause 1 in the whitepaper's style: each output channel's weight range `[min, max]` as a bar, for
/// the layer whose ranges differ most.
fn channel_ranges<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let l = worst_layer(r, |l| l.range_spread)?;
    let m = l
        .channels
        .iter()
        .map(|c| c.min.abs().max(c.max.abs()))
        .fold(1e-6f32, f32::max) as f64
        * 1.1;
    let n = l.channels.len();
    let mut chart = chart_on(
        area,
        format!(
            "Per-channel weight ranges of {} (spread {:.1}×)",
            l.node,
            l.range_spread.unwrap_or(0.0)
        ),
        22,
        56,
    )
    .build_cartesian_2d(-0.5..(n as f64 - 0.5), -m..m)
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("output channel")
        .y_desc("weight (BN folded)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(l.channels.iter().enumerate().map(|(i, c)| {
            let x = i as f64;
            Rectangle::new(
                [(x - 0.35, c.min as f64), (x + 0.35, c.max as f64)],
                BLUE.mix(0.7).filled(),
            )
        }))
        .map_err(err)?;
    let t = l.max_abs as f64;
    for y in [t, -t] {
        chart
            .draw_series(LineSeries::new(
                [(-0.5, y), (n as f64 - 0.5, y)],
                RED.stroke_width(1),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// Cause 2: the weight histogram of the layer with the largest outlier ratio, the bins beyond the
/// outlier percentile in red.
fn weight_histogram<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let l = worst_layer(r, |l| l.outlier_ratio)?;
    let h = &l.histogram;
    let bins = h.counts.len().max(1);
    let width = (h.hi - h.lo) as f64 / bins as f64;
    let top = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut chart = chart_on(
        area,
        format!(
            "Weights of {} (outlier ratio {:.1}; red: |w| > {:.3})",
            l.node,
            l.outlier_ratio.unwrap_or(0.0),
            h.outlier_threshold
        ),
        20,
        56,
    )
    .build_cartesian_2d(h.lo as f64..h.hi as f64, (0.5f64..top * 2.0).log_scale())
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("weight (BN folded)")
        .y_desc("count (log)")
        .draw()
        .map_err(err)?;
    let bar = |i: usize, count: u64, color: RGBColor| {
        let x0 = h.lo as f64 + i as f64 * width;
        Rectangle::new([(x0, 0.5), (x0 + width, count as f64)], color.filled())
    };
    for (counts, color) in [(&h.counts, BLUE), (&h.outlier_counts, RED)] {
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, &c)| bar(i, c, color)),
            )
            .map_err(err)?;
    }
    Ok(())
}

/// The sensitivity heat map: one row per layer and operand, one column per width, the colour the
/// accuracy drop (white 0, red at the table's largest drop).
fn sensitivity<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let t = present(&r.sensitivity, "sensitivity table")?;
    let rows: Vec<(String, &Vec<Option<f64>>)> = t
        .layers
        .iter()
        .flat_map(|l| {
            [
                (format!("{} W", l.layer), &l.weights),
                (format!("{} A", l.layer), &l.activations),
            ]
        })
        .collect();
    let worst = rows
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(1e-9f64, |m, &d| m.max(d));
    let (nr, nc) = (rows.len(), t.bits.len());
    let mut chart = chart_on(
        area,
        format!("Accuracy drop (points), one layer quantized; max {worst:.1}"),
        20,
        140,
    )
    .build_cartesian_2d((0..nc).into_segmented(), (0..nr).into_segmented())
    .map_err(err)?;
    let bits = t.bits.clone();
    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("bits")
        .x_labels(nc)
        .y_labels(nr)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bits.get(*i).map_or(String::new(), u32::to_string),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().flat_map(|(i, (_, v))| {
            v.iter().enumerate().map(move |(j, d)| {
                let f = d.map_or(0.0, |d| (d / worst).clamp(0.0, 1.0));
                let shade = (255.0 * (1.0 - f)) as u8;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(j), SegmentValue::Exact(i)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(i + 1)),
                    ],
                    RGBColor(255, shade, shade).filled(),
                )
            })
        }))
        .map_err(err)?;
    Ok(())
}

/// The mixed-precision front (predicted accuracy vs packed weight bytes) with the measured uniform
/// points and the chosen assignment.
fn pareto<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let m = present(&r.mixed_precision, "mixed-precision result")?;
    let base = r.sensitivity.as_ref().map_or(0.0, |t| t.baseline_accuracy);
    let front: Vec<(f64, f64)> = m
        .search
        .front
        .iter()
        .map(|p| (p.cost, base - p.predicted_drop))
        .collect();
    let uniform: Vec<(f64, f64)> = m.uniform.iter().map(|u| (u.cost, u.ptq)).collect();
    let chosen = m
        .search
        .chosen
        .as_ref()
        .zip(m.chosen_ptq)
        .map(|(p, a)| (p.cost, a));
    // QAT-trained and exported (integer model, test split).
    let uniform_qat: Vec<(f64, f64)> = (m.uniform.iter())
        .filter_map(|u| u.qat.map(|q| (u.cost, q.int8)))
        .collect();
    let chosen_qat = (m.search.chosen.as_ref())
        .zip(m.chosen_qat)
        .map(|(p, q)| (p.cost, q.int8));
    let all = (front.iter().chain(&uniform).chain(chosen.iter()))
        .chain(&uniform_qat)
        .chain(chosen_qat.iter());
    let mut chart = top1_chart_of(
        area,
        "Mixed precision: top-1 vs weight bytes",
        "packed weight bytes",
        all.copied(),
        1.05,
    )?;
    labelled_line(&mut chart, front, BLUE, 2, "front (predicted, validation)")?;
    chart
        .draw_series(uniform.iter().map(|&p| Circle::new(p, 5, BLACK.filled())))
        .map_err(err)?
        .label("uniform (PTQ, test)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    if let Some(p) = chosen {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(p, 7, RED.filled())))
            .map_err(err)?
            .label("chosen (PTQ, test)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, RED.filled()));
    }
    if !uniform_qat.is_empty() {
        chart
            .draw_series(
                uniform_qat
                    .iter()
                    .map(|&p| Cross::new(p, 6, BLACK.stroke_width(2))),
            )
            .map_err(err)?
            .label("uniform (QAT int8, test)")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
    }
    chosen_cross(&mut chart, chosen_qat, "chosen (QAT int8, test)")?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// QAT top-1 of the mixed-precision study's trained models against their measured latency in the
/// integer runtime (batch 1, one thread).
fn pareto_latency<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    let m = present(&r.mixed_precision, "mixed-precision result")?;
    let uniform: Vec<(f64, f64, String)> = (m.uniform.iter())
        .filter_map(|u| {
            let q = u.qat?;
            Some((
                q.int8_us?,
                q.int8,
                format!("W{}A{}", u.weight_bits, u.act_bits),
            ))
        })
        .collect();
    let chosen = m.chosen_qat.and_then(|q| Some((q.int8_us?, q.int8)));
    if uniform.is_empty() && chosen.is_none() {
        return Err(anyhow!("no measured latency"));
    }
    let mut chart = top1_chart_of(
        area,
        "Mixed precision: QAT top-1 vs latency",
        "int8 runtime µs/image (batch 1, 1 thread)",
        uniform.iter().map(|p| (p.0, p.1)).chain(chosen),
        1.15,
    )?;
    chart
        .draw_series(uniform.iter().map(|p| {
            EmptyElement::at((p.0, p.1))
                + Cross::new((0, 0), 6, BLACK.stroke_width(2))
                + Text::new(p.2.clone(), (8, -14), ("sans-serif", 14))
        }))
        .map_err(err)?
        .label("uniform (QAT int8, test)")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
    chosen_cross(&mut chart, chosen, "mixed, chosen (QAT int8, test)")?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}
