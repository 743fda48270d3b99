//! coinfeed's development tasks, run as `cargo run -p xtask -- TASK` (the `./run.sh` entry points
//! call it). Each task drives the release binary from the outside, as an operator would, and
//! imports nothing from the coinfeed library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod soak;

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "coinfeed development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Soak or overload run of the release coinfeed binary against its simulator.
    Soak(soak::Args),
}

fn main() -> ExitCode {
    match Cli::parse().task {
        Task::Soak(args) => soak::main(args),
    }
}
