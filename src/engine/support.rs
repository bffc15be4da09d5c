//! Small helpers the steps share (and a few other parts of the binary
//! use): running work `-j` at a time, shell-quoting paths for the
//! messages, the new cluster's authentication when pg-migrate creates it,
//! the recovery commands an interrupted upgrade names, durable renames.

use crate::engine::*;

/// initdb's authentication for a cluster pg-migrate creates: local
/// connections by the install user's own OS account, passwords over TCP;
/// trust (with a warning) only when the names differ and nothing else works.
pub fn initdb_auth(printer: &Printer, user: &str) -> Vec<String> {
    let os_user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    if os_user.as_deref() == Some(user) {
        return vec![
            "--auth-local=peer".to_string(),
            "--auth-host=scram-sha-256".to_string(),
        ];
    }
    printer.notice(
        crate::output::NoticeCode::NewClusterTrustsLocal,
        format!("the new cluster's pg_hba.conf trusts local connections, because the install user \"{user}\" is not this OS user; review it before starting the server"),
    );
    vec!["--auth=trust".to_string()]
}

/// Removes the `dump` directory of every run in `journal_dir` but `current`.
pub(in crate::engine) fn remove_earlier_dumps(journal_dir: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(journal_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let run = entry.path();
        if run != current && entry.file_name().to_string_lossy().starts_with("run-") {
            let _ = std::fs::remove_dir_all(run.join("dump"));
        }
    }
}

/// A `\connect` line for psql that reaches exactly the database `name`.
/// psql takes single-quoted text with doubled quotes and C-like backslash
/// escapes; a name with `=` (or a URI prefix) would be read as a
/// connection string, so such a name is given as one (`dbname='…'`).
pub(in crate::engine) fn psql_connect(name: &str) -> String {
    let psql_literal = |text: &str| {
        format!(
            "'{}'",
            text.replace('\\', "\\\\")
                .replace('\'', "''")
                .replace('\n', "\\n")
                .replace('\r', "\\r")
        )
    };
    let conninfo_like =
        name.contains('=') || name.starts_with("postgres://") || name.starts_with("postgresql://");
    if conninfo_like {
        let value = name.replace('\\', "\\\\").replace('\'', "\\'");
        format!("\\connect {}", psql_literal(&format!("dbname='{value}'")))
    } else {
        format!("\\connect {}", psql_literal(name))
    }
}

/// The commands that continue or undo an interrupted upgrade of `new_datadir`.
pub fn recovery_commands(new_datadir: &Path) -> String {
    let dir = shell_quote(&new_datadir.display().to_string());
    format!(
        "continue with: pg-migrate resume -D {dir}; or go back with: pg-migrate revert -D {dir}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_reach_any_database_name() {
        assert_eq!(psql_connect("shop"), "\\connect 'shop'");
        assert_eq!(psql_connect("it's"), "\\connect 'it''s'");
        assert_eq!(psql_connect("a\\b"), "\\connect 'a\\\\b'");
        assert_eq!(psql_connect("two\nlines"), "\\connect 'two\\nlines'");
        // Read as a connection string otherwise.
        assert_eq!(
            psql_connect("x=1 it's"),
            "\\connect 'dbname=''x=1 it\\\\''s'''"
        );
    }
}
