//! Policy errors: each says which file, where in it, and what to change.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A position in a policy file, with the text of its line for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub source_line: String,
}

impl Location {
    /// Location of byte offset `offset` in `text`.
    pub fn at(path: PathBuf, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let source_line = text[line_start..].lines().next().unwrap_or("").to_owned();
        Location { path, line, column, source_line }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot open policy {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("refusing policy {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("cannot read policy {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("policy {path} is {size} bytes, more than the limit of {max}")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

impl PolicyError {
    /// The error as a compiler would print it: `path:line:col: message`,
    /// then the source line and a caret under the spot.
    pub fn render(&self) -> String {
        match self {
            PolicyError::Invalid { location, message } => {
                let pad = " ".repeat(location.column.saturating_sub(1));
                format!("{location}: {message}\n    {}\n    {pad}^", location.source_line.replace('\t', " "))
            }
            other => other.to_string(),
        }
    }
}

/// Every error a policy check found (never none), in file order: the main
/// file first, then the drop-ins, each by line and column.
#[derive(Debug)]
pub struct PolicyErrors {
    errors: Vec<PolicyError>,
}

impl PolicyErrors {
    /// `None` when there is nothing to report.
    pub fn new(errors: Vec<PolicyError>) -> Option<PolicyErrors> {
        (!errors.is_empty()).then_some(PolicyErrors { errors })
    }

    /// `errors` must not be empty (callers check).
    pub(crate) fn from_vec(errors: Vec<PolicyError>) -> PolicyErrors {
        debug_assert!(!errors.is_empty());
        PolicyErrors { errors }
    }

    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Never true; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Each error as [`PolicyError::render`] prints it, one after another.
    pub fn render(&self) -> String {
        self.errors.iter().map(PolicyError::render).collect::<Vec<_>>().join("\n")
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        PolicyErrors { errors: vec![e] }
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

/// The first error, and how many more there are: one line, for status
/// lines and logs; [`PolicyErrors::render`] gives them all.
impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(first) = self.errors.first() else { return Ok(()) };
        write!(f, "{first}")?;
        match self.errors.len() {
            1 => Ok(()),
            2 => write!(f, " (and 1 more error)"),
            n => write!(f, " (and {} more errors)", n - 1),
        }
    }
}

impl std::error::Error for PolicyErrors {}
