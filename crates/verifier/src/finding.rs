use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run, because an earlier failure made it meaningless or unsafe.
    Skip,
}

/// The result of one check: a stable id, a verdict, what was found and, for
/// anything short of a pass, what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `new-server`.
    pub id: &'static str,
    /// What the check is about, for people.
    pub title: &'static str,
    pub status: Status,
    /// Stable code naming the problem (warn and fail only), e.g. `new_server_running`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The objects the finding is about (database, kind, name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<crate::rules::ObjectRef>,
}

impl Finding {
    pub fn pass(id: &'static str, title: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            id,
            title,
            status: Status::Pass,
            code: None,
            message: message.into(),
            remedy: None,
            objects: Vec::new(),
        }
    }

    pub fn with_objects(mut self, objects: Vec<crate::rules::ObjectRef>) -> Finding {
        self.objects = objects;
        self
    }

    pub fn fail(
        id: &'static str,
        title: &'static str,
        code: &'static str,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Finding {
        Finding {
            id,
            title,
            status: Status::Fail,
            code: Some(code),
            message: message.into(),
            remedy: Some(remedy.into()),
            objects: Vec::new(),
        }
    }

    pub fn warn(
        id: &'static str,
        title: &'static str,
        code: &'static str,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Finding {
        Finding {
            status: Status::Warn,
            ..Finding::fail(id, title, code, message, remedy)
        }
    }

    pub fn skip(id: &'static str, title: &'static str, reason: impl Into<String>) -> Finding {
        Finding {
            id,
            title,
            status: Status::Skip,
            code: None,
            message: reason.into(),
            remedy: None,
            objects: Vec::new(),
        }
    }
}

/// Checks whose failure stops an in-place upgrade but not a dump and
/// reload (`--method dump`): the physical layout the two clusters must
/// share, values stored as OIDs or in a changed binary format, the locale
/// template0 must match, the transfer itself, and indexes built under a
/// changed collation (a reload rebuilds them).
pub const DUMP_RELOAD_AVOIDS: &[&str] = &[
    "control-alignment",
    "control-block-size",
    "control-segment-size",
    "control-wal-block-size",
    "control-wal-segment-size",
    "control-name-length",
    "control-index-columns",
    "control-toast-chunk",
    "control-large-object-chunk",
    "control-data-checksums",
    "char-signedness",
    "transfer-mode",
    "old-reg-types",
    "old-aclitem-columns",
    "template0-locale",
    "new-collation-versions",
    "new-unicode-version",
];

impl Finding {
    /// This finding for a run with the given method: with dump and reload
    /// a failure it does not care about becomes a warning; for an in-place
    /// run such a failure's remedy names the way around it.
    pub fn for_method(mut self, dump_reload: bool) -> Finding {
        if !DUMP_RELOAD_AVOIDS.contains(&self.id) || self.status == Status::Pass {
            return self;
        }
        if dump_reload {
            if self.status == Status::Fail {
                self.status = Status::Warn;
            }
            self.message
                .push_str(" (no obstacle to --method dump, which reloads every row)");
        } else if self.status == Status::Fail {
            let way = "or upgrade by dump and reload instead: pg-migrate --method dump (slower: every row is copied)";
            self.remedy = Some(match self.remedy.take() {
                Some(r) => format!("{r}; {way}"),
                None => way.to_string(),
            });
        }
        self
    }
}
