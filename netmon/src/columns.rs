//! The ss-style column model every netmon table is printed with: cells are written once into
//! one buffer, every column is measured over all rows, then lines are printed aligned.
//!
//! As in ss (`misc/ss.c`, `struct column`): each column has an alignment and a delimiter
//! printed before it (`""` glues it to the previous one, which is how ss's right-aligned
//! `Local Address` half meets its left-aligned `:Port` half on the colon), a printed header
//! counts in the width, and hidden columns are skipped. Unlike ss, lines carry no trailing blanks. A `Free`
//! column is neither measured nor padded: ss's second line of `-i`/`-m` goes there.

use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
    /// Printed as it is, after everything else: not measured, not padded.
    Free,
}

#[derive(Clone, Debug)]
pub struct Column {
    pub header: &'static str,
    pub align: Align,
    /// Printed before the cell (and the header); `""` glues the column to the previous one.
    pub delim: &'static str,
    pub hidden: bool,
    /// The narrowest the column gets (ss prints its queues with `%-6d`).
    pub min: usize,
}

impl Column {
    pub fn left(header: &'static str) -> Self {
        Self {
            header,
            align: Align::Left,
            delim: " ",
            hidden: false,
            min: 0,
        }
    }

    pub fn right(header: &'static str) -> Self {
        Self {
            align: Align::Right,
            ..Self::left(header)
        }
    }

    pub fn free() -> Self {
        Self {
            align: Align::Free,
            delim: "",
            ..Self::left("")
        }
    }

    /// The same column, glued to the previous one.
    pub fn glued(self) -> Self {
        Self { delim: "", ..self }
    }

    pub fn hidden_if(self, hidden: bool) -> Self {
        Self { hidden, ..self }
    }

    pub fn min_width(self, min: usize) -> Self {
        Self { min, ..self }
    }
}

/// A table being filled: write a cell's text with [`Grid::cell`] (or into [`Grid::buf`] and
/// then [`Grid::end_cell`]), one row after another, then [`Grid::print`].
pub struct Grid {
    columns: Vec<Column>,
    text: String,
    /// End offset in `text` of every cell, row after row.
    ends: Vec<u32>,
}

impl Grid {
    pub fn new(columns: Vec<Column>) -> Self {
        Self::with_capacity(columns, 0)
    }

    /// `rows` rows expected (for the buffers' first allocation).
    pub fn with_capacity(columns: Vec<Column>, rows: usize) -> Self {
        let n = columns.len();
        Self {
            columns,
            text: String::with_capacity(rows * 16 * n),
            ends: Vec::with_capacity(rows * n),
        }
    }

    /// The buffer the current cell is written to.
    pub fn buf(&mut self) -> &mut String {
        &mut self.text
    }

    /// Ends the current cell (and the row, after its last column).
    pub fn end_cell(&mut self) {
        self.ends.push(self.text.len() as u32);
    }

    pub fn cell(&mut self, s: &str) {
        self.text.push_str(s);
        self.end_cell();
    }

    pub fn rows(&self) -> usize {
        self.ends.len() / self.columns.len().max(1)
    }

    fn cells(&self, row: usize) -> impl Iterator<Item = &str> {
        let n = self.columns.len();
        let start = if row == 0 {
            0
        } else {
            self.ends[row * n - 1] as usize
        };
        let ends = &self.ends[row * n..row * n + n];
        let mut from = start;
        ends.iter().map(move |&end| {
            let s = &self.text[from..end as usize];
            from = end as usize;
            s
        })
    }

    /// Prints the header (if `header`) and every row.
    pub fn print(&self, out: &mut impl Write, header: bool) -> io::Result<()> {
        assert!(
            self.ends.len().is_multiple_of(self.columns.len().max(1)),
            "a row of the table is incomplete"
        );
        // A header counts only when printed, as in ss (`ss -tanH` sizes addresses by content).
        let mut width: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.min.max(if header { c.header.len() } else { 0 }))
            .collect();
        for row in 0..self.rows() {
            for (w, cell) in width.iter_mut().zip(self.cells(row)) {
                *w = (*w).max(cell.len());
            }
        }
        let mut line = String::with_capacity(256);
        let mut emit = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
            line.clear();
            let mut free = "";
            for ((c, w), cell) in self.columns.iter().zip(&width).zip(cells) {
                if c.hidden {
                    continue;
                }
                match c.align {
                    Align::Free => free = cell,
                    Align::Left => {
                        line.push_str(c.delim);
                        line.push_str(cell);
                        pad(&mut line, w - cell.len());
                    }
                    Align::Right => {
                        line.push_str(c.delim);
                        pad(&mut line, w - cell.len());
                        line.push_str(cell);
                    }
                }
            }
            let kept = line.trim_end_matches(' ').len();
            line.truncate(kept);
            line.push_str(free);
            line.push('\n');
            // The first column's delimiter is not printed.
            let skip = self
                .columns
                .iter()
                .find(|c| !c.hidden && c.align != Align::Free)
                .map_or(0, |c| c.delim.len());
            out.write_all(&line.as_bytes()[skip.min(line.len() - 1)..])
        };
        if header {
            let headers: Vec<&str> = self.columns.iter().map(|c| c.header).collect();
            emit(out, &mut headers.into_iter())?;
        }
        for row in 0..self.rows() {
            emit(out, &mut self.cells(row))?;
        }
        Ok(())
    }
}

fn pad(line: &mut String, n: usize) {
    const SPACES: &str = "                                                                ";
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        line.push_str(&SPACES[..k]);
        n -= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_glue_hide_and_trim() {
        let mut g = Grid::new(vec![
            Column::left("State").hidden_if(false),
            Column::left("Q"),
            Column::right("Local Address"),
            Column::left(":Port").glued(),
            Column::left("Hidden").hidden_if(true),
            Column::left("Process").glued(),
            Column::free(),
        ]);
        for cells in [
            ["LISTEN", "0", "127.0.0.1", ":22", "x", "", ""],
            [
                "ESTAB",
                "12",
                "[::1]",
                ":50264",
                "x",
                " ino:1",
                "\n\t rtt:1",
            ],
        ] {
            for c in cells {
                g.cell(c);
            }
        }
        let mut out = Vec::new();
        g.print(&mut out, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "State  Q  Local Address:Port Process\n\
             LISTEN 0      127.0.0.1:22\n\
             ESTAB  12         [::1]:50264 ino:1\n\t rtt:1\n"
        );
        let mut out = Vec::new();
        g.print(&mut out, false).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("LISTEN 0  127.0.0.1:22\n")
        );
    }
}
