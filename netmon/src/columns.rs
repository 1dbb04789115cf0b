//! The ss-style column model every netmon table is printed with: cells are written once into
//! one buffer, every column is measured over all rows (or, for the socket table, over the rows
//! of each ~4 MiB batch and those before it, as ss does), then lines are printed aligned.
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
    /// Widths measured over the batches already printed ([`Grid::print_batch_if_over`]): as
    /// ss keeps its columns' `max_len` from one rendered batch to the next.
    carried: Vec<usize>,
    /// A batch went out already, and the header with it.
    printed: bool,
}

/// ss renders what it has buffered once its buffer holds `BUF_CHUNKS_MAX` (5) chunks of
/// `BUF_CHUNK` (1 MiB) at the end of a line (misc/ss.c `field_next()`), i.e. after about 4 MiB of
/// fields: at 100k+ sockets it prints in batches, each padded to the widths measured so far. A
/// table printed with [`Grid::print_batch_if_over`] at this size does the same, and holds no
/// more than about that much rendered text at once.
pub const SS_BATCH_BYTES: usize = 4 << 20;

impl Grid {
    pub fn new(columns: Vec<Column>) -> Self {
        Self::with_capacity(columns, 0)
    }

    /// `rows` rows expected (for the buffers' first allocation).
    pub fn with_capacity(columns: Vec<Column>, rows: usize) -> Self {
        let n = columns.len();
        // A batched table never holds more than a batch (and a row) of text.
        let rows = rows.min(SS_BATCH_BYTES / 16 / n.max(1) + 1);
        Self {
            carried: vec![0; n],
            columns,
            text: String::with_capacity(rows * 16 * n),
            ends: Vec::with_capacity(rows * n),
            printed: false,
        }
    }

    /// A table to be printed with [`Grid::print_batch_if_over`] at [`SS_BATCH_BYTES`]: its
    /// buffers are sized for a batch once, not grown by doubling past it.
    pub fn batched(columns: Vec<Column>) -> Self {
        let mut grid = Self::with_capacity(columns, 0);
        // A batch ends after the row that reaches the size: room for that row too (growing
        // by doubling would hold 4 MiB and 8 MiB at once for the row that crosses).
        grid.text.reserve_exact(SS_BATCH_BYTES + (64 << 10));
        grid
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

    /// At the end of a row: if the rows held reach `batch` bytes of text, prints them as
    /// [`Grid::print`] would (the header only with the first batch) and lets them go, keeping
    /// their widths as the least for the rows that follow.
    pub fn print_batch_if_over(
        &mut self,
        out: &mut impl Write,
        header: bool,
        batch: usize,
    ) -> io::Result<()> {
        if self.text.len() < batch {
            return Ok(());
        }
        self.carried = self.widths(header);
        // Measured once: a pass over every cell of a batch costs as much as printing it.
        self.print_with(out, header, &self.carried)?;
        self.text.clear();
        self.ends.clear();
        self.printed = true;
        Ok(())
    }

    /// Every column's width over the rows held and the batches printed before.
    fn widths(&self, header: bool) -> Vec<usize> {
        // A header counts only when printed, as in ss (`ss -tanH` sizes addresses by content).
        let mut width: Vec<usize> = self
            .columns
            .iter()
            .zip(&self.carried)
            .map(|(c, &w)| w.max(c.min).max(if header { c.header.len() } else { 0 }))
            .collect();
        for row in 0..self.rows() {
            for (w, cell) in width.iter_mut().zip(self.cells(row)) {
                *w = (*w).max(cell.len());
            }
        }
        width
    }

    /// Prints the header (if `header`, and no batch went out before) and every row held.
    pub fn print(&self, out: &mut impl Write, header: bool) -> io::Result<()> {
        self.print_with(out, header, &self.widths(header))
    }

    fn print_with(&self, out: &mut impl Write, header: bool, width: &[usize]) -> io::Result<()> {
        assert!(
            self.ends.len().is_multiple_of(self.columns.len().max(1)),
            "a row of the table is incomplete"
        );
        let mut line = String::with_capacity(256);
        let mut emit = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
            line.clear();
            let mut free = "";
            for ((c, w), cell) in self.columns.iter().zip(width).zip(cells) {
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
        if header && !self.printed {
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

    fn batched(rows: &[[&str; 3]], batch: usize, header: bool) -> String {
        let mut g = Grid::new(vec![
            Column::left("State"),
            Column::right("Local Address"),
            Column::left(":Port").glued(),
        ]);
        let mut out = Vec::new();
        for row in rows {
            for c in row {
                g.cell(c);
            }
            g.print_batch_if_over(&mut out, header, batch).unwrap();
        }
        g.print(&mut out, header).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn batches_keep_the_widths_measured_so_far_as_ss_does() {
        let rows = [
            ["ESTAB", "10.0.0.1", ":80"],
            ["ESTAB", "10.0.0.2", ":80"],
            ["LISTEN", "192.168.100.100", ":8080"],
            ["ESTAB", "10.0.0.3", ":80"],
        ];
        // One batch (the tests' tables, below 4 MiB): every row at the widest row's widths.
        assert_eq!(
            batched(&rows, SS_BATCH_BYTES, true),
            batched(&rows, usize::MAX, true)
        );
        // A batch of two rows, then the rest: the first two as wide as they and the header
        // need, the rest at least as wide, the header once.
        assert_eq!(
            batched(&rows, 20, true),
            "State Local Address:Port\n\
             ESTAB      10.0.0.1:80\n\
             ESTAB      10.0.0.2:80\n\
             LISTEN 192.168.100.100:8080\n\
             ESTAB         10.0.0.3:80\n"
        );
        assert_eq!(
            batched(&rows, 20, false),
            "ESTAB 10.0.0.1:80\n\
             ESTAB 10.0.0.2:80\n\
             LISTEN 192.168.100.100:8080\n\
             ESTAB         10.0.0.3:80\n"
        );
    }
}
