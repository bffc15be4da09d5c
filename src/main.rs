//! pg-migrate: upgrade a PostgreSQL cluster to a new major version in place.
//! `main` parses the command line and hands it to the command asked for
//! (`commands/`, one file each); the upgrade's steps are the engine's
//! (`engine/`), the work on clusters the crates' (`crates/`).

mod cli;
mod commands;
mod config;
mod engine;
mod exit;
mod failure;
mod journal;
mod logical_backup;
mod output;
mod patroni;
mod post_upgrade;
mod proving;
mod recovery;
mod rundir;
mod signals;
mod standby;
mod support;

use std::time::Instant;

use crate::cli::{Action, Cli, Command};
use crate::failure::Code;
use crate::output::Printer;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let started = Instant::now();
    // Everything pg-migrate writes (journal, logs, dumps, scripts) is private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let wants_json = std::env::args_os().any(|a| a == "--json");
    let parsed = cli::command()
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return exit::SUCCESS;
        }
        Err(e) => {
            if !wants_json {
                let _ = e.print();
                return exit::USAGE;
            }
            let message = e.kind().to_string();
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or(&message)
                .trim_start_matches("error: ")
                .to_string();
            let printer = Printer::new(true);
            // The command line was not understood: no cluster is known.
            return commands::fail_leaving(
                &printer,
                started,
                "pg-migrate",
                Code::Usage,
                first,
                "run pg-migrate --help for the options",
                exit::USAGE,
                failure::ClusterStates::untouched(false, false),
            );
        }
    };
    let (options, action) = match cli.command {
        Some(Command::Check(options)) => (options, Action::Check),
        Some(Command::Resume(options)) => (options, Action::Resume),
        Some(Command::Revert(options)) => (options, Action::Revert),
        Some(Command::Backup(options)) => (options, Action::Backup),
        Some(Command::Restore(options)) => (options, Action::Restore),
        Some(Command::PostUpgrade(options)) => (options, Action::PostUpgrade),
        Some(Command::Prepare(options)) => (options, Action::Prepare),
        Some(Command::Cutover(options)) => (options, Action::Cutover),
        Some(Command::Discard(options)) => (options, Action::Discard),
        Some(Command::Verify(options)) => (options, Action::Verify),
        Some(Command::Standby(options)) => (options, Action::Standby),
        Some(Command::StandbyKit(args)) => return commands::run_standby_kit(args, started),
        Some(Command::Patroni(args)) => return commands::run_patroni(args, started),
        Some(Command::PatroniMember(args)) => return commands::run_patroni_member(args),
        Some(Command::Generate(args)) => return commands::run_generate(args),
        None if cli.options.check => (cli.options, Action::Check),
        None => (cli.options, Action::Upgrade),
    };
    commands::dispatch(action, options, started)
}
