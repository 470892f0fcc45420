//! BN folding preserves the float function: on random graphs with batch norm, every node of the
//! folded graph equals the unfolded one to ≤ 1e-5 relative (max |Δ| / max |y|).

mod common;

use common::{GenOptions, batch, random_cnn, rel_diff, rng};
use qat_export::interp::run;
use qat_export::ir::FloatOp;
use qat_export::passes::bn_fold::fold_graph_batch_norms;

#[test]
fn folding_preserves_the_float_function() {
    let mut folded_convs = 0;
    for seed in 0..30 {
        let g = random_cnn(seed, &GenOptions::default());
        let f = fold_graph_batch_norms(&g);
        folded_convs += g
            .nodes
            .iter()
            .filter(|n| matches!(&n.op, FloatOp::Conv2d(c) if c.batch_norm.is_some()))
            .count();
        assert!(
            f.nodes
                .iter()
                .all(|n| !matches!(&n.op, FloatOp::Conv2d(c) if c.batch_norm.is_some()))
        );
        let shape = g.validate().unwrap()[0].clone();
        let x = batch(&mut rng(seed + 1000), 4, &shape);
        let a = run(&g, x.view(), None).unwrap();
        let b = run(&f, x.view(), None).unwrap();
        for (i, (ya, yb)) in a.iter().zip(&b).enumerate() {
            let d = rel_diff(yb, ya);
            assert!(
                d <= 1e-5,
                "seed {seed}, node {}: relative difference {d}",
                g.nodes[i].name
            );
        }
    }
    assert!(
        folded_convs >= 10,
        "only {folded_convs} convs with BN generated"
    );
}
