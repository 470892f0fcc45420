//! Replays every input that ever failed (`tests/data/fuzz/`) and the seeds: none may panic, run
//! slowly or hit a defect; then a short deterministic campaign.

use std::time::Duration;

use qat_fuzz::rng::Rng;
use qat_fuzz::targets::Target;
use qat_fuzz::{Config, Outcome, campaign, run_case, seeds};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/fuzz");

fn cfg() -> Config {
    Config {
        // Generous for an unoptimized test build on a loaded machine.
        slow: Duration::from_secs(20),
        hang: Duration::from_secs(300),
        ..Config::default()
    }
}

#[test]
fn every_corpus_input_is_handled() {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(CORPUS)
        .expect("tests/data/fuzz exists")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(target) = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Target::from_extension)
        else {
            continue;
        };
        let bytes = std::fs::read(&path).unwrap();
        for seed in 0..4 {
            let (outcome, ..) = run_case(&cfg(), None, &mut Rng::new(seed), target, &bytes);
            assert!(
                !matches!(outcome, Outcome::Failed(..)),
                "{}: {outcome:?}",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n > 0, "the corpus holds inputs");
}

#[test]
fn every_seed_is_accepted() {
    let seeds = seeds::all();
    assert!(seeds.len() >= 8, "{} seeds", seeds.len());
    for (i, (target, bytes)) in seeds.iter().enumerate() {
        let (outcome, ..) = run_case(&cfg(), None, &mut Rng::new(1), *target, bytes);
        assert!(
            matches!(outcome, Outcome::Accepted),
            "seed {i} ({target:?}): {outcome:?}"
        );
    }
}

#[test]
fn a_short_campaign_finds_nothing() {
    let r = campaign(
        &Config {
            cases: 2_000,
            seed: 0xC0FFEE,
            ..cfg()
        },
        None,
    );
    assert_eq!(r.cases, 2_000);
    assert!(r.accepted > 0 && r.rejected > 0, "{r:?}");
    for &t in Target::ALL {
        let i = t as usize;
        assert!(
            r.per_target[i] > 0 && r.accepted_per_target[i] > 0,
            "{t:?}: {} cases, {} accepted",
            r.per_target[i],
            r.accepted_per_target[i]
        );
    }
    assert!(r.failures.is_empty(), "{:?}", r.failures);
}
