//! Diagnostics: what is wrong in which policy file, and where.

use std::fmt;
use std::ops::Range;

/// One finding about a policy source, an error or a warning, with its position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// The file (or in-memory source name) the finding is about.
    pub file: String,
    /// 1-based line; 0 when the finding is about the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column, counted in characters; 0 when `line` is 0.
    pub col: usize,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl Diagnostic {
    /// A finding about a whole file rather than a position in it.
    pub(crate) fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Every error found while building a policy. `Display` prints one diagnostic per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", DisplayLines(.0))]
pub struct PolicyErrors(pub Vec<Diagnostic>);

/// Formats diagnostics one per line, without a trailing newline.
struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diag) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diag}")?;
        }
        Ok(())
    }
}

/// 1-based line and character column of a byte offset in `text`.
///
/// Any offset is safe: offsets past the end are clamped, and one inside a
/// multi-byte character does not panic.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // Count UTF-8 lead bytes, i.e. characters, between the line start and the offset.
    let col = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, col)
}

/// Collects the errors and warnings of one source, turning byte spans into positions.
#[derive(Debug)]
pub(crate) struct Reporter<'a> {
    /// Source name, copied into every diagnostic.
    pub file: &'a str,
    /// Source text, for span to line:col conversion.
    text: &'a str,
    /// Errors found so far.
    pub errors: Vec<Diagnostic>,
    /// Warnings found so far.
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    /// A reporter for the source `file` whose text is `text`.
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Reporter {
            file,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The source text under `span`, or "" if the span is out of range.
    pub fn text(&self, span: &Range<usize>) -> &'a str {
        self.text.get(span.clone()).unwrap_or("")
    }

    /// 1-based line and column of the start of `span`.
    pub fn position(&self, span: &Range<usize>) -> (usize, usize) {
        line_col(self.text, span.start)
    }

    /// A diagnostic at the start of `span`.
    pub fn diagnostic(&self, span: &Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(span);
        Diagnostic {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Records an error at the start of `span`.
    pub fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let diag = self.diagnostic(span, message);
        self.errors.push(diag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "ab\nçd=1\r\n\nx";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // 'ç' is two bytes but one column.
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 4), (2, 2));
        assert_eq!(line_col(text, 11), (4, 1));
        assert_eq!(line_col(text, 999), (4, 2));
    }

    #[test]
    fn display_is_file_line_col_message() {
        let d = Diagnostic {
            file: "p.toml".into(),
            line: 3,
            col: 7,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "p.toml:3:7: bad");
        assert_eq!(
            Diagnostic::whole_file("p.toml", "unreadable").to_string(),
            "p.toml: unreadable"
        );
        let errs = PolicyErrors(vec![d.clone(), d]);
        assert_eq!(errs.to_string(), "p.toml:3:7: bad\np.toml:3:7: bad");
    }
}
