//! The `quelea` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    // This binary is also the runner of the functions `quelea hello` maps.
    quelea::serve_if_runner(&quelea_cli::builtins().functions);
    ExitCode::from(quelea_cli::run_cli(std::env::args_os(), None))
}
