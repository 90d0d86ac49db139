//! `jepsen`: runs a test against a fresh geobuk cluster (or given endpoints) and checks it, or
//! re-checks a saved run. Exit code 0 valid, 1 invalid, 2 unknown (or the harness failed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jepsen::checker::Validity;
use jepsen::results::verdict_word;
use jepsen::run::{self, TestOpts};

#[derive(Parser)]
#[command(name = "jepsen", about = "Crash/partition tests with linearizability and watch checkers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a test and checks it.
    Test(TestOpts),
    /// Re-runs the checkers on a saved run's records and prints their verdicts.
    Check {
        /// The results directory of the run.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jepsen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Test(opts) => test(opts).await,
            Command::Check { dir } => jepsen::results::recheck(&dir).map(|results| {
                print_verdicts(&results);
                results.iter().fold(Validity::Valid, |v, r| v.and(r.valid))
            }),
        }
    });
    match result {
        Ok(valid) => ExitCode::from(valid.exit_code() as u8),
        Err(e) => {
            eprintln!("jepsen: harness failure (no verdict): {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn test(opts: TestOpts) -> anyhow::Result<Validity> {
    let outcome = run::run(opts).await?;
    print_verdicts(&outcome.results);
    println!("{} ops; results in {}", outcome.ops, outcome.dir.display());
    println!("report: {}", outcome.dir.join("report.html").display());
    println!("re-run: {}", outcome.reproduce);
    println!("verdict: {}", verdict_word(outcome.valid));
    Ok(outcome.valid)
}

fn print_verdicts(results: &[jepsen::checker::CheckResult]) {
    for r in results {
        let kinds: Vec<String> = r.anomalies.iter().map(|a| a.kind.clone()).collect();
        println!("{:<14} {:<8} {}", r.checker, verdict_word(r.valid), kinds.join(", "));
    }
}
