//! `report.md`: the typed report rendered as Markdown tables.

use std::fmt::Write as _;

use qat_export::fidelity::NodeMatch;

use super::{Report, pct, table};

/// `text` on one line (runs of white space, newlines included, become one space): a refusal's
/// multi-line message inside a Markdown table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or("—".into(), pct)
}

fn nodes_table(title: &str, nodes: &[NodeMatch]) -> String {
    let mut s = String::new();
    table(
        &mut s,
        &format!(
            "#### {title}\n\n| node | S | Z | values | exact % | ≤1 % | max|Δ| |\n|---|---|---|---|---|---|---|"
        ),
        nodes,
        |n| {
            vec![
                n.node.clone(),
                format!("{:.5}", n.scale),
                n.zero_point.to_string(),
                n.values.to_string(),
                format!("{:.2}", 100.0 * n.exact),
                format!("{:.2}", 100.0 * n.within_one),
                n.max_abs.to_string(),
            ]
        },
    );
    s
}

impl Report {
    /// The main table as Markdown.
    pub fn results_table(&self) -> String {
        let mut s = String::new();
        let bits = |b: Option<u32>| b.map_or("float".to_string(), |b| format!("{b}-bit"));
        table(
            &mut s,
            "| model | weights | activations | engine | top-1 |\n|---|---|---|---|---|",
            &self.results,
            |r| {
                vec![
                    r.label.clone(),
                    bits(r.weight_bits),
                    bits(r.act_bits),
                    r.engine.clone(),
                    pct(r.accuracy),
                ]
            },
        );
        s
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# qat pipeline report `{}`\n", self.run_id);
        let d = &self.dataset;
        let _ = writeln!(
            s,
            "{}; run time {:.0} s{}.\n\nDataset **{}** ({}): {} training images, {} held out for validation, {} test images.\n",
            self.machine,
            self.duration_s,
            if self.quick {
                "; **quick run** (tiny subset, accuracy not meaningful)"
            } else {
                ""
            },
            d.name,
            d.dir,
            d.train,
            d.validation,
            d.test,
        );
        let _ = writeln!(s, "## Accuracy (test split)\n\n{}", self.results_table());
        let a = &self.agreement;
        let _ = writeln!(
            s,
            "## Integer model vs its fake-quant model\n\nArgmax agreement on {} test images (rounding `{}`): \
             8-bit {}, low bit {}.\n",
            a.test_images,
            a.rounding,
            pct(a.int8_vs_fake_quant),
            pct(a.low_bit_int8_vs_fake_quant)
        );
        self.rounding_section(&mut s);
        self.deployed_section(&mut s);
        let z = &self.size;
        let _ = writeln!(
            s,
            "## Model size\n\nfloat32 parameters {} bytes, `.qat8` file {} bytes ({:.2}× smaller).\n",
            z.float32_parameters_bytes, z.qat8_file_bytes, z.ratio
        );
        table(
            &mut s,
            "## Latency per image (batch 1)\n\nqat / peer: the qat runtime's µs per image over the peer's, both \
             timed alternately with the peer's protocol (best of rounds) on the same model and threads; \
             below 1 the qat runtime is faster.\n\n\
             | path | threads | µs/image | top-1 | qat / peer |\n|---|---|---|---|---|",
            &self.latency,
            |l| match &l.skipped {
                Some(why) => vec![
                    l.path.clone(),
                    l.threads.to_string(),
                    format!("not measured: {why}"),
                    "—".into(),
                    "—".into(),
                ],
                None => vec![
                    l.path.clone(),
                    l.threads.to_string(),
                    format!("{:.1}", l.us_per_image),
                    pct(l.accuracy),
                    l.qat_us_per_image.map_or("—".into(), |q| {
                        format!(
                            "{:.2}× ({q:.1} / {:.1} µs)",
                            q / l.us_per_image,
                            l.us_per_image
                        )
                    }),
                ],
            },
        );
        self.studies_section(&mut s);
        self.causes_section(&mut s);
        self.mixed_section(&mut s);
        table(
            &mut s,
            "\n## Targets\n\n| target | wanted | measured | met |\n|---|---|---|---|",
            &self.targets,
            |t| {
                let met = if t.met { "yes" } else { "**no**" };
                vec![
                    t.what.clone(),
                    t.target.clone(),
                    t.measured.clone(),
                    met.into(),
                ]
            },
        );
        let _ = writeln!(
            s,
            "\n## Per-layer fidelity (int8 runtime vs fake-quant simulation)\n\n{}\n\n{}\n\n\
             ### The trained model vs the export's simulation (libtorch fake quant, eval mode; 256 test images, output codes)\n\n{}\n{}",
            self.fidelity.to_markdown(),
            self.fidelity_low_bit.to_markdown(),
            nodes_table("8-bit model", &self.torch_vs_simulation.main),
            nodes_table("low-bit model", &self.torch_vs_simulation.low_bit),
        );
        let _ = writeln!(s, "\n## Plots\n");
        for f in self.plots.written.iter().filter(|f| f.ends_with(".png")) {
            let _ = writeln!(s, "![{}]({f})", f.trim_end_matches(".png"));
        }
        if let Some(why) = &self.plots.skipped {
            let _ = writeln!(
                s,
                "The plots could not be drawn on this machine: {why}. report.json and this report are complete; \
                 install a font (e.g. Debian `fonts-dejavu-core`) for the PNG/SVG plots."
            );
        }
        let _ = writeln!(s, "\n## Configuration\n\n```toml\n{}\n```", self.config);
        s
    }

    fn deployed_section(&self, s: &mut String) {
        let d = &self.deployed;
        let _ = writeln!(
            s,
            "## Deployed: each format in its own runtime

Trained for target `{}`. Each row: the model \
             planned for the runtime's target, written in the format, run by that runtime on the test split, \
             against the simulation of that target (qat-int8-runtime).\n",
            d.trained_for.as_deref().unwrap_or("none (float fake quant; exported for qat)")
        );
        if let Some(why) = &d.skipped {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return;
        }
        let _ = writeln!(
            s,
            "| model | format | runtime | target | images | simulated top-1 | top-1 | argmax agreement | equal output codes | equal codes, all exposed tensors |\n\
             |---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &d.rows {
            let model = format!("W{}A{}", r.weight_bits, r.act_bits);
            if let Some(why) = &r.refused {
                let _ = writeln!(
                    s,
                    "| {model} | {} | {} | {} | — | {} | refused: {why} | | | |",
                    r.format,
                    r.runtime,
                    r.target,
                    opt_pct(r.simulated_top1),
                    why = one_line(why)
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {model} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({} tensors) |",
                r.format,
                r.runtime,
                r.target,
                r.images,
                opt_pct(r.simulated_top1),
                opt_pct(r.top1),
                opt_pct(r.argmax_agreement),
                opt_pct(r.equal_codes),
                opt_pct(r.tensors_equal),
                r.tensors_compared
            );
        }
        let _ = writeln!(s);
    }

    fn rounding_section(&self, s: &mut String) {
        if self.rounding.is_empty() {
            return;
        }
        table(
            s,
            "## Requantization rounding\n\nThe same exports emitted with one rounding of `acc·M` (`single`, what QAT \
             simulates) and with TFLite's reference double rounding (`gemmlowp`: SRDHM then a rounding shift).\n\n\
             | weights | activations | rounding | int8 top-1 | agreement with fake quant |\n|---|---|---|---|---|",
            &self.rounding,
            |r| {
                let refused = r.refused.as_ref().map_or(String::new(), |why| {
                    format!(" (refused: {})", one_line(why))
                });
                vec![
                    r.weight_bits.to_string(),
                    r.act_bits.to_string(),
                    format!(
                        "{}{}",
                        r.rounding,
                        if r.exported { " (exported)" } else { "" }
                    ),
                    format!("{}{refused}", opt_pct(r.int8_acc)),
                    opt_pct(r.agreement),
                ]
            },
        );
        let _ = writeln!(s);
    }

    fn studies_section(&self, s: &mut String) {
        if !self.bit_sweep.is_empty() {
            table(
                s,
                "\n## Bit widths (paper tables 4.7/4.8 style)\n\n| weights | activations | PTQ | QAT (fake quant) | QAT int8 runtime |\n|---|---|---|---|---|",
                &self.bit_sweep,
                |b| {
                    vec![
                        b.weight_bits.to_string(),
                        b.act_bits.to_string(),
                        opt_pct(b.ptq),
                        pct(b.qat),
                        opt_pct(b.qat_int8),
                    ]
                },
            );
        }
        if !self.ablations.is_empty() {
            table(
                s,
                "\n## Ablations\n\n| study | variant | float | PTQ | QAT |\n|---|---|---|---|---|",
                &self.ablations,
                |a| {
                    vec![
                        a.study.clone(),
                        a.variant.clone(),
                        opt_pct(a.float),
                        opt_pct(a.ptq),
                        pct(a.qat),
                    ]
                },
            );
        }
    }

    fn causes_section(&self, s: &mut String) {
        if let Some(c) = &self.causes {
            let _ = writeln!(
                s,
                "\n## Why PTQ loses accuracy, per layer\n\nWeights of the float model with BN folded as the export folds it. \
                 Range spread: largest / smallest per-channel range (cause 1: one per-tensor range leaves narrow channels \
                 few levels); outlier ratio: max|w| / P{}(|w|) (cause 2: rare large weights stretch the range).\n\n{}",
                c.options.outlier_percentile,
                c.to_markdown()
            );
        }
        if !self.fixes.is_empty() {
            table(
                s,
                "\n### The accuracy each fix buys\n\n| weights | activations | method | top-1 | gain (points) |\n|---|---|---|---|---|",
                &self.fixes,
                |f| {
                    vec![
                        f.weight_bits.to_string(),
                        f.act_bits.to_string(),
                        f.method.to_string(),
                        pct(f.accuracy),
                        f.gain.map_or("—".into(), |g| format!("{:+.2}", 100.0 * g)),
                    ]
                },
            );
        }
    }

    fn mixed_section(&self, s: &mut String) {
        if let Some(t) = &self.sensitivity {
            let _ = writeln!(
                s,
                "\n## Per-layer sensitivity (validation split)\n\n{}",
                t.to_markdown()
            );
        }
        if let Some(m) = &self.mixed_precision {
            let r = &m.search;
            let _ = writeln!(
                s,
                "\n## Mixed precision\n\n{} search, cost {}, budget {:.0} (the uniform low-bit model's); {} front points.\n",
                match r.method {
                    qat_export::analysis::SearchMethod::Exact => "exact",
                    qat_export::analysis::SearchMethod::Greedy => "greedy",
                },
                r.cost_model,
                r.budget,
                r.front.len()
            );
            let _ = writeln!(
                s,
                "| configuration | cost | predicted drop (points) | PTQ top-1 | QAT top-1 (fake quant / int8) | int8 µs/image (batch 1, 1 thread) |\n|---|---|---|---|---|---|"
            );
            let qat = |q: &Option<crate::report::QatPoint>| {
                q.map_or("— | —".into(), |q| {
                    let us = q.int8_us.map_or("—".into(), |us| format!("{us:.1}"));
                    format!("{:.2}% / {:.2}% | {us}", q.fake_quant, q.int8)
                })
            };
            for u in &m.uniform {
                let _ = writeln!(
                    s,
                    "| uniform W{}A{} | {:.0} | {:.2} | {:.2}% | {} |",
                    u.weight_bits,
                    u.act_bits,
                    u.cost,
                    u.predicted_drop,
                    u.ptq,
                    qat(&u.qat)
                );
            }
            if let Some(c) = &r.chosen {
                let _ = writeln!(
                    s,
                    "| mixed (chosen) | {:.0} | {:.2} | {} | {} |\n\nChosen widths (weights/activations):\n",
                    c.cost,
                    c.predicted_drop,
                    m.chosen_ptq.map_or("—".into(), |a| format!("{a:.2}%")),
                    qat(&m.chosen_qat)
                );
                for l in &c.assignment.layers {
                    let b = |v: Option<u32>| v.map_or("—".into(), |b| b.to_string());
                    let _ = writeln!(s, "- {}: W{} A{}", l.layer, b(l.weight_bits), b(l.act_bits));
                }
            }
        }
    }
}
