//! One database's restore over several connections: the part of the
//! restore script that may run side by side (its post-data objects:
//! indexes, constraints, triggers, policies, their comments and
//! statistics) is spread over `workers` connections, each in transactions
//! of its own; what comes before it (the database, types, functions,
//! tables) and after it (privileges, and whatever this module does not
//! know) runs in order over one connection, as without workers.
//!
//! What keeps the result the serial one's: every object's binary-upgrade
//! OIDs and file numbers are set in its own script entry, on its own
//! connection, just before it is created; an entry runs only after every
//! entry it depends on (pg_restore's `-- Dependencies:` lines, written
//! with `--verbose`); and no two connections work on one table at once
//! (each entry's tables are those among its dependencies, followed
//! through the indexes and constraints it names), so that one never waits
//! for another's lock. A deadlock all the same (a partitioned table's
//! constraint reaches its partitions) is retried with the other
//! connections idle. The session settings the script set before an entry
//! (search_path, default_tablespace …) are set on its connection first.
//!
//! This module must not decide how many workers a restore gets, nor run
//! the serial parts: `script` does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use pgm_cluster::server::Endpoint;

use crate::script::{
    begins_with, describe_failure, is_just, leading_comments, normalized, objects_in, Notices,
    Piece, Runner, Splitter,
};
use crate::Error;

/// Entries per transaction on each connection of the part restored side
/// by side. Every commit sends the other connections the invalidations of
/// the catalog rows it wrote, and the server's shared queue holds 4,096 of
/// them, so a larger commit resets the caches of a connection that has
/// not read them yet. With 100,000 relations in one database over two
/// connections, every database was restored 13.1-13.6 s into
/// restore-schema with transactions of 20 to 200 entries, 14.2-14.7 s with
/// 500 (pg_upgrade's 1,000 over -j 2), measured alternately on one machine
/// on 2026-12-05.
pub(crate) const SIDE_BY_SIDE_TRANSACTION: usize = 50;

/// How one database's restore runs.
pub struct Restore<'a> {
    /// Connections for the part that may run side by side (1: none).
    pub workers: usize,
    /// Entries per transaction there at most (the lock table's bound; each
    /// connection's transactions hold [`SIDE_BY_SIDE_TRANSACTION`] at most).
    pub transaction_size: usize,
    /// Told how many objects were restored, as they are.
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// The part run side by side, if it was found ahead for as many workers.
    pub ahead: Option<Ahead>,
}

/// The session settings a script has set: each setting's last statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State(Arc<BTreeMap<String, String>>);

impl State {
    pub(crate) fn statements(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }

    fn with(&self, key: String, statement: String) -> State {
        let mut map = (*self.0).clone();
        map.insert(key, statement);
        State(Arc::new(map))
    }

    /// The statements that take a connection from `self` to `to`.
    fn changes_to<'a>(&self, to: &'a State) -> Vec<&'a str> {
        if Arc::ptr_eq(&self.0, &to.0) {
            return Vec::new();
        }
        to.0.iter()
            .filter(|(key, statement)| self.0.get(*key) != Some(statement))
            .map(|(_, statement)| statement.as_str())
            .collect()
    }
}

/// A statement that sets a session setting, and the setting's name.
fn session_setting(statement: &str) -> Option<String> {
    if !["SET ", "RESET ", "SELECT PG_CATALOG.SET_CONFIG("]
        .iter()
        .any(|prefix| begins_with(statement, prefix))
    {
        return None;
    }
    let words = normalized(statement);
    let words = words.trim_end_matches(';');
    if let Some(rest) = words.strip_prefix("SELECT PG_CATALOG.SET_CONFIG('") {
        return rest.split('\'').next().map(str::to_ascii_lowercase);
    }
    let rest = words
        .strip_prefix("SET ")
        .or_else(|| words.strip_prefix("RESET "))?;
    let rest = rest.strip_prefix("SESSION ").unwrap_or(rest);
    let name = rest.split([' ', '=']).next()?;
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// A list of numbers for each entry, all end to end in one vector: a
/// database with 100,000 relations has several hundred thousand entries,
/// and a vector apiece would cost an allocation each.
#[derive(Debug, Default)]
pub(crate) struct Lists {
    items: Vec<u32>,
    /// Where each entry's list ends in `items`.
    ends: Vec<u32>,
}

impl Lists {
    fn push(&mut self, list: impl IntoIterator<Item = u32>) {
        self.items.extend(list);
        self.ends.push(self.items.len() as u32);
    }

    fn pop(&mut self) {
        self.ends.pop();
        self.items
            .truncate(self.ends.last().map_or(0, |&end| end as usize));
    }

    fn get(&self, entry: usize) -> &[u32] {
        let start = entry
            .checked_sub(1)
            .map_or(0, |before| self.ends[before] as usize);
        &self.items[start..self.ends[entry] as usize]
    }

    /// For each entry, the entries whose lists name it, in order.
    fn reversed(&self) -> Lists {
        let mut ends = vec![0u32; self.ends.len()];
        for &item in &self.items {
            ends[item as usize] += 1;
        }
        let mut total = 0;
        for end in &mut ends {
            total += *end;
            *end = total;
        }
        // Each list filled from its end, the naming entries taken last first.
        let mut next = ends.clone();
        let mut items = vec![0; self.items.len()];
        for entry in (0..self.ends.len()).rev() {
            for &item in self.get(entry) {
                let slot = &mut next[item as usize];
                *slot -= 1;
                items[*slot as usize] = entry as u32;
            }
        }
        Lists { items, ends }
    }

    fn shrink_to_fit(&mut self) {
        self.items.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// One entry of pg_restore's table of contents the workers run (what it
/// waits for and works on are the plan's `after` and `tables`).
#[derive(Debug)]
pub(crate) struct Entry {
    /// Its dump id (what a failure names).
    id: u32,
    /// The byte range of its statements in the script (its start is where
    /// the part would end, were it cut at this entry), and any further
    /// ranges (a statement the script put between them is not its own).
    range: (u64, u64),
    more_ranges: Vec<(u64, u64)>,
    /// Runs alone, after every entry before it and before any after it
    /// (what this module does not know, or an entry that names no relation).
    alone: bool,
    objects: u32,
    /// The session settings in force where it begins, and whether the
    /// script had a transaction open there.
    state: State,
    in_transaction_before: bool,
}

impl Entry {
    fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        std::iter::once(self.range).chain(self.more_ranges.iter().copied())
    }

    fn add_range(&mut self, range: (u64, u64)) {
        let last = self.more_ranges.last_mut().unwrap_or(&mut self.range);
        if last.1 == range.0 {
            last.1 = range.1;
        } else {
            self.more_ranges.push(range);
        }
    }
}

/// The part of a script the workers run, and how to go on after it.
#[derive(Debug)]
pub(crate) struct Plan {
    pub start: u64,
    pub end: u64,
    pub entries: Vec<Entry>,
    /// Each entry's entries (indexes into `entries`) it waits for.
    after: Lists,
    /// Each entry's relations it works on (their dump ids).
    tables: Lists,
    /// The first index, constraint, trigger … : it and everything after it
    /// wait until every relation before it is defined, as pg_restore keeps
    /// them (a partition attached after its parent's key exists would need
    /// an index the binary-upgrade restore has no OID for).
    fence: usize,
    pub state_at_end: State,
    pub in_transaction_at_end: bool,
}

/// A plan found ahead of its restore, or why none runs side by side.
#[derive(Debug)]
pub struct Ahead(pub(crate) Result<Plan, Serial>);

/// Why a database that was to be restored over several connections is
/// restored over one, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// The script creates no table, index or other relation: nothing of it
    /// is known to be independent of the rest.
    NoRelations,
    /// An entry depends on one the script runs after it, an order only a
    /// serial restore keeps.
    OutOfOrder { entry: u32, depends_on: u32 },
    /// Too few objects could run side by side to be worth the connections.
    TooFew { objects: usize, workers: usize },
    /// pg_restore restores the database itself, over one connection: the
    /// new installation is older than 17, or the database is not UTF-8.
    ByPgRestore,
}

impl Serial {
    /// The restore log's line saying so.
    pub(crate) fn log_line(&self, workers: usize) -> String {
        format!("restoring over one connection, not {workers}: {self}")
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Serial::NoRelations => write!(f, "its schema creates no relation"),
            Serial::OutOfOrder { entry, depends_on } => write!(
                f,
                "its dump's entry {entry} depends on entry {depends_on}, which comes later"
            ),
            Serial::TooFew { objects, workers } => write!(
                f,
                "only {objects} objects could run side by side, too few for {workers} connections"
            ),
            Serial::ByPgRestore => write!(
                f,
                "pg_restore restores it itself (a new installation older than 17, or a database not in UTF-8)"
            ),
        }
    }
}

/// What a table-of-contents entry is, as far as scheduling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A relation (table, view, materialized view, foreign table,
    /// sequence): the first begins the part that may run side by side; it
    /// works on itself and the relations it depends on.
    Relation,
    /// Works on the relations it depends on (an index, a constraint, a
    /// trigger, a default, a partition's attachment, statistics, a comment …).
    OnRelations,
    /// Privileges: the pass that ends the part run side by side.
    Privileges,
    /// Anything else (a function, a type …): run alone, in script order.
    Other,
}

/// pg_dump's post-data objects: after every relation's definition.
const POST_DATA: &[&str] = &[
    "INDEX",
    "INDEX ATTACH",
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "TRIGGER",
    "RULE",
    "POLICY",
    "STATISTICS",
];

/// Whether a header line names an object of one of `descs`.
fn of_type(desc_line: &str, descs: &[&str]) -> bool {
    // "-- Name: …; Type: INDEX; Schema: …": the type is between the last
    // "; Type: " before "; Schema: " and it (a name may hold either).
    desc_line.match_indices("; Schema: ").any(|(end, _)| {
        let before = &desc_line[..end];
        before
            .rfind("; Type: ")
            .is_some_and(|start| descs.contains(&&before[start + "; Type: ".len()..]))
    })
}

fn kind(desc_line: &str) -> Kind {
    let any = |descs: &[&str]| of_type(desc_line, descs);
    if any(&[
        "TABLE",
        "MATERIALIZED VIEW",
        "VIEW",
        "FOREIGN TABLE",
        "SEQUENCE",
    ]) {
        return Kind::Relation;
    }
    if any(POST_DATA)
        || any(&[
            "STATISTICS DATA",
            "TABLE ATTACH",
            "SEQUENCE OWNED BY",
            "SEQUENCE SET",
            "DEFAULT",
            "COMMENT",
            "SECURITY LABEL",
            "ROW SECURITY",
        ])
    {
        return Kind::OnRelations;
    }
    if any(&["ACL", "DEFAULT ACL"]) {
        return Kind::Privileges;
    }
    Kind::Other
}

/// The table-of-contents facts of a piece that begins an entry.
struct Header {
    id: u32,
    dependencies: Vec<u32>,
    kind: Kind,
    /// Of pg_dump's post-data section: after every table's definition.
    post_data: bool,
}

/// The facts of an entry's header, from the comment lines before its
/// first statement.
fn header(comments: &str) -> Option<Header> {
    let mut id = None;
    let mut dependencies = Vec::new();
    let mut kind_found = Kind::Other;
    let mut post_data = false;
    for line in comments.lines() {
        if let Some(rest) = line.strip_prefix("-- TOC entry ") {
            id = rest.split(' ').next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("-- Dependencies: ") {
            dependencies = rest
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
        } else if line.starts_with("-- ") && line.contains("Name: ") {
            kind_found = kind(line);
            post_data = of_type(line, POST_DATA);
        }
    }
    Some(Header {
        id: id?,
        dependencies,
        kind: kind_found,
        post_data,
    })
}

/// Ends the parallel part at the entry being read (it runs in order after,
/// from its beginning), or here when none is: where, the settings there,
/// and whether the script had a transaction open.
fn cut(
    entries: &mut Vec<Entry>,
    dependencies: &mut Lists,
    here: u64,
    state: &State,
    in_transaction: bool,
) -> (u64, State, bool) {
    match entries.pop() {
        Some(entry) => {
            dependencies.pop();
            (entry.range.0, entry.state, entry.in_transaction_before)
        }
        None => (here, state.clone(), in_transaction),
    }
}

/// Reads the script (written by `pg_restore --verbose`) once and finds the
/// part that may run side by side, or why it runs over one connection.
pub(crate) fn plan(script: &Path, workers: usize) -> Result<Result<Plan, Serial>, Error> {
    let file = std::fs::File::open(script).map_err(|e| Error::io(script, e))?;
    let mut splitter = Splitter::new(std::io::BufReader::with_capacity(1 << 20, file));
    let fail = |detail: String| Error::Inconsistent(format!("{}: {detail}", script.display()));
    #[derive(PartialEq)]
    enum Phase {
        Before,
        Inside,
        After,
    }
    let mut phase = Phase::Before;
    let mut fence: Option<usize> = None;
    let mut kinds: HashMap<u32, (Kind, Option<u32>)> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut dependencies = Lists::default();
    let mut state = State::default();
    let mut in_transaction = false;
    let mut start = 0;
    let mut end = 0;
    let mut state_at_end = State::default();
    let mut in_transaction_at_end = false;
    // Whether the last piece began an entry or belonged to one (a setting
    // changed after it is within that entry).
    let mut in_entry = false;
    let mut setting_within = false;
    let mut from = 0u64;
    while let Some((piece, to)) = splitter.next_piece_at().map_err(fail)? {
        let range = (from, to);
        from = to;
        if phase == Phase::After {
            continue;
        }
        let statement = match piece {
            Piece::Sql(statement) => statement,
            // Neither a meta-command nor COPY data can be moved: the part
            // run side by side ends before the entry that has one.
            Piece::Meta(_) | Piece::Copy { .. } if phase == Phase::Inside => {
                (end, state_at_end, in_transaction_at_end) = cut(
                    &mut entries,
                    &mut dependencies,
                    range.0,
                    &state,
                    in_transaction,
                );
                phase = Phase::After;
                continue;
            }
            Piece::Meta(line) => {
                if line.starts_with("\\connect") || line.starts_with("\\c ") {
                    // A new connection starts with none of the settings.
                    state = State::default();
                }
                in_entry = false;
                continue;
            }
            Piece::Copy { .. } => {
                in_entry = false;
                continue;
            }
        };
        // The header comments and the statement after them, told apart
        // once: most of what follows looks at only one of the two.
        let (comments, code) = statement.split_at(leading_comments(&statement).len());
        let setting = session_setting(code).map(|key| {
            let text: Vec<&str> = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            (key, format!("{}\n", text.join("\n").trim()))
        });
        if let Some(found) = header(comments) {
            // An entry that is a setting (SEARCHPATH) sets it for what follows.
            if let (Some((key, text)), Phase::Before) = (&setting, &phase) {
                state = state.with(key.clone(), text.clone());
            }
            in_entry = true;
            setting_within = false;
            let begins = found.kind == Kind::Relation && phase == Phase::Before;
            if begins {
                phase = Phase::Inside;
                start = range.0;
            }
            let runs_inside = phase == Phase::Inside && found.kind != Kind::Privileges;
            if phase == Phase::Inside && !runs_inside {
                end = range.0;
                state_at_end = state.clone();
                in_transaction_at_end = in_transaction;
                phase = Phase::After;
                continue;
            }
            let index = runs_inside.then_some(entries.len() as u32);
            kinds.insert(found.id, (found.kind, index));
            if runs_inside {
                if found.post_data && fence.is_none() {
                    fence = Some(entries.len());
                }
                entries.push(Entry {
                    id: found.id,
                    range,
                    more_ranges: Vec::new(),
                    alone: found.kind == Kind::Other,
                    objects: objects_in(comments) as u32,
                    state: state.clone(),
                    in_transaction_before: in_transaction,
                });
                dependencies.push(found.dependencies);
            }
            continue;
        }
        let begins = is_just(code, "BEGIN;");
        if begins || is_just(code, "COMMIT;") {
            in_transaction = begins;
            in_entry = false;
            continue;
        }
        if let Some((key, text)) = setting {
            state = state.with(key, text);
            setting_within = in_entry;
            continue;
        }
        // A statement of the entry being read.
        if phase == Phase::Inside {
            if setting_within || !in_entry {
                // A setting changed within the entry, or a statement that
                // belongs to none: that cannot be moved, so it runs in order.
                (end, state_at_end, in_transaction_at_end) = cut(
                    &mut entries,
                    &mut dependencies,
                    range.0,
                    &state,
                    in_transaction,
                );
                phase = Phase::After;
                continue;
            }
            if let Some(entry) = entries.last_mut() {
                entry.add_range(range);
            }
        }
    }
    match phase {
        Phase::Before => return Ok(Err(Serial::NoRelations)),
        Phase::Inside => {
            end = from;
            state_at_end = state.clone();
            in_transaction_at_end = in_transaction;
        }
        Phase::After => {}
    }
    // Each entry's tables: the relations it depends on, and theirs of the
    // entries it depends on (an index's comment works on the index's table).
    let mut all_tables = Lists::default();
    let mut all_after = Lists::default();
    for (index, entry) in entries.iter_mut().enumerate() {
        let mut tables = BTreeSet::new();
        if let Some((Kind::Relation, _)) = kinds.get(&entry.id) {
            tables.insert(entry.id);
        }
        let mut after = Vec::new();
        for id in dependencies.get(index) {
            match kinds.get(id) {
                // An entry later in the script: not an order we can keep.
                Some((_, Some(other))) if *other as usize >= index => {
                    return Ok(Err(Serial::OutOfOrder {
                        entry: entry.id,
                        depends_on: *id,
                    }))
                }
                Some((kind, Some(other))) => {
                    after.push(*other);
                    if *kind == Kind::Relation {
                        tables.insert(*id);
                    }
                    tables.extend(all_tables.get(*other as usize).iter().copied());
                }
                Some((Kind::Relation, None)) => {
                    tables.insert(*id);
                }
                _ => {}
            }
        }
        entry.alone |= tables.is_empty();
        all_tables.push(tables);
        all_after.push(after);
    }
    drop(kinds);
    drop(dependencies);
    entries.shrink_to_fit();
    all_tables.shrink_to_fit();
    all_after.shrink_to_fit();
    if entries.len() < workers * 4 {
        return Ok(Err(Serial::TooFew {
            objects: entries.len(),
            workers,
        }));
    }
    let fence = fence.unwrap_or(entries.len());
    Ok(Ok(Plan {
        start,
        end,
        fence,
        entries,
        after: all_after,
        tables: all_tables,
        state_at_end,
        in_transaction_at_end,
    }))
}

/// How the parallel part went.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub batches: u64,
    pub retried: u64,
}

/// Who runs what, shared by the workers.
struct Board {
    /// Entries that run alone, in script order, and the next of them.
    barriers: Vec<usize>,
    next_barrier: usize,
    finished: Vec<bool>,
    /// Every entry before it is finished.
    lowest_unfinished: usize,
    waiting: Vec<u32>,
    ready: BTreeSet<usize>,
    busy: HashSet<u32>,
    running: usize,
    /// An entry with no tables is running (alone).
    alone: bool,
    /// A worker retries after a deadlock: nothing else starts.
    exclusive: bool,
    /// Workers waiting to retry (not running, but not done either).
    retrying: usize,
    done: usize,
    failure: Option<Error>,
    stats: Stats,
}

impl Board {
    /// The next batch: ready entries before the next entry that runs alone,
    /// in script order, whose tables no other connection works on; or,
    /// once every entry before it is finished and nothing runs, that entry
    /// (with those that run alone right after it).
    fn pick(&mut self, plan: &Plan, size: usize) -> Option<(Vec<usize>, Vec<u32>)> {
        if self.exclusive || self.alone {
            return None;
        }
        let count = plan.entries.len();
        let limit = self
            .barriers
            .get(self.next_barrier)
            .copied()
            .unwrap_or(count);
        if limit < count && self.lowest_unfinished == limit {
            if self.running > 0 {
                return None;
            }
            let mut batch = Vec::new();
            while let Some(&index) = self.barriers.get(self.next_barrier) {
                if index != limit + batch.len() || batch.len() >= size {
                    break;
                }
                batch.push(index);
                self.ready.remove(&index);
                self.next_barrier += 1;
            }
            self.alone = true;
            self.running += 1;
            return Some((batch, Vec::new()));
        }
        let mut limit = limit;
        if self.lowest_unfinished < plan.fence {
            limit = limit.min(plan.fence);
        }
        let mut batch = Vec::new();
        let mut mine: HashSet<u32> = HashSet::new();
        for &index in self.ready.range(..limit) {
            let tables = plan.tables.get(index);
            if tables
                .iter()
                .any(|t| self.busy.contains(t) && !mine.contains(t))
            {
                continue;
            }
            mine.extend(tables.iter().copied());
            batch.push(index);
            if batch.len() >= size {
                break;
            }
        }
        if batch.is_empty() {
            return None;
        }
        for index in &batch {
            self.ready.remove(index);
        }
        self.busy.extend(mine.iter().copied());
        self.running += 1;
        Some((batch, mine.into_iter().collect()))
    }

    fn finish(&mut self, plan: &Plan, dependents: &Lists, batch: &[usize], tables: &[u32]) {
        self.running -= 1;
        if plan.entries[batch[0]].alone {
            self.alone = false;
        }
        for table in tables {
            self.busy.remove(table);
        }
        // All of the batch first: an entry that runs alone may depend on
        // the one before it in its batch.
        for &index in batch {
            self.done += 1;
            self.finished[index] = true;
        }
        for &index in batch {
            for &next in dependents.get(index) {
                let next = next as usize;
                self.waiting[next] -= 1;
                if self.waiting[next] == 0 && !self.finished[next] {
                    self.ready.insert(next);
                }
            }
        }
        while self.finished.get(self.lowest_unfinished) == Some(&true) {
            self.lowest_unfinished += 1;
        }
        self.stats.batches += 1;
    }
}

/// A failure another connection's work caused, which the same batch run
/// alone does not meet: a deadlock, or a name two connections took at once
/// (table `_t` and table `t`'s array type `_t`; run alone, the second
/// picks another name, as in a serial restore).
fn is_retried(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    matches!(
        e.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::UNIQUE_VIOLATION)
    )
}

/// Runs the plan's entries over `restore.workers` connections to `database`.
pub(crate) fn run(
    script: &Path,
    plan: &Plan,
    conn: &Endpoint,
    database: &str,
    notices: &Notices,
    restore: &Restore<'_>,
) -> Result<Stats, Error> {
    let count = plan.entries.len();
    let waiting: Vec<u32> = (0..count).map(|i| plan.after.get(i).len() as u32).collect();
    let dependents = plan.after.reversed();
    let ready = (0..count).filter(|&i| waiting[i] == 0).collect();
    let board = Mutex::new(Board {
        barriers: (0..count).filter(|&i| plan.entries[i].alone).collect(),
        next_barrier: 0,
        finished: vec![false; count],
        lowest_unfinished: 0,
        waiting,
        ready,
        busy: HashSet::new(),
        running: 0,
        alone: false,
        exclusive: false,
        retrying: 0,
        done: 0,
        failure: None,
        stats: Stats::default(),
    });
    let changed = Condvar::new();
    let size = restore.transaction_size.clamp(1, SIDE_BY_SIDE_TRANSACTION);
    let fail = |detail: String| {
        Error::Inconsistent(format!("restoring database \"{database}\": {detail}"))
    };
    let lock = || board.lock().unwrap_or_else(|e| e.into_inner());
    let give_up = |error: Error| {
        let mut board = lock();
        board.failure.get_or_insert(error);
        changed.notify_all();
    };
    let worker = || -> Result<(), Error> {
        let file = std::fs::File::open(script).map_err(|e| Error::io(script, e))?;
        let mut client = Runner::connect(conn, database, notices)?;
        // This connection starts after the script's ALTER DATABASE … SET
        // (the serial one before it): none of those may make it another
        // role or close it while it waits.
        client
            .batch_execute("SET ROLE NONE; SET idle_session_timeout = 0")
            .map_err(|e| fail(describe_failure(&e, "SET ROLE NONE")))?;
        let mut session = State::default();
        loop {
            let (batch, tables) = {
                let mut board = lock();
                loop {
                    if board.failure.is_some() || board.done == count {
                        return Ok(());
                    }
                    if let Some(picked) = board.pick(plan, size) {
                        break picked;
                    }
                    if board.running == 0 && !board.exclusive && board.retrying == 0 {
                        // Nothing runs and nothing can: the rest waits for
                        // itself.
                        return Err(fail(format!(
                            "{} objects of the part restored side by side wait for each other",
                            count - board.done
                        )));
                    }
                    board = changed.wait(board).unwrap_or_else(|e| e.into_inner());
                }
            };
            let mut text = String::from("BEGIN;\n");
            let mut state = session.clone();
            let mut objects = 0;
            for &index in &batch {
                let entry = &plan.entries[index];
                for statement in state.changes_to(&entry.state) {
                    text.push_str(statement);
                }
                state = entry.state.clone();
                for (from, to) in entry.ranges() {
                    let mut bytes = vec![0; (to - from) as usize];
                    file.read_exact_at(&mut bytes, from)
                        .map_err(|e| Error::io(script, e))?;
                    text.push_str(
                        &String::from_utf8(bytes)
                            .map_err(|_| fail(format!("the script is not UTF-8 at byte {from}")))?,
                    );
                }
                text.push('\n');
                objects += u64::from(entry.objects);
            }
            text.push_str("COMMIT;\n");
            let ids = || {
                let ids: Vec<String> = batch
                    .iter()
                    .map(|&i| plan.entries[i].id.to_string())
                    .collect();
                format!(
                    " (a transaction of the part restored side by side: dump ids {})",
                    ids.join(" ")
                )
            };
            if let Err(e) = client.batch_execute(&text) {
                if !is_retried(&e) {
                    return Err(fail(describe_failure(&e, &text) + &ids()));
                }
                // Rolled back whole: again, once no other connection works
                // (its tables stay this batch's meanwhile).
                let _ = client.batch_execute("ROLLBACK");
                {
                    let mut board = lock();
                    board.stats.retried += 1;
                    board.running -= 1;
                    board.retrying += 1;
                    changed.notify_all();
                    while board.exclusive && board.failure.is_none() {
                        board = changed.wait(board).unwrap_or_else(|e| e.into_inner());
                    }
                    board.exclusive = true;
                    while board.running > 0 && board.failure.is_none() {
                        board = changed.wait(board).unwrap_or_else(|e| e.into_inner());
                    }
                    board.retrying -= 1;
                    board.running += 1;
                }
                let again = client.batch_execute(&text);
                lock().exclusive = false;
                changed.notify_all();
                again.map_err(|e| fail(describe_failure(&e, &text) + &ids()))?;
            }
            session = state;
            (restore.progress)(objects);
            let mut board = lock();
            board.finish(plan, &dependents, &batch, &tables);
            let finished = board.stats.batches;
            drop(board);
            changed.notify_all();
            pgm_cluster::faults::point(|| format!("restore-schema:parallel-batch:{finished}"));
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..restore.workers {
            scope.spawn(|| {
                if let Err(e) = worker() {
                    give_up(e);
                }
            });
        }
    });
    let board = board.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(error) = board.failure {
        return Err(error);
    }
    if board.done != count {
        return Err(fail(format!(
            "{} of {count} objects of the parallel part were never run (a dependency loop?)",
            count - board.done
        )));
    }
    Ok(board.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_are_recognised_by_name() {
        assert_eq!(
            session_setting("SET default_tablespace = '';").as_deref(),
            Some("default_tablespace")
        );
        assert_eq!(
            session_setting("SELECT pg_catalog.set_config('search_path', '', false);").as_deref(),
            Some("search_path")
        );
        assert_eq!(
            session_setting("SET SESSION AUTHORIZATION 'x';").as_deref(),
            Some("authorization")
        );
        assert_eq!(
            session_setting("UPDATE pg_catalog.pg_class\nSET relfrozenxid = '1';"),
            None
        );
        assert_eq!(session_setting("SELECT 1;"), None);
    }

    #[test]
    fn headers_give_the_entry_its_dependencies_and_kind() {
        let text = "\n--\n-- TOC entry 2469 (class 2620 OID 16424)\n-- Dependencies: 231 222\n-- Name: c t; Type: TRIGGER; Schema: s; Owner: me\n--\n\nCREATE TRIGGER t …;";
        let found = header(leading_comments(text)).unwrap();
        assert_eq!(found.id, 2469);
        assert_eq!(found.dependencies, [231, 222]);
        assert_eq!(found.kind, Kind::OnRelations);
        assert_eq!(
            kind("-- Name: p; Type: TABLE; Schema: s; Owner: me"),
            Kind::Relation
        );
        assert_eq!(
            kind("-- Statistics for Name: c_v; Type: STATISTICS DATA; Schema: s; Owner: -"),
            Kind::OnRelations
        );
        assert_eq!(
            kind("-- Name: TABLE \"p\"; Type: ACL; Schema: s; Owner: me"),
            Kind::Privileges
        );
        assert_eq!(
            kind("-- Name: f(); Type: FUNCTION; Schema: s; Owner: me"),
            Kind::Other
        );
        assert!(header("-- Name: x; Type: TABLE; Schema: s; Owner: me\n").is_none());
    }

    #[test]
    fn lists_hold_each_entry_s_numbers_and_their_reverse() {
        let mut lists = Lists::default();
        lists.push([]);
        lists.push([0]);
        lists.push([0, 1]);
        lists.push([7]);
        lists.pop();
        assert_eq!(lists.get(0), [] as [u32; 0]);
        assert_eq!(lists.get(1), [0]);
        assert_eq!(lists.get(2), [0, 1]);
        let reversed = lists.reversed();
        assert_eq!(reversed.get(0), [1, 2]);
        assert_eq!(reversed.get(1), [2]);
        assert_eq!(reversed.get(2), [] as [u32; 0]);
    }

    #[test]
    fn an_entry_s_adjoining_ranges_become_one() {
        let mut entry = Entry {
            id: 1,
            range: (0, 10),
            more_ranges: Vec::new(),
            alone: false,
            objects: 1,
            state: State::default(),
            in_transaction_before: false,
        };
        entry.add_range((10, 20));
        entry.add_range((25, 30));
        entry.add_range((30, 31));
        assert_eq!(entry.ranges().collect::<Vec<_>>(), [(0, 20), (25, 31)]);
    }

    #[test]
    fn a_connection_is_told_only_the_settings_that_differ() {
        let empty = State::default();
        let one = empty.with("a".into(), "SET a = 1;\n".into());
        let two = one.with("b".into(), "SET b = 2;\n".into());
        assert_eq!(empty.changes_to(&two), ["SET a = 1;\n", "SET b = 2;\n"]);
        assert_eq!(one.changes_to(&two), ["SET b = 2;\n"]);
        assert!(two.changes_to(&two).is_empty());
    }
}
