//! The ss-style column model every netmon table is printed with: cells are measured as they
//! are written and held compactly in one buffer, every column's width is the widest of all
//! rows (or, for the socket table, of the rows of each ~4 MiB batch of text and those before
//! it, as ss does), then lines are printed aligned.
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
///
/// Rows are held coded against the row above, cell by cell (what a cell shares with its
/// column's previous cell, then the rest): a socket table's rows repeat most of the row
/// above (states, queues, peers, the namespace; addresses and ports differ in their last
/// digits), so a batch of 64k `-tan --all-netns` rows is held in 0.84 MB, not as its 3.35 MB
/// of text with an end offset (4 bytes) per cell. A row is coded once it ends, against the
/// previous row kept whole, and printed by rewriting only what changed in a line whose
/// columns stay where the widths put them: coding and printing cost about what copying the
/// text did.
pub struct Grid {
    columns: Vec<Column>,
    /// The row being written: its ended cells, then the cell being written.
    row: String,
    /// Where each ended cell of `row` ends.
    ends: Vec<usize>,
    /// The previous row of the batch (empty for its first) and where its cells end: what the
    /// next row is coded against.
    prev: Vec<u8>,
    prev_ends: Vec<usize>,
    /// Every row held, each cell coded by [`put_cell`].
    coded: Vec<u8>,
    /// Rows held.
    held: usize,
    /// Bytes the cells held take as text: where ss ends a batch.
    text_len: usize,
    /// Every column's width over the cells held and the batches printed before
    /// ([`Grid::print_batch_if_over`]): as ss keeps its columns' `max_len` from one rendered
    /// batch to the next.
    width: Vec<usize>,
    /// A batch went out already, and the header with it.
    printed: bool,
}

/// ss renders what it has buffered once its buffer holds `BUF_CHUNKS_MAX` (5) chunks of
/// `BUF_CHUNK` (1 MiB) at the end of a line (misc/ss.c `field_next()`), i.e. after about 4 MiB of
/// fields: at 100k+ sockets it prints in batches, each padded to the widths measured so far. A
/// table printed with [`Grid::print_batch_if_over`] at this size does the same, and holds no
/// more than a batch of cells (coded, a fraction of that text) at once.
pub const SS_BATCH_BYTES: usize = 4 << 20;

/// A cell's code: what it shares with the column's previous cell (`prefix` bytes) and the
/// length of the rest, in one byte when both are short (`prefix` < 16 in the high nibble,
/// `rest` < 15 in the low one), else 0xFF and both as LEB128; then the rest's bytes.
#[inline]
fn put_cell(coded: &mut Vec<u8>, prefix: usize, rest: &[u8]) {
    if prefix < 16 && rest.len() < 15 {
        coded.push((prefix << 4 | rest.len()) as u8);
    } else {
        coded.push(0xFF);
        put_leb128(coded, prefix);
        put_leb128(coded, rest.len());
    }
    if !rest.is_empty() {
        coded.extend_from_slice(rest);
    }
}

fn put_leb128(coded: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        coded.push(n as u8 | 0x80);
        n >>= 7;
    }
    coded.push(n as u8);
}

fn leb128(coded: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0, 0);
    loop {
        let b = coded[*at];
        *at += 1;
        n |= usize::from(b & 0x7F) << shift;
        if b < 0x80 {
            return n;
        }
        shift += 7;
    }
}

/// The cell coded at `at` (advanced past it): how many bytes it shares with the column's
/// previous cell, and the rest.
#[inline]
fn take_cell<'a>(coded: &'a [u8], at: &mut usize) -> (usize, &'a [u8]) {
    let b = coded[*at];
    *at += 1;
    let (prefix, rest) = if b == 0xFF {
        let prefix = leb128(coded, at);
        (prefix, leb128(coded, at))
    } else {
        (usize::from(b >> 4), usize::from(b & 15))
    };
    let rest = &coded[*at..*at + rest];
    *at += rest.len();
    (prefix, rest)
}

/// How many of their first `n` bytes `a` and `b` have in common, eight at a time while both
/// have eight more: `a` and `b` run on past the two cells compared (to the ends of their
/// rows), so that short cells are compared in one step too.
#[inline]
fn common_prefix(a: &[u8], b: &[u8], n: usize) -> usize {
    let mut i = 0;
    while i < n && i + 8 <= a.len() && i + 8 <= b.len() {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != y {
            return (i + ((x ^ y).trailing_zeros() / 8) as usize).min(n);
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i.min(n)
}

/// Bytes kept after the previous row's text, so that its cells compare eight bytes at a time
/// up to their ends.
const SLACK: [u8; 8] = [0; 8];

/// Where a column's cell goes when printed: padded at a fixed place of the line (`at`: after
/// its delimiter; `width`), or, hidden or free, kept aside.
#[derive(Clone, Copy)]
enum Place {
    Left { at: usize },
    Right { at: usize, width: usize },
    Aside,
}

impl Grid {
    pub fn new(columns: Vec<Column>) -> Self {
        Self::with_capacity(columns, 0)
    }

    /// `rows` rows expected (for the buffer's first allocation).
    pub fn with_capacity(columns: Vec<Column>, rows: usize) -> Self {
        let n = columns.len();
        // A batched table never holds more than a batch (and a row) of cells.
        let rows = rows.min(SS_BATCH_BYTES / 16 / n.max(1) + 1);
        Self {
            row: String::new(),
            ends: Vec::with_capacity(n),
            prev: Vec::new(),
            prev_ends: Vec::with_capacity(n),
            coded: Vec::with_capacity(rows * 4 * n),
            held: 0,
            text_len: 0,
            width: vec![0; n],
            columns,
            printed: false,
        }
    }

    /// A table to be printed with [`Grid::print_batch_if_over`] at [`SS_BATCH_BYTES`].
    pub fn batched(columns: Vec<Column>) -> Self {
        Self::with_capacity(columns, 0)
    }

    /// The buffer the current cell is written to (after the row's ended cells: append only).
    pub fn buf(&mut self) -> &mut String {
        &mut self.row
    }

    /// Ends the current cell (and the row, after its last column).
    #[inline]
    pub fn end_cell(&mut self) {
        self.ends.push(self.row.len());
        if self.ends.len() >= self.columns.len() {
            self.end_row();
        }
    }

    /// Codes the row written against the previous one, measures it and keeps it as the
    /// previous one.
    fn end_row(&mut self) {
        let row = self.row.as_bytes();
        self.coded.reserve(row.len() + 2 * self.ends.len());
        let (mut start, mut prev_start) = (0, 0);
        for (c, &end) in self.ends.iter().enumerate() {
            let cell = &row[start..end];
            // The batch's first row is coded against empty cells.
            let prev_end = self.prev_ends.get(c).copied().unwrap_or(prev_start);
            let n = cell.len().min(prev_end - prev_start);
            let prefix = common_prefix(&row[start..], &self.prev[prev_start..], n);
            put_cell(&mut self.coded, prefix, &cell[prefix..]);
            // Where the columns are empty (no columns): nothing to measure or hold.
            if let Some(width) = self.width.get_mut(c) {
                *width = (*width).max(cell.len());
            }
            (start, prev_start) = (end, prev_end);
        }
        self.text_len += row.len();
        self.held += 1;
        self.prev.clear();
        self.prev.extend_from_slice(row);
        self.prev.extend_from_slice(&SLACK);
        self.prev_ends.clone_from(&self.ends);
        self.row.clear();
        self.ends.clear();
    }

    pub fn cell(&mut self, s: &str) {
        self.row.push_str(s);
        self.end_cell();
    }

    pub fn rows(&self) -> usize {
        self.held
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
        if self.text_len < batch {
            return Ok(());
        }
        self.width = self.widths(header);
        self.print_with(out, header, &self.width)?;
        self.coded.clear();
        self.prev.clear();
        self.prev_ends.clear();
        self.held = 0;
        self.text_len = 0;
        self.printed = true;
        Ok(())
    }

    /// Every column's width over the rows held and the batches printed before.
    fn widths(&self, header: bool) -> Vec<usize> {
        // A header counts only when printed, as in ss (`ss -tanH` sizes addresses by content).
        self.columns
            .iter()
            .zip(&self.width)
            .map(|(c, &w)| w.max(c.min).max(if header { c.header.len() } else { 0 }))
            .collect()
    }

    /// Prints the header (if `header`, and no batch went out before) and every row held.
    pub fn print(&self, out: &mut impl Write, header: bool) -> io::Result<()> {
        self.print_with(out, header, &self.widths(header))
    }

    /// The first visible column's delimiter, which is not printed.
    fn skip(&self) -> usize {
        self.columns
            .iter()
            .find(|c| !c.hidden && c.align != Align::Free)
            .map_or(0, |c| c.delim.len())
    }

    /// Prints a line of `cells`, one for each column (the header).
    fn print_line(&self, out: &mut impl Write, width: &[usize], cells: &[&[u8]]) -> io::Result<()> {
        let mut line = Vec::with_capacity(256);
        let mut free: &[u8] = &[];
        for ((c, &w), &cell) in self.columns.iter().zip(width).zip(cells) {
            if c.hidden {
                continue;
            }
            match c.align {
                Align::Free => free = cell,
                Align::Left => {
                    line.extend_from_slice(c.delim.as_bytes());
                    line.extend_from_slice(cell);
                    pad(&mut line, w - cell.len());
                }
                Align::Right => {
                    line.extend_from_slice(c.delim.as_bytes());
                    pad(&mut line, w - cell.len());
                    line.extend_from_slice(cell);
                }
            }
        }
        while line.last() == Some(&b' ') {
            line.pop();
        }
        line.extend_from_slice(free);
        line.push(b'\n');
        out.write_all(&line[self.skip().min(line.len() - 1)..])
    }

    fn print_with(&self, out: &mut impl Write, header: bool, width: &[usize]) -> io::Result<()> {
        assert!(self.ends.is_empty(), "a row of the table is incomplete");
        if header && !self.printed {
            let headers: Vec<&[u8]> = self.columns.iter().map(|c| c.header.as_bytes()).collect();
            self.print_line(out, width, &headers)?;
        }
        // The line as the widths lay it out: each visible column's delimiter, then its
        // width of blanks that its cells are written over.
        let mut line = Vec::with_capacity(256);
        let mut free_column = None;
        let places: Vec<Place> = self
            .columns
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, &width))| {
                if c.hidden || c.align == Align::Free {
                    if !c.hidden {
                        free_column = Some(i);
                    }
                    return Place::Aside;
                }
                line.extend_from_slice(c.delim.as_bytes());
                let at = line.len();
                pad(&mut line, width);
                match c.align {
                    Align::Right => Place::Right { at, width },
                    _ => Place::Left { at },
                }
            })
            .collect();
        let skip = self.skip();
        // Each column's current cell: its length (in the line), or itself (kept aside).
        let mut len = vec![0; self.columns.len()];
        let mut aside: Vec<Vec<u8>> = vec![Vec::new(); self.columns.len()];
        let mut at = 0;
        for _ in 0..self.held {
            for (c, place) in places.iter().enumerate() {
                let (prefix, rest) = take_cell(&self.coded, &mut at);
                let new = prefix + rest.len();
                if new == len[c] && rest.is_empty() {
                    // The cell above, where it is.
                    continue;
                }
                match *place {
                    Place::Aside => {
                        aside[c].truncate(prefix);
                        aside[c].extend_from_slice(rest);
                    }
                    Place::Left { at, .. } => {
                        line[at + prefix..at + new].copy_from_slice(rest);
                        if new < len[c] {
                            line[at + new..at + len[c]].fill(b' ');
                        }
                    }
                    Place::Right { at, width } => {
                        let end = at + width;
                        let old = len[c];
                        if new != old {
                            // The shared start moves with the cell's first byte.
                            line.copy_within(end - old..end - old + prefix, end - new);
                            if new < old {
                                line[end - old..end - new].fill(b' ');
                            }
                        }
                        line[end - new + prefix..end].copy_from_slice(rest);
                    }
                }
                len[c] = new;
            }
            // Lines carry no trailing blanks; the free column follows.
            let mut end = line.len();
            while end > 0 && line[end - 1] == b' ' {
                end -= 1;
            }
            let free = free_column.map_or(&[][..], |c| &aside[c][..]);
            if end < skip {
                // Blank up to its first delimiter: as built whole.
                let mut whole = line[..end].to_vec();
                whole.extend_from_slice(free);
                whole.push(b'\n');
                out.write_all(&whole[skip.min(whole.len() - 1)..])?;
            } else if !free.is_empty() {
                out.write_all(&line[skip..end])?;
                out.write_all(free)?;
                out.write_all(b"\n")?;
            } else if end < line.len() {
                // The newline over the first trailing blank (one write), then the blank back.
                line[end] = b'\n';
                let written = out.write_all(&line[skip..=end]);
                line[end] = b' ';
                written?;
            } else {
                line.push(b'\n');
                let written = out.write_all(&line[skip..]);
                line.pop();
                written?;
            }
        }
        Ok(())
    }
}

fn pad(line: &mut Vec<u8>, n: usize) {
    const SPACES: &[u8] = b"                                                                ";
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        line.extend_from_slice(&SPACES[..k]);
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

    #[test]
    fn cells_held_coded_print_as_written() {
        // Prefixes and rests past the one-byte code (16, 15), empty cells, a rest that splits
        // a two-byte character ("é" and "è" share their first byte), a run of equal cells.
        let long = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:";
        let rows: Vec<[String; 3]> = vec![
            ["é".into(), format!("[{long}1]"), String::new()],
            ["è".into(), format!("[{long}2]"), "x".repeat(300)],
            ["è".into(), format!("[{long}2]"), "x".repeat(299)],
            [String::new(), "10.0.0.1".into(), "\n\t rtt:1".into()],
            ["é".into(), "10.0.0.10".into(), String::new()],
        ];
        let mut g = Grid::new(vec![
            Column::left("A"),
            Column::right("Address"),
            Column::free(),
        ]);
        for row in &rows {
            for cell in row {
                g.cell(cell);
            }
        }
        let mut out = Vec::new();
        g.print(&mut out, false).unwrap();
        let width = rows.iter().map(|r| r[1].len()).max().unwrap();
        let expected: String = rows
            .iter()
            .map(|r| {
                // Widths count bytes, as the cells' lengths do.
                let a = r[0].clone() + &" ".repeat(2 - r[0].len());
                let address = " ".repeat(width - r[1].len()) + &r[1];
                format!("{a} {address}{}\n", r[2])
            })
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn lines_rewritten_in_place_print_as_lines_built_whole() {
        // Every kind of column, cells that grow and shrink against the row above (right-
        // aligned ones move), long ones (coded past one byte), blanks inside and at the end
        // of cells, rows blank up to the first delimiter; printed in batches of any size.
        let columns = || {
            vec![
                Column::left("A").hidden_if(false),
                Column::right("B"),
                Column::left(":C").glued(),
                Column::left("Hidden").hidden_if(true),
                Column::right("D").min_width(3),
                Column::left("E").glued(),
                Column::free(),
            ]
        };
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = b"ab1. :";
        let mut rows: Vec<Vec<String>> = Vec::new();
        for i in 0..3000 {
            let row = (0..7)
                .map(|c| {
                    let above = rows.last().map_or("", |r: &Vec<String>| r[c].as_str());
                    match next(5) {
                        0 => above.to_string(),
                        1 => String::new(),
                        2 => above[..next(above.len() as u64 + 1) as usize].to_string(),
                        _ => {
                            let keep = next(above.len() as u64 + 1) as usize;
                            let len = if i % 97 == 0 { 40 } else { next(6) } as usize;
                            let tail: String = (0..len)
                                .map(|_| alphabet[next(alphabet.len() as u64) as usize] as char)
                                .collect();
                            above[..keep].to_string() + &tail
                        }
                    }
                })
                .collect();
            rows.push(row);
        }
        for batch in [usize::MAX, 5_000, 97] {
            for header in [true, false] {
                let mut g = Grid::new(columns());
                let mut got = Vec::new();
                let mut expected = Vec::new();
                let mut pending: Vec<&Vec<String>> = Vec::new();
                for row in &rows {
                    for cell in row {
                        g.cell(cell);
                    }
                    pending.push(row);
                    let printed = g.printed;
                    g.print_batch_if_over(&mut got, header, batch).unwrap();
                    if g.held == 0 {
                        // The same batch, each line built whole at the batch's widths.
                        let width = g.width.clone();
                        if header && !printed {
                            let h: Vec<&[u8]> =
                                g.columns.iter().map(|c| c.header.as_bytes()).collect();
                            g.print_line(&mut expected, &width, &h).unwrap();
                        }
                        for r in pending.drain(..) {
                            let cells: Vec<&[u8]> = r.iter().map(|c| c.as_bytes()).collect();
                            g.print_line(&mut expected, &width, &cells).unwrap();
                        }
                    }
                }
                let width = g.widths(header);
                g.print(&mut got, header).unwrap();
                if header && !g.printed {
                    let h: Vec<&[u8]> = g.columns.iter().map(|c| c.header.as_bytes()).collect();
                    g.print_line(&mut expected, &width, &h).unwrap();
                }
                for r in pending.drain(..) {
                    let cells: Vec<&[u8]> = r.iter().map(|c| c.as_bytes()).collect();
                    g.print_line(&mut expected, &width, &cells).unwrap();
                }
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "batch {batch}, header {header}"
                );
            }
        }
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
