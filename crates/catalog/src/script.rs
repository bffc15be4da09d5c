//! Runs a restore script (pg_restore's SQL output) over our own connection,
//! sending each of its transactions as one message instead of one round
//! trip per object: on a schema of thousands of tables most of pg_restore's
//! time is spent waiting for those round trips.
//!
//! The splitter knows SQL's quoting (strings, E'' strings, quoted
//! identifiers, dollar quotes, nested comments) so that a `;` or a line
//! that looks like a command inside a function body never ends a
//! statement. Of psql's meta-commands it runs the three pg_restore writes
//! (`\connect`, `\restrict`, `\unrestrict`, with psql's rule that only the
//! matching `\unrestrict` may follow `\restrict`) and refuses any other.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use crate::Error;
use pgm_cluster::server::Endpoint;

/// One unit of a restore script.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// One SQL statement, with its terminating `;` (and any comments before it).
    Sql(String),
    /// A psql meta-command line, trimmed.
    Meta(String),
    /// `COPY … FROM stdin;` and the data lines that follow it (without `\.`).
    Copy { statement: String, data: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Quote {
    None,
    Single { backslash_escapes: bool },
    Double,
    Dollar(String),
    Block(u32),
}

/// Splits a script into statements, meta-commands and COPY data, reading it
/// a line at a time.
pub(crate) struct Splitter<R> {
    input: R,
    statement: String,
    has_token: bool,
    quote: Quote,
    /// Open parentheses: a `;` inside them (a rule's action list) does not
    /// end the statement.
    paren_depth: u32,
    /// BEGIN (and CASE within it) not yet closed by END in the body of a
    /// `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC`, as psql counts.
    begin_depth: u32,
    /// The statement's first words, lower-cased.
    words: Vec<String>,
    standard_strings: bool,
    /// Each piece with the offset just past its last byte.
    pending: std::collections::VecDeque<(Piece, u64)>,
    line: String,
    /// Bytes read before the current line, and in all.
    line_start: u64,
    consumed: u64,
    done: bool,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// `$tag$` at the start of `bytes`: its length, or None.
fn dollar_tag(bytes: &[u8]) -> Option<usize> {
    let mut end = 1;
    while end < bytes.len() && bytes[end] != b'$' {
        let b = bytes[end];
        let ok = if end == 1 {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
        };
        if !ok {
            return None;
        }
        end += 1;
    }
    (end < bytes.len()).then_some(end + 1)
}

/// The statement from its first word on: past the comment lines and the
/// blank lines before it.
fn code_of(statement: &str) -> &str {
    let mut rest = statement;
    loop {
        let trimmed = rest.trim_start();
        match trimmed.strip_prefix("--") {
            Some(comment) => rest = comment.split_once('\n').map_or("", |(_, after)| after),
            None => return trimmed,
        }
    }
}

/// The comment lines before the statement (where pg_restore writes an
/// entry's header).
pub(crate) fn leading_comments(statement: &str) -> &str {
    &statement[..statement.len() - code_of(statement).len()]
}

/// Whether the statement's words, as [`normalized`] gives them, begin with
/// `prefix` (upper case; a last word without a space after it may be the
/// beginning of a longer one). Reads no further than the prefix: most
/// statements are none of those looked for, and some are long.
pub(crate) fn begins_with(statement: &str, prefix: &str) -> bool {
    let mut code = code_of(statement).split_whitespace();
    let mut words = prefix.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let Some(found) = code.next() else {
            return false;
        };
        let whole = words.peek().is_some() || prefix.ends_with(' ');
        let matches = if whole {
            found.eq_ignore_ascii_case(word)
        } else {
            found.len() >= word.len()
                && found.is_char_boundary(word.len())
                && found[..word.len()].eq_ignore_ascii_case(word)
        };
        if !matches {
            return false;
        }
    }
    true
}

/// Whether the statement is exactly `words` (BEGIN; COMMIT;).
pub(crate) fn is_just(statement: &str, words: &str) -> bool {
    code_of(statement).len() <= words.len() + 16 && normalized(statement) == words
}

/// The statement's words, upper-cased and single-spaced, without comments
/// before it (enough to recognise BEGIN, COMMIT, SET and COPY).
pub(crate) fn normalized(statement: &str) -> String {
    let text: Vec<&str> = statement
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect();
    text.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

impl<R: BufRead> Splitter<R> {
    pub(crate) fn new(input: R) -> Self {
        Splitter {
            input,
            statement: String::new(),
            has_token: false,
            quote: Quote::None,
            paren_depth: 0,
            begin_depth: 0,
            words: Vec::new(),
            standard_strings: true,
            pending: Default::default(),
            line: String::new(),
            line_start: 0,
            consumed: 0,
            done: false,
        }
    }

    fn reset_statement(&mut self) {
        self.has_token = false;
        self.paren_depth = 0;
        self.begin_depth = 0;
        self.words.clear();
    }

    /// Whether the statement so far is `CREATE [OR REPLACE] FUNCTION|PROCEDURE`.
    fn defines_routine(&self) -> bool {
        let word = |i: usize| self.words.get(i).map(String::as_str);
        let routine = |w: Option<&str>| matches!(w, Some("function" | "procedure"));
        word(0) == Some("create")
            && (routine(word(1))
                || (word(1) == Some("or") && word(2) == Some("replace") && routine(word(3))))
    }

    fn on_word(&mut self, word: &str) {
        if self.paren_depth == 0 && self.defines_routine() {
            let is = |w: &str| word.eq_ignore_ascii_case(w);
            if is("begin") {
                self.begin_depth += 1;
            } else if is("case") && self.begin_depth > 0 {
                // CASE … END inside a body: only counted within a BEGIN.
                self.begin_depth += 1;
            } else if is("end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
        if self.words.len() < 4 {
            self.words.push(word.to_ascii_lowercase());
        }
    }

    fn finish_statement(&mut self, end: u64) -> Result<(), String> {
        let statement = std::mem::take(&mut self.statement);
        self.reset_statement();
        // Only a SET or a COPY matters here: the others are not copied.
        let words = if begins_with(&statement, "SET ") || begins_with(&statement, "COPY ") {
            normalized(&statement)
        } else {
            String::new()
        };
        match words.trim_end_matches(';').trim() {
            "SET STANDARD_CONFORMING_STRINGS = OFF" | "SET STANDARD_CONFORMING_STRINGS = 'OFF'" => {
                self.standard_strings = false
            }
            "SET STANDARD_CONFORMING_STRINGS = ON" | "SET STANDARD_CONFORMING_STRINGS = 'ON'" => {
                self.standard_strings = true
            }
            _ => {}
        }
        if words.starts_with("COPY ") && words.ends_with("FROM STDIN;") {
            let mut data = String::new();
            loop {
                let mut line = String::new();
                let read = self.input.read_line(&mut line).map_err(|e| e.to_string())?;
                if read == 0 {
                    return Err("the script ends inside COPY data (no \\. line)".into());
                }
                self.consumed += read as u64;
                if line.trim_end_matches(['\n', '\r']) == "\\." {
                    break;
                }
                data.push_str(&line);
            }
            self.pending
                .push_back((Piece::Copy { statement, data }, self.consumed));
        } else {
            self.pending.push_back((Piece::Sql(statement), end));
        }
        Ok(())
    }

    /// Scans one line, queueing every piece it completes.
    fn scan_line(&mut self) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        if self.quote == Quote::None && !self.has_token && line.trim_start().starts_with('\\') {
            self.statement.clear();
            let end = self.line_start + line.len() as u64;
            self.pending
                .push_back((Piece::Meta(line.trim().to_string()), end));
            return Ok(());
        }
        let bytes = line.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            // Within a quoted text (most of a statistics call's bytes) only
            // a byte that may end it matters.
            let to_end = match &self.quote {
                Quote::Single { backslash_escapes } => {
                    let escapes = *backslash_escapes;
                    bytes[i..]
                        .iter()
                        .position(|&c| c == b'\'' || (escapes && c == b'\\'))
                }
                Quote::Double => bytes[i..].iter().position(|&c| c == b'"'),
                Quote::Dollar(_) => bytes[i..].iter().position(|&c| c == b'$'),
                Quote::None | Quote::Block(_) => Some(0),
            };
            match to_end {
                Some(n) => i += n,
                None => break,
            }
            let b = bytes[i];
            let next = bytes.get(i + 1).copied();
            match &mut self.quote {
                Quote::None => match b {
                    b'-' if next == Some(b'-') => break,
                    b'/' if next == Some(b'*') => {
                        self.quote = Quote::Block(1);
                        i += 1;
                    }
                    b'\'' => {
                        let prefixed = i > 0
                            && matches!(bytes[i - 1], b'E' | b'e')
                            && (i < 2 || !is_ident_byte(bytes[i - 2]));
                        self.quote = Quote::Single {
                            backslash_escapes: prefixed || !self.standard_strings,
                        };
                        self.has_token = true;
                    }
                    b'"' => {
                        self.quote = Quote::Double;
                        self.has_token = true;
                    }
                    b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                        if let Some(len) = dollar_tag(&bytes[i..]) {
                            self.quote = Quote::Dollar(line[i..i + len].to_string());
                            i += len - 1;
                        }
                        self.has_token = true;
                    }
                    b'(' => {
                        self.paren_depth += 1;
                        self.has_token = true;
                    }
                    b')' => self.paren_depth = self.paren_depth.saturating_sub(1),
                    b';' if self.paren_depth == 0 && self.begin_depth == 0 => {
                        self.statement.push_str(&line[start..=i]);
                        start = i + 1;
                        if self.has_token {
                            self.finish_statement(self.line_start + i as u64 + 1)?;
                        } else {
                            self.statement.clear();
                            self.reset_statement();
                        }
                    }
                    b if (b.is_ascii_alphabetic() || b == b'_' || b >= 0x80)
                        && (i == 0 || !is_ident_byte(bytes[i - 1])) =>
                    {
                        let end = bytes[i..]
                            .iter()
                            .position(|&c| !is_ident_byte(c))
                            .map_or(bytes.len(), |n| i + n);
                        self.on_word(&line[i..end]);
                        self.has_token = true;
                        i = end - 1;
                    }
                    b if !b.is_ascii_whitespace() => self.has_token = true,
                    _ => {}
                },
                Quote::Single { backslash_escapes } => match b {
                    b'\\' if *backslash_escapes => i += 1,
                    b'\'' if next == Some(b'\'') => i += 1,
                    b'\'' => self.quote = Quote::None,
                    _ => {}
                },
                Quote::Double => match b {
                    b'"' if next == Some(b'"') => i += 1,
                    b'"' => self.quote = Quote::None,
                    _ => {}
                },
                Quote::Dollar(tag) => {
                    if bytes[i..].starts_with(tag.as_bytes()) {
                        i += tag.len() - 1;
                        self.quote = Quote::None;
                    }
                }
                Quote::Block(depth) => {
                    if b == b'/' && next == Some(b'*') {
                        *depth += 1;
                        i += 1;
                    } else if b == b'*' && next == Some(b'/') {
                        *depth -= 1;
                        i += 1;
                        if *depth == 0 {
                            self.quote = Quote::None;
                        }
                    }
                }
            }
            i += 1;
        }
        if start < line.len() {
            self.statement.push_str(&line[start..]);
        }
        // The buffer back for the next line: one allocation per script,
        // not per line (a script of 100,000 relations has millions).
        self.line = line;
        Ok(())
    }

    /// The next piece, None at the end; an error for a script that ends
    /// inside a statement or a quote.
    pub(crate) fn next_piece(&mut self) -> Result<Option<Piece>, String> {
        Ok(self.next_piece_at()?.map(|(piece, _)| piece))
    }

    /// The next piece and the offset just past it: a piece spans from the
    /// end of the one before (its leading comments included) to there.
    pub(crate) fn next_piece_at(&mut self) -> Result<Option<(Piece, u64)>, String> {
        loop {
            if let Some(piece) = self.pending.pop_front() {
                return Ok(Some(piece));
            }
            if self.done {
                return Ok(None);
            }
            self.line.clear();
            let read = self
                .input
                .read_line(&mut self.line)
                .map_err(|e| e.to_string())?;
            self.line_start = self.consumed;
            self.consumed += read as u64;
            if read == 0 {
                self.done = true;
                if self.quote != Quote::None || self.has_token {
                    return Err(format!(
                        "the script ends inside a statement: {}",
                        self.statement.trim().chars().take(200).collect::<String>()
                    ));
                }
                continue;
            }
            self.scan_line()?;
        }
    }
}

/// The objects a script restores (the total its progress counts to), or
/// None when it is not UTF-8 or asks for another client encoding: our
/// connections speak UTF-8 only (a database in another encoding is
/// restored by pg_restore itself).
pub(crate) fn utf8_script_objects(script: &Path) -> Result<Option<u64>, Error> {
    let file = std::fs::File::open(script).map_err(|e| Error::io(script, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut objects = 0;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(script, e))?
            == 0
        {
            return Ok(Some(objects));
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            return Ok(None);
        };
        if is_object_header(text) {
            objects += 1;
        }
        // Lower-cased only where it may name an encoding: most lines do not
        // begin with a backslash or an s.
        let text = text.trim();
        if !text.starts_with(['\\', 's', 'S']) {
            continue;
        }
        let text = text.to_ascii_lowercase();
        let names_encoding =
            text.starts_with("\\encoding") || text.starts_with("set client_encoding");
        if names_encoding && !text.contains("utf8") {
            return Ok(None);
        }
    }
}

/// Whether a line of pg_restore's script is the header comment it writes
/// before each object (`-- Name: t; Type: TABLE; Schema: s; Owner: o`,
/// `-- Data for Name: …`): what the restore's progress counts.
fn is_object_header(line: &str) -> bool {
    line.starts_with("-- ") && line.contains("Name: ") && line.contains("; Type: ")
}

/// The objects a piece of script restores (its header comments).
pub(crate) fn objects_in(text: &str) -> u64 {
    // All of it: a batch is many statements, each with its header.
    text.lines().filter(|l| is_object_header(l)).count() as u64
}

/// A batch this large is sent even inside a transaction (the server keeps
/// a message's parse trees until its last statement ends).
pub(crate) const BATCH_BYTES: usize = 4 << 20;

/// The server's notices and warnings during a restore, for its log.
pub(crate) type Notices = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

pub(crate) struct Runner<'a> {
    conn: &'a Endpoint,
    /// Told how many objects each message restored, once the server took it.
    progress: &'a (dyn Fn(u64) + Sync),
    database: &'a str,
    notices: Notices,
    client: postgres::Client,
    batch: String,
    statements: u64,
    messages: u64,
}

impl Runner<'_> {
    pub(crate) fn connect(
        conn: &Endpoint,
        database: &str,
        notices: &Notices,
    ) -> Result<postgres::Client, Error> {
        let notices = notices.clone();
        let mut config = postgres::Config::new();
        if let Some(password) = conn.password(database) {
            config.password(password);
        }
        config
            .host_path(&conn.socket_dir)
            .port(conn.port)
            .user(&conn.user)
            .dbname(database)
            .application_name("pg-migrate restore")
            // The new server is 17 or later here: no JIT, whatever the
            // restored database's or role's settings say.
            .options("-c default_transaction_read_only=false -c jit=off")
            .connect_timeout(Duration::from_secs(30))
            .notice_callback(move |notice| {
                let mut notices = notices.lock().unwrap_or_else(|e| e.into_inner());
                // Enough to see what the server had to say, bounded.
                if notices.len() < 10_000 {
                    notices.push(format!("{}: {}", notice.severity(), notice.message()));
                }
            })
            .connect(postgres::NoTls)
            .map_err(|e| Error::query(database, "connecting to restore", &e))
    }

    fn send(&mut self, text: &str) -> Result<(), String> {
        self.messages += 1;
        self.client
            .batch_execute(text)
            .map_err(|e| describe_failure(&e, text))?;
        (self.progress)(objects_in(text));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(&batch)
    }
}

/// The server's error, and the statement of the message it points into.
pub(crate) fn describe_failure(e: &postgres::Error, text: &str) -> String {
    let detail = pgm_cluster::describe_pg_error(e);
    let at = e.as_db_error().and_then(|db| match db.position() {
        Some(postgres::error::ErrorPosition::Original(p)) => Some(*p as usize),
        _ => None,
    });
    let context = match at {
        // The position counts characters from 1.
        Some(p) => {
            let chars: Vec<char> = text.chars().collect();
            let at = p.saturating_sub(1).min(chars.len());
            let from = chars[..at]
                .iter()
                .rposition(|&c| c == ';')
                .map_or(0, |i| i + 1);
            let to = chars[at..]
                .iter()
                .position(|&c| c == ';')
                .map_or(chars.len(), |i| at + i + 1);
            chars[from..to].iter().collect::<String>()
        }
        None => text.chars().take(400).collect(),
    };
    let context: String = context
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{detail}\nin: {}",
        context.chars().take(600).collect::<String>()
    )
}

/// Runs `script` (for one database, written by `pg_restore --create -f`):
/// it starts in `first_database` and each `\connect` goes to `database`,
/// the only database such a script connects to. Statements between a
/// top-level BEGIN and its COMMIT travel together; the others alone, as
/// pg_restore sends them. With `workers` above 1, the part of the script
/// that may run side by side (from its first relation on) runs over that
/// many connections ([`crate::parallel`]); otherwise the reason is
/// returned.
pub(crate) fn run_script(
    script: &Path,
    conn: &Endpoint,
    first_database: &str,
    database: &str,
    log: &mut impl Write,
    restore: crate::parallel::Restore<'_>,
) -> Result<Option<crate::parallel::Serial>, Error> {
    let notices = Notices::default();
    let result = execute(
        script,
        conn,
        first_database,
        database,
        &notices,
        restore,
        log,
    );
    // What the server said, whether or not the script went through.
    for notice in notices.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(log, "{notice}");
    }
    let (statements, messages, serial) = result?;
    let _ = writeln!(log, "ran {statements} statements in {messages} messages");
    Ok(serial)
}

fn execute(
    script: &Path,
    conn: &Endpoint,
    first_database: &str,
    database: &str,
    notices: &Notices,
    mut restore: crate::parallel::Restore<'_>,
    log: &mut impl Write,
) -> Result<(u64, u64, Option<crate::parallel::Serial>), Error> {
    let mut session = Session {
        runner: Runner {
            conn,
            progress: restore.progress,
            database,
            client: Runner::connect(conn, first_database, notices)?,
            notices: notices.clone(),
            batch: String::new(),
            statements: 0,
            messages: 0,
        },
        in_transaction: false,
        restricted: None,
    };
    let plan = match restore.ahead.take() {
        Some(found) => Some(found.0),
        None if restore.workers > 1 => Some(crate::parallel::plan(script, restore.workers)?),
        None => None,
    };
    let mut serial = None;
    match plan {
        None => session.run_range(script, 0, None)?,
        Some(Err(reason)) => {
            let _ = writeln!(log, "{}", reason.log_line(restore.workers));
            serial = Some(reason);
            session.run_range(script, 0, None)?;
        }
        Some(Ok(plan)) => {
            let _ = writeln!(
                log,
                "restoring {} objects (bytes {} to {}) over {} connections",
                plan.entries.len(),
                plan.start,
                plan.end,
                restore.workers
            );
            let started = std::time::Instant::now();
            session.run_range(script, 0, Some(plan.start))?;
            // What the script left open there is closed: the parallel part
            // makes its own transactions.
            if session.in_transaction {
                session.commit()?;
            }
            let before = started.elapsed();
            let stats = crate::parallel::run(script, &plan, conn, database, notices, &restore)?;
            let side_by_side = started.elapsed() - before;
            session.apply(&plan.state_at_end)?;
            if plan.in_transaction_at_end {
                session.begin()?;
            }
            session.run_range(script, plan.end, None)?;
            let _ = writeln!(
                log,
                "ran the parallel part in {} transactions ({} retried after a deadlock); \
                 {:.1} s before it, {:.1} s in it, {:.1} s after it",
                stats.batches,
                stats.retried,
                before.as_secs_f64(),
                side_by_side.as_secs_f64(),
                (started.elapsed() - before - side_by_side).as_secs_f64()
            );
        }
    }
    if session.in_transaction {
        return Err(session.fail("the script ends inside a transaction".into()));
    }
    session.runner.flush().map_err(|e| session.fail(e))?;
    Ok((session.runner.statements, session.runner.messages, serial))
}

/// One connection running a script's pieces in order.
struct Session<'a> {
    runner: Runner<'a>,
    in_transaction: bool,
    /// The key of a `\restrict` not yet lifted.
    restricted: Option<String>,
}

impl Session<'_> {
    fn fail(&self, detail: String) -> Error {
        Error::Inconsistent(format!(
            "restoring database \"{}\": {detail}",
            self.runner.database
        ))
    }

    /// Ends the transaction the script began (pieces of it went ahead).
    fn commit(&mut self) -> Result<(), Error> {
        self.runner.batch.push_str("\nCOMMIT;");
        self.in_transaction = false;
        self.runner.flush().map_err(|e| self.fail(e))
    }

    /// Begins the transaction a later part of the script continues.
    fn begin(&mut self) -> Result<(), Error> {
        self.runner.flush().map_err(|e| self.fail(e))?;
        self.runner.batch.push_str("BEGIN;\n");
        self.in_transaction = true;
        Ok(())
    }

    /// Sets the session state (search_path, default_tablespace …) the
    /// script had set by the end of the part run elsewhere.
    fn apply(&mut self, state: &crate::parallel::State) -> Result<(), Error> {
        let text: String = state.statements().collect();
        if text.is_empty() {
            return Ok(());
        }
        self.runner.flush().map_err(|e| self.fail(e))?;
        self.runner.send(&text).map_err(|e| self.fail(e))
    }

    /// Runs the pieces from offset `from` to `to` (the end of the script
    /// when None).
    fn run_range(&mut self, script: &Path, from: u64, to: Option<u64>) -> Result<(), Error> {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(script).map_err(|e| Error::io(script, e))?;
        file.seek(std::io::SeekFrom::Start(from))
            .map_err(|e| Error::io(script, e))?;
        let input = file.take(to.map_or(u64::MAX, |to| to.saturating_sub(from)));
        let mut splitter = Splitter::new(std::io::BufReader::with_capacity(1 << 20, input));
        while let Some(piece) = splitter.next_piece().map_err(|e| self.fail(e))? {
            self.run_piece(piece)?;
        }
        Ok(())
    }

    fn run_piece(&mut self, piece: Piece) -> Result<(), Error> {
        let runner = &mut self.runner;
        let database = runner.database;
        let fail = |detail: String| {
            Error::Inconsistent(format!("restoring database \"{database}\": {detail}"))
        };
        match piece {
            Piece::Meta(line) => {
                let mut words = line.split_whitespace();
                let command = words.next().unwrap_or_default();
                let argument = words.next().unwrap_or_default();
                match (&self.restricted, command) {
                    (Some(key), "\\unrestrict") if argument == key => self.restricted = None,
                    (Some(_), _) => {
                        return Err(fail(format!(
                            "the script runs {line:?} while restricted (only \\unrestrict with its key may follow \\restrict)"
                        )))
                    }
                    (None, "\\restrict") if !argument.is_empty() => {
                        self.restricted = Some(argument.to_string())
                    }
                    (None, "\\encoding") if argument.eq_ignore_ascii_case("utf8") => {}
                    (None, "\\connect" | "\\c") => {
                        if self.in_transaction {
                            return Err(fail("the script reconnects inside a transaction".into()));
                        }
                        runner.flush().map_err(fail)?;
                        runner.client =
                            Runner::connect(runner.conn, runner.database, &runner.notices)?;
                    }
                    _ => {
                        return Err(fail(format!(
                            "the script has a psql meta-command pg-migrate does not run: {line:?}"
                        )))
                    }
                }
            }
            Piece::Sql(statement) => {
                runner.statements += 1;
                // Exactly what pg_restore writes between its transactions.
                if !self.in_transaction && is_just(&statement, "BEGIN;") {
                    self.in_transaction = true;
                    runner.batch.push_str(&statement);
                } else if self.in_transaction {
                    runner.batch.push_str(&statement);
                    if is_just(&statement, "COMMIT;") {
                        self.in_transaction = false;
                        runner.flush().map_err(fail)?;
                    } else if runner.batch.len() >= BATCH_BYTES {
                        runner.flush().map_err(fail)?;
                    }
                } else {
                    runner.send(&statement).map_err(fail)?;
                }
            }
            Piece::Copy { statement, data } => {
                runner.statements += 1;
                runner.flush().map_err(fail)?;
                let mut writer = runner
                    .client
                    .copy_in(statement.as_str())
                    .map_err(|e| fail(describe_failure(&e, &statement)))?;
                writer
                    .write_all(data.as_bytes())
                    .map_err(|e| fail(e.to_string()))?;
                writer
                    .finish()
                    .map_err(|e| fail(describe_failure(&e, &statement)))?;
                (runner.progress)(objects_in(&statement));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<Piece> {
        let mut splitter = Splitter::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(piece) = splitter.next_piece().unwrap() {
            out.push(piece);
        }
        out
    }

    fn sql(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Sql(s) => normalized(s),
                Piece::Meta(m) => format!("META {m}"),
                Piece::Copy { statement, data } => {
                    format!("{} DATA {data:?}", normalized(statement))
                }
            })
            .collect()
    }

    #[test]
    fn quoting_never_ends_a_statement() {
        let script = "\\restrict k1\n\
            SET a = 1; SET b = 'x;y';\n\
            -- a comment; with a semicolon\n\
            CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\nCOMMIT;\n\\connect evil\nRETURN 1; END\n$body$ LANGUAGE plpgsql;\n\
            SELECT $$a;b$$, E'it\\'s;', 'it''s;', \"we;ird\"\"q\", a$b, $1;\n\
            /* outer /* inner; */ still; */ SELECT 2;\n\
            COMMENT ON TABLE t IS 'line one\n\\connect not-meta;\nline three';\n\
            \\unrestrict k1\n";
        assert_eq!(
            sql(&split(script)),
            vec![
                "META \\restrict k1".to_string(),
                "SET A = 1;".into(),
                "SET B = 'X;Y';".into(),
                "CREATE FUNCTION F() RETURNS INT AS $BODY$ BEGIN COMMIT; \\CONNECT EVIL RETURN 1; END $BODY$ LANGUAGE PLPGSQL;".into(),
                "SELECT $$A;B$$, E'IT\\'S;', 'IT''S;', \"WE;IRD\"\"Q\", A$B, $1;".into(),
                "/* OUTER /* INNER; */ STILL; */ SELECT 2;".into(),
                "COMMENT ON TABLE T IS 'LINE ONE \\CONNECT NOT-META; LINE THREE';".into(),
                "META \\unrestrict k1".into(),
            ]
        );
    }

    #[test]
    fn semicolons_in_bodies_and_parentheses_end_nothing() {
        let script = "BEGIN;\n\
            CREATE FUNCTION public.f(i integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN (i < 0) THEN '-1'::integer ELSE 1 END AS \"case\";\nEND;\n\
            CREATE OR REPLACE PROCEDURE public.p()\n    LANGUAGE sql\n    BEGIN ATOMIC\n INSERT INTO t VALUES (1);\n INSERT INTO t VALUES (2);\nEND;\n\
            CREATE RULE r AS ON DELETE TO t DO ALSO ( INSERT INTO l VALUES ('one'); INSERT INTO l VALUES ('two'); );\n\
            COMMIT;\nBEGIN;\nEND;\n";
        let pieces = sql(&split(script));
        assert_eq!(pieces.len(), 7, "{pieces:#?}");
        assert_eq!(pieces[0], "BEGIN;");
        assert!(pieces[1].starts_with("CREATE FUNCTION") && pieces[1].ends_with("END;"));
        assert!(
            pieces[2].starts_with("CREATE OR REPLACE PROCEDURE") && pieces[2].ends_with("END;")
        );
        assert!(pieces[3].starts_with("CREATE RULE") && pieces[3].ends_with(");"));
        assert_eq!(&pieces[4..], ["COMMIT;", "BEGIN;", "END;"]);
    }

    #[test]
    fn backslashes_escape_only_where_the_script_says_so() {
        // Standard strings: a backslash is an ordinary character.
        assert_eq!(split("SELECT 'a\\';\nSELECT 1;\n").len(), 2);
        // Turned off: the same text is one unfinished string.
        let mut s =
            Splitter::new("SET standard_conforming_strings = off;\nSELECT 'a\\';\n".as_bytes());
        assert!(matches!(s.next_piece(), Ok(Some(Piece::Sql(_)))));
        assert!(s.next_piece().is_err());
    }

    #[test]
    fn only_utf8_scripts_run_over_our_connections() {
        let dir = tempfile::tempdir().unwrap();
        let check = |bytes: &[u8]| {
            let path = dir.path().join("script.sql");
            std::fs::write(&path, bytes).unwrap();
            utf8_script_objects(&path).unwrap().is_some()
        };
        assert!(check(
            b"SET client_encoding = 'UTF8';\nSELECT '\xc3\xa9';\n\\encoding UTF8\n"
        ));
        assert!(!check(b"SET client_encoding = 'LATIN1';\nSELECT 1;\n"));
        // And what its progress counts: each object's header.
        let path = dir.path().join("counted.sql");
        std::fs::write(
            &path,
            "--\n-- Name: t; Type: TABLE; Schema: s; Owner: o\n--\nCREATE TABLE t ();\n\
             -- Data for Name: t; Type: TABLE DATA; Schema: s; Owner: o\nSELECT 1;\n",
        )
        .unwrap();
        assert_eq!(utf8_script_objects(&path).unwrap(), Some(2));
        assert!(!check(b"\\encoding SQL_ASCII\n"));
        assert!(!check(b"SELECT '\xe9';\n"));
    }

    #[test]
    fn copy_data_is_carried_whole_and_truncation_is_an_error() {
        let pieces = split("COPY t (a) FROM stdin;\n1\\;x\n2\n\\.\nSELECT 1;\n");
        assert_eq!(
            sql(&pieces),
            vec![
                "COPY T (A) FROM STDIN; DATA \"1\\\\;x\\n2\\n\"".to_string(),
                "SELECT 1;".into()
            ]
        );
        let mut s = Splitter::new("COPY t FROM stdin;\n1\n".as_bytes());
        assert!(s.next_piece().is_err());
        let mut s = Splitter::new("SELECT 'open\n".as_bytes());
        assert!(s.next_piece().is_err());
    }
}
