//! A map-reduce with Rust functions on the local backend:
//! `cargo run --release --example squares`.
//!
//! The binary registers its functions, then hands control to quelea if it was
//! started as a runner; otherwise it goes on as the driver.

use quelea::{Executor, Functions, MapOptions};

fn main() -> Result<(), quelea::Error> {
    let mut functions = Functions::new();
    let count_words = functions.register("count_words", |line: String| {
        line.split_whitespace().count()
    });
    let total = functions.register("total", |counts: Vec<usize>| counts.iter().sum::<usize>());
    quelea::serve_if_runner(&functions);
    quelea::interrupt::install_ctrl_c_handler();

    let lines: Vec<String> = (0..1000)
        .map(|i| format!("line {i} has {} words", "more ".repeat(i % 7)))
        .collect();
    let expected: usize = lines.iter().map(|l| l.split_whitespace().count()).sum();

    let executor = Executor::new()?;
    let future = executor.map_reduce(&count_words, lines, &total, MapOptions::default())?;
    let words = future.result(None)?;
    println!("{words} words in 1000 lines (expected {expected})");
    assert_eq!(words, expected);
    Ok(())
}
