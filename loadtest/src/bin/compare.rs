//! sluice-compare: the command line of [`sluice_load::compare`]. Runs the
//! comparison, prints the markdown report on stdout (progress on stderr),
//! writes the raw results as JSON and, with `--write-docs`, splices the
//! report into that file.
//!
//! Exit codes: 0 done; 1 `--require-all` and a run failed or counted
//! errors; 2 the run could not be made (options, missing programs or peers
//! (also under `--require-all`), I/O); 130 interrupted.

use std::process::ExitCode;

use clap::Parser;
use sluice_load::compare::{self, runner, CompareError, Options};

fn main() -> ExitCode {
    let opts = Options::parse();
    if let Err(e) = compare::interrupt::install() {
        eprintln!("sluice-compare: cannot watch for Ctrl-C: {e}");
        return ExitCode::from(2);
    }
    let outcome = match compare::run(&opts) {
        Ok(o) => o,
        Err(CompareError::Interrupted) => {
            eprintln!("sluice-compare: interrupted; every server started was stopped");
            return ExitCode::from(130);
        }
        Err(e) => {
            eprintln!("sluice-compare: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", outcome.markdown);
    if let Err(e) = runner::write_json(&outcome, &opts.json_out) {
        eprintln!("sluice-compare: {e}");
        return ExitCode::from(2);
    }
    eprintln!("sluice-compare: raw results in {}", opts.json_out.display());
    if let Some(path) = &opts.write_docs {
        if let Err(e) = runner::write_docs(&outcome, path) {
            eprintln!("sluice-compare: {e}");
            return ExitCode::from(2);
        }
        eprintln!("sluice-compare: report written into {}", path.display());
    }
    let troubles = outcome.troubles();
    if opts.require_all && !troubles.is_empty() {
        eprintln!("sluice-compare: --require-all, and:");
        for t in &troubles {
            eprintln!("  {t}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
