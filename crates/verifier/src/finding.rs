use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub objects: Vec<crate::catalogue::ObjectRef>,
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

    pub fn with_objects(mut self, objects: Vec<crate::catalogue::ObjectRef>) -> Finding {
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
