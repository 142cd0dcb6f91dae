//! The `lattice` executable: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    lattice::no_error_backtraces();
    let cli = lattice::cli::Cli::parse();
    match lattice::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
