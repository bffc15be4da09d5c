//! `pg-migrate generate`: the man pages and the shell completions, rendered
//! from the command-line definition itself (clap_mangen, clap_complete), so
//! that what a package installs never drifts from `--help`. It reads and
//! changes no cluster.

use std::io::Write;

use crate::cli::{GenerateArgs, Generated};
use crate::exit;

pub(crate) fn run_generate(args: GenerateArgs) -> i32 {
    match args.what {
        Generated::Man { dir } => {
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(crate::cli::command(), &dir));
            match written {
                Ok(()) => exit::SUCCESS,
                Err(e) => {
                    eprintln!("pg-migrate generate man: {}: {e}", dir.display());
                    exit::USAGE
                }
            }
        }
        Generated::EventSchema => {
            let mut text =
                serde_json::to_string_pretty(&crate::output::event_schema()).unwrap_or_default();
            text.push('\n');
            match std::io::stdout().write_all(text.as_bytes()) {
                Ok(()) => exit::SUCCESS,
                Err(e) => {
                    eprintln!("pg-migrate generate event-schema: {e}");
                    exit::USAGE
                }
            }
        }
        Generated::Completions { shell } => {
            let mut command = crate::cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "pg-migrate", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => exit::SUCCESS,
                Err(e) => {
                    eprintln!("pg-migrate generate completions: {e}");
                    exit::USAGE
                }
            }
        }
    }
}
