//! How the data files reach the new cluster: one enum from the flags to
//! the transfer (the CLI reads it from `--link`, `--copy` …; the checks judge
//! what it asks of the filesystems; the transfer crate moves files by it).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferMode {
    /// Read and write every byte: the old cluster stays independent.
    Copy,
    /// A hard link: instant, but old and new then share the files.
    Link,
    /// A reflink (FICLONE): instant, the blocks shared copy-on-write, so
    /// either cluster's later writes leave the other's data alone.
    Clone,
    /// The kernel copies (`copy_file_range`), sparing the trip through
    /// user space; some filesystems share the blocks instead. Independent
    /// like a copy.
    CopyFileRange,
    /// Whole database directories moved into the new cluster, the catalog
    /// files exchanged; files it cannot move that way are linked.
    Swap,
}

impl TransferMode {
    /// The flag that asks for this mode.
    pub fn flag(self) -> &'static str {
        match self {
            TransferMode::Copy => "--copy",
            TransferMode::Link => "--link",
            TransferMode::Clone => "--clone",
            TransferMode::CopyFileRange => "--copy-file-range",
            TransferMode::Swap => "--swap",
        }
    }

    /// How a single file moves: swap renames directories, and a single
    /// file it links (a rename works wherever a hard link does).
    pub fn file_mode(self) -> TransferMode {
        match self {
            TransferMode::Swap => TransferMode::Link,
            mode => mode,
        }
    }

    /// The verb for messages ("could not link …").
    pub fn verb(self) -> &'static str {
        match self {
            TransferMode::Copy => "copy",
            TransferMode::CopyFileRange => "copy (copy_file_range)",
            TransferMode::Clone => "clone",
            TransferMode::Link => "link",
            TransferMode::Swap => "move",
        }
    }

    /// Whether old and new share their files afterwards (link, swap).
    pub fn shares_files(self) -> bool {
        matches!(self, TransferMode::Link | TransferMode::Swap)
    }
}
