//! [`UnitError`], the one error type of unit validation, and byte offset → line:column mapping.

use std::fmt;
use std::path::PathBuf;

/// One problem in a unit file (or in an env file it references).
///
/// `line` and `column` are 1-based; `column` counts characters, not bytes.
/// Problems that have no position in a file (an unreadable directory or file) use line 0 and column 0,
/// and their [`Display`](fmt::Display) leaves the position out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    /// Dotted key path such as `process.kill_timeout`, or `""` when the problem concerns the whole file.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl UnitError {
    /// An error without a position in the file (IO problems).
    pub(crate) fn whole_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        UnitError {
            file: file.into(),
            line: 0,
            column: 0,
            key: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn at(
        file: impl Into<PathBuf>,
        pos: Pos,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        UnitError {
            file: file.into(),
            line: pos.line,
            column: pos.column,
            key: key.into(),
            message: message.into(),
            hint,
        }
    }

    pub(crate) fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        f.write_str(" ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnitError {}

/// A 1-based line and column (in characters) in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// The start of a file, where problems about missing sections are reported.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

impl Default for Pos {
    fn default() -> Self {
        Pos::START
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Maps byte offsets in a text to [`Pos`]itions.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// The position of byte `offset` in `text` (the text this index was built from).
    /// Offsets past the end map to the end; offsets inside a character map to that character.
    pub(crate) fn pos(&self, text: &str, offset: usize) -> Pos {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = text[start..offset]
            .chars()
            .filter(|&c| c != '\u{feff}')
            .count()
            + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions are 1-based and count characters, so non-ASCII text before an error does not shift the column.
    #[test]
    fn positions_count_characters() {
        let text = "a = 1\nb = \"é\" x\n\nlast";
        let idx = LineIndex::new(text);
        assert_eq!(idx.pos(text, 0), Pos { line: 1, column: 1 });
        assert_eq!(idx.pos(text, 4), Pos { line: 1, column: 5 });
        assert_eq!(idx.pos(text, 6), Pos { line: 2, column: 1 });
        let x = text.find('x').unwrap();
        assert_eq!(idx.pos(text, x), Pos { line: 2, column: 9 });
        // Inside the two-byte `é`: maps to the character itself.
        let e = text.find('é').unwrap();
        assert_eq!(idx.pos(text, e + 1), Pos { line: 2, column: 6 });
        assert_eq!(idx.pos(text, text.len() + 10), Pos { line: 4, column: 5 });
        let bom = "\u{feff}a = 1";
        assert_eq!(LineIndex::new(bom).pos(bom, 3), Pos { line: 1, column: 1 });
    }

    /// Display puts the position first, the key path second and the hint on its own indented line.
    #[test]
    fn display_format() {
        let e = UnitError::at(
            "units/web.toml",
            Pos {
                line: 7,
                column: 16,
            },
            "process.kill_timeout",
            "invalid duration \"5 secs\"",
            Some("write \"5s\"".into()),
        );
        assert_eq!(
            e.to_string(),
            "units/web.toml:7:16: process.kill_timeout: invalid duration \"5 secs\"\n  hint: write \"5s\""
        );
        let e = UnitError::whole_file("units", "cannot read directory");
        assert_eq!(e.to_string(), "units: cannot read directory");
    }
}
