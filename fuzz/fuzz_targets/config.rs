//! Target for the command line and its validation (`config/`): the input is a command line
//! (arguments split at NUL bytes, any bytes, not only UTF-8), parsed by clap as `coinfeed`'s run
//! flags or as `coinfeed replay`'s, then validated into a `Config`. Neither may panic, whatever
//! the flags; the API key must never show in the config's debug form or in an error.
//!
//! Each command is built once per process and reused (`try_get_matches_from_mut`, which parses
//! exactly as `try_parse_from` does): building it, with clap's debug assertions on, took about a
//! third of every execution.

#![no_main]

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::{Command, CommandFactory, FromArgMatches, Parser};
use coinfeed::config::cli::{ReplayArgs, RunArgs};
use coinfeed::config::Config;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "FUZZ-SECRET-KEY-7f3a";

#[derive(Parser, Debug)]
struct ReplayCli {
    #[command(flatten)]
    args: ReplayArgs,
}

thread_local! {
    static RUN: RefCell<Command> = RefCell::new(RunArgs::command());
    static REPLAY: RefCell<Command> = RefCell::new(ReplayCli::command());
}

/// `T::try_parse_from(args)`, on the process's one built `command`.
fn parse<T: FromArgMatches>(
    command: &'static std::thread::LocalKey<RefCell<Command>>,
    args: impl IntoIterator<Item = OsString>,
) -> Option<T> {
    let mut matches = command.with_borrow_mut(|c| c.try_get_matches_from_mut(args)).ok()?;
    T::from_arg_matches_mut(&mut matches).ok()
}

fn no_key(text: String) {
    assert!(!text.contains(KEY), "the key shows: {text}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let n_cores = usize::from(mode >> 2) + 1;
    let args = std::iter::once(OsString::from("coinfeed"))
        .chain(rest.split(|&b| b == 0).map(|a| OsString::from_vec(a.to_vec())))
        .take(64);
    if mode & 1 == 0 {
        let Some(run) = parse::<RunArgs>(&RUN, args) else { return };
        let key = (mode & 2 == 0).then(|| KEY.to_string());
        match Config::from_args(&run, key, n_cores) {
            Ok(mut config) => {
                no_key(format!("{config:?}"));
                // The `--sim` wiring's second step, with the simulator's loopback endpoints.
                if let Err(e) = config.use_endpoints("ws://127.0.0.1:1/v1/", "http://127.0.0.1:2") {
                    no_key(e.to_string());
                }
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                no_key(e.to_string());
            }
        }
    } else {
        let Some(cli) = parse::<ReplayCli>(&REPLAY, args) else { return };
        match Config::from_replay_args(&cli.args, n_cores) {
            Ok(config) => no_key(format!("{config:?}")),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
