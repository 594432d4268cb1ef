//! sluice-load: the command line. Parses options, builds the runtime, runs
//! one scenario, prints its summary; nothing else (see the library).
//!
//! Exit codes: 0 ok; 1 errors were counted (unless `--allow-errors`);
//! 64 bad options or an unusable URL; 70 the runtime could not start.

use std::process::ExitCode;

use clap::Parser;
use sluice_load::scenarios::{connect, download, prices, upload};
use sluice_load::{Cli, Error, Scenario};

/// What a run printed: JSON or a table, and how many errors it counted.
struct Printed {
    json: String,
    table: String,
    errors: u64,
}

/// Run the scenario; the files scenarios print their `transfer` figures too,
/// `prices` its `prices` figures and `connect` its `connect` figures.
async fn run(cli: &Cli) -> Result<Printed, Error> {
    let transfer = match &cli.scenario {
        Scenario::Download(args) => download::run_transfer(&cli.common, args).await?,
        Scenario::Upload(args) => upload::run_transfer(&cli.common, args).await?,
        Scenario::Connect(args) => {
            let c = connect::run_connect(&cli.common, args).await?;
            return Ok(Printed {
                json: c.to_json(),
                table: c.to_table(),
                errors: c.summary.errors,
            });
        }
        Scenario::Prices(args) => {
            let p = prices::run_prices(&cli.common, args).await?;
            return Ok(Printed {
                json: p.to_json(),
                table: p.to_table(),
                errors: p.summary.errors,
            });
        }
        other => {
            let s = sluice_load::run(&cli.common, other).await?;
            return Ok(Printed {
                json: s.to_json(),
                table: s.to_table(),
                errors: s.errors,
            });
        }
    };
    Ok(Printed {
        json: transfer.to_json(),
        table: transfer.to_table(),
        errors: transfer.summary.errors,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-load: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(run(&cli));
    // Connection tasks are all finished or aborted by now; don't wait on stragglers.
    runtime.shutdown_background();
    let summary = match result {
        Ok(summary) => summary,
        Err(e @ (Error::Invalid(_) | Error::Target(_))) => {
            eprintln!("sluice-load: {e}");
            return ExitCode::from(64);
        }
    };
    if cli.json {
        println!("{}", summary.json);
    } else {
        print!("{}", summary.table);
    }
    if summary.errors > 0 && !cli.allow_errors {
        eprintln!(
            "sluice-load: {} errors (pass --allow-errors to exit 0 anyway)",
            summary.errors
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
