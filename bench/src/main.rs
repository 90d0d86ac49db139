//! The `bench` binary: parses etcd `benchmark`'s command line, runs one benchmark and prints
//! its report (text, or JSON with `--json`) on stdout. Exit code 0 when the run completed (failed
//! ops are in the report), 1 when it could not run (bad options, unreachable endpoints).

use std::process::ExitCode;

use bench::Cli;
use clap::Parser;

/// mimalloc, as the geobuk binary has: the load generator shares the cores with the members it
/// measures, and with glibc's malloc it spent 16 % more CPU per put (perf stat, put-1000: 24.9 →
/// 20.8 µs per put). Built with `no_thp`: huge-page faults zeroing 2 MiB were 9 % of its
/// samples, and without them it spends 10 % less CPU per put at put-1000 (bench/BOUNDS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let bench::Command::Compare(opts) = &cli.command {
        return match runtime.block_on(bench::compare::run(opts)) {
            Ok(_) => {
                println!("results in {}", opts.out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench compare: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(bench::run(&cli.global, &cli.command)) {
        Ok(report) if cli.global.json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
