//! The Lambda function of quelea's emulator tests (`cargo lambda watch` in
//! this directory serves it as `quelea-lambda-testfn`): the `quelea` CLI's
//! builtins (`hello_square`, `hello_sum`, `sleep_ms`, `fail`, `exit_with`,
//! `count_lines`), a function that panics, and Python functions when
//! `QUELEA_AWS_LAMBDA_PYTHON` names an interpreter with the `quelea` package.

use std::process::ExitCode;

/// Registered under this name; it panics with its input as the message.
pub const PANIC_WITH: &str = "panic_with";

fn main() -> ExitCode {
    let mut builtins = quelea_cli::builtins();
    builtins
        .functions
        .register(PANIC_WITH, |message: String| -> String {
            panic!("{message}")
        });
    match quelea_lambda::serve(&builtins.functions) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quelea-lambda-testfn: {e}");
            ExitCode::FAILURE
        }
    }
}
