//! The password for a connection, found as libpq finds it, so that our own
//! connections and the client programs we run (which use libpq) agree:
//! `PGPASSWORD`, else the password file (`PGPASSFILE`, else `~/.pgpass`)
//! when only its owner can read it. It owns the lookup only: it never logs,
//! stores or prints a password.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a connection is to, as the password file's fields name it.
pub struct Target<'a> {
    /// The unix-socket directory (our servers listen on nothing else).
    pub socket_dir: &'a Path,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password libpq would use for `target`, if any.
pub fn password_for(target: &Target) -> Option<String> {
    // An empty PGPASSWORD counts as none, as for libpq.
    if let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(password.to_string_lossy().into_owned());
    }
    let file = password_file()?;
    let meta = std::fs::metadata(&file).ok()?;
    // libpq ignores a file others can read (with a warning), or no file.
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    find_in(&text, target)
}

fn password_file() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")),
    }
}

/// The first line of a password file that matches `target`:
/// `host:port:database:user:password`, a bare `*` matching anything, `\`
/// escaping `:`, `\` and `*`. A socket directory is its own host name,
/// except the default ones of libpq's builds (`/tmp` upstream,
/// `/var/run/postgresql` on Debian), which are `localhost`: libpq maps only
/// its own build's default, so `*` is the host field that always works.
pub fn find_in(text: &str, target: &Target) -> Option<String> {
    let host = target.socket_dir.to_string_lossy();
    let host = if host == "/tmp" || host == "/var/run/postgresql" || host == "/run/postgresql" {
        "localhost".into()
    } else {
        host
    };
    let port = target.port.to_string();
    let wanted = [host.as_ref(), port.as_str(), target.database, target.user];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = wanted
            .iter()
            .zip(&fields)
            .all(|(want, (field, wildcard))| *wildcard || field == want);
        if matches {
            // The password ends at the next unescaped colon, as in libpq.
            return Some(fields[4].0.clone());
        }
    }
    None
}

/// A line's fields, unescaped (`\:`, `\\`, `\*`), each with whether it is
/// the bare wildcard `*` (an escaped `\*` is a literal star).
fn split_fields(line: &str) -> Vec<(String, bool)> {
    let mut fields: Vec<(String, bool)> = Vec::new();
    let mut field = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    let mut close = |field: &mut String, escaped_any: &mut bool| {
        let wildcard = field == "*" && !*escaped_any;
        fields.push((std::mem::take(field), wildcard));
        *escaped_any = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    field.push(next);
                    escaped_any = true;
                }
            }
            ':' => close(&mut field, &mut escaped_any),
            c => field.push(c),
        }
    }
    close(&mut field, &mut escaped_any);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(socket_dir: &'a Path, database: &'a str) -> Target<'a> {
        Target {
            socket_dir,
            port: 50432,
            database,
            user: "postgres",
        }
    }

    #[test]
    fn password_file_lines_match_as_libpq_matches_them() {
        let text = "# comment\n\
                    localhost:*:*:postgres:for-the-default-socket\n\
                    /srv/sock:50432:app:postgres:exact\n\
                    *:50432:*:postgres:with\\:colon\\\\and-backslash:rest\n\
                    \\*:*:*:literal:star\n";
        let private = Path::new("/srv/sock");
        assert_eq!(
            find_in(text, &target(private, "app")).as_deref(),
            Some("exact")
        );
        assert_eq!(
            find_in(text, &target(private, "other")).as_deref(),
            Some("with:colon\\and-backslash")
        );
        assert_eq!(
            find_in(text, &target(Path::new("/var/run/postgresql"), "x")).as_deref(),
            Some("for-the-default-socket")
        );
        let other_user = Target {
            user: "someone",
            ..target(private, "app")
        };
        assert_eq!(find_in(text, &other_user), None);
        // An escaped star is a host named "*", not a wildcard.
        let literal = Target {
            user: "literal",
            ..target(private, "app")
        };
        assert_eq!(find_in(text, &literal), None);
    }
}
