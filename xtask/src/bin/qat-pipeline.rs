//! The end-to-end pipeline (issue 7): float → PTQ → QAT → int8, with a report.
fn main() {
    eprintln!("qat-pipeline: not built yet");
    std::process::exit(2);
}
