//! The Markdown tables the benchmarks (`ingest-bench`, `command-bench`)
//! print and save: a header, its `|---|` line, then rows. An empty cell
//! is written as `| |`, so a row may leave columns blank.

use std::fmt;

/// A Markdown table, built row by row.
#[derive(Debug, Clone)]
pub struct Table(String);

impl Table {
    /// A table with these column headers.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Table {
        let mut t = Table(String::new());
        t.row(header);
        t.0.push_str(&"|---".repeat(header.len()));
        t.0.push_str("|\n");
        t
    }

    /// Appends one row.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> &mut Table {
        self.0.push('|');
        for c in cells {
            match c.as_ref() {
                "" => self.0.push_str(" |"),
                c => {
                    self.0.push(' ');
                    self.0.push_str(c);
                    self.0.push_str(" |");
                }
            }
        }
        self.0.push('\n');
        self
    }
}

/// The table's lines, each ending in a newline.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_under_a_header_with_blank_cells_kept_narrow() {
        let mut t = Table::new(&["path", "msg/s", "min", "max"]);
        t.row(&["direct", "10", "9", "11"]).row(&[
            "ratio".to_string(),
            "0.50".into(),
            String::new(),
            String::new(),
        ]);
        assert_eq!(
            t.to_string(),
            "| path | msg/s | min | max |\n|---|---|---|---|\n| direct | 10 | 9 | 11 |\n| ratio | 0.50 | | |\n"
        );
    }
}
