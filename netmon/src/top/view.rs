//! Draws the `netmon top` screen with ratatui: header, state strip, grouped table,
//! recently-ended pane, key help or filter line, details popup; also a frame as plain text.

use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    buffer::Buffer,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
};

use super::{
    model::{Ended, Group, GroupBy, SortKey},
    ui::{Focus, Mode, Ui},
};
use crate::output::duration;

/// Styles, or none of them when colour is off (NO_COLOR, not a terminal). Reverse video
/// marks the selection either way: it is not a colour.
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    fn bad(&self) -> Style {
        self.fg(Color::Red)
    }
    fn alert(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }
    fn heading(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A count per second of `window_ns`: `0`, `2.5`, `120`, `12.3k`.
pub fn rate(count: u64, window_ns: u64) -> String {
    if count == 0 {
        return "0".into();
    }
    let r = count as f64 / secs(window_ns.max(1));
    match r {
        r if r < 10.0 => format!("{r:.1}"),
        r if r < 10_000.0 => format!("{r:.0}"),
        r if r < 10_000_000.0 => format!("{:.1}k", r / 1e3),
        r => format!("{:.1}M", r / 1e6),
    }
}

/// A count in at most 6 characters.
pub fn count(n: u64) -> String {
    match n {
        0..100_000 => n.to_string(),
        100_000..100_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn opt_duration(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), duration)
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, ui: &Ui) {
    let theme = Theme { color: ui.color };
    let area = f.area();
    let footer = if ui.editing.is_some() && ui.filter_problem.is_some() {
        3
    } else {
        1
    };
    let head_lines = header(ui, &theme);
    let [head, strip, main, footer_area] = Layout::vertical([
        Constraint::Length(head_lines.len() as u16),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(footer),
    ])
    .areas(area);
    let [groups_area, recent_area] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(main);
    f.render_widget(Paragraph::new(head_lines), head);
    f.render_widget(Paragraph::new(state_strip(ui, &theme)), strip);
    draw_groups(f, ui, &theme, groups_area);
    draw_recent(f, ui, &theme, recent_area);
    f.render_widget(Paragraph::new(footer_lines(ui, &theme)), footer_area);
    if ui.details {
        draw_details(f, ui, &theme, area);
    }
}

fn header(ui: &Ui, theme: &Theme) -> Vec<Line<'static>> {
    let mut first = vec![Span::styled("netmon top", theme.title())];
    let Some(m) = &ui.model else {
        first.push(Span::raw(format!("  {}", ui.source)));
        let second = match &ui.error {
            Some(e) => Line::from(Span::styled(e.clone(), theme.alert())),
            None => Line::from("waiting for the first numbers..."),
        };
        return vec![Line::from(first), second];
    };
    let scope = m
        .netns
        .map_or_else(|| "all netns".to_owned(), |n| format!("netns {n}"));
    let filter = if ui.filter.is_empty() {
        "-"
    } else {
        &ui.filter
    };
    first.push(Span::raw(format!(
        "  {} UTC  {scope}  via {}  filter: {filter}",
        m.time, ui.source
    )));
    if ui.paused {
        first.push(Span::styled("  PAUSED", theme.alert()));
    }
    let t = &m.totals;
    let pct = if t.new > 0 {
        format!(" ({:.1}% of new)", 100.0 * t.failed as f64 / t.new as f64)
    } else {
        String::new()
    };
    let failed_style = if t.failed > 0 {
        theme.bad()
    } else {
        Style::new()
    };
    let second = match ui.mode {
        Mode::Rate => vec![
            Span::raw(format!("new/s {}  ", rate(t.new, m.window_ns))),
            Span::raw(format!("closed/s {}  ", rate(t.closed, m.window_ns))),
            Span::styled(
                format!("failed/s {}{pct}", rate(t.failed, m.window_ns)),
                failed_style,
            ),
        ],
        Mode::Total => vec![
            Span::styled(
                format!("totals over {}: ", duration(m.window_ns)),
                theme.dim(),
            ),
            Span::raw(format!("new {}  ", count(t.new))),
            Span::raw(format!("closed {}  ", count(t.closed))),
            Span::styled(format!("failed {}{pct}", count(t.failed)), failed_style),
        ],
    };
    let mut lines = vec![Line::from(first), Line::from(second)];
    let l = &m.losses;
    if l.any() {
        let mut parts = Vec::new();
        for (n, what) in [
            (l.ring_full, "ring-full"),
            (l.recursion, "recursion"),
            (l.hints, "hints"),
            (l.not_run, "not-run"),
            (l.malformed, "malformed"),
            (l.evicted, "evicted"),
        ] {
            if n > 0 {
                parts.push(format!("{} {what}", count(n)));
            }
        }
        let mut third = vec![Span::styled(
            format!("LOSSES: {}; counts incomplete", parts.join(" ")),
            theme.alert(),
        )];
        if let Some(from) = m.history_from_ns {
            third.push(Span::styled(
                format!(
                    "  history covers the last {}",
                    duration(m.now_ns.saturating_sub(from))
                ),
                theme.bad(),
            ));
        }
        lines.push(Line::from(third));
    } else {
        lines[1].push_span(Span::raw("  losses 0"));
    }
    if let Some(e) = &ui.error {
        lines[0].push_span(Span::styled(format!("  {e}"), theme.alert()));
    }
    lines
}

fn state_strip(ui: &Ui, theme: &Theme) -> Line<'static> {
    let Some(m) = &ui.model else {
        return Line::default();
    };
    let mut spans = Vec::new();
    for s in &m.states {
        if s.state == "CLOSE-WAIT" {
            let alert = ui.close_wait_alert();
            let mut text = format!("{} {}", s.state, count(s.count));
            if let Some(age) = m.close_wait_oldest_ns {
                text.push_str(&format!(" (oldest {})", duration(age)));
            }
            if alert {
                text.push_str(" !");
            }
            let style = if alert {
                theme.alert().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            spans.push(Span::styled(text, style));
        } else if s.count > 0 || s.state == "ESTAB" {
            spans.push(Span::raw(format!("{} {}", s.state, count(s.count))));
        } else {
            continue;
        }
        spans.push(Span::raw("  "));
    }
    let tw = m.time_wait.map_or_else(|| "-".into(), count);
    spans.push(Span::raw(format!("TIME-WAIT {tw}")));
    Line::from(spans)
}

/// One column of the grouped table.
struct Col {
    wide: &'static str,
    narrow: &'static str,
    /// Widths on a wide and a narrow screen: the heading, its sort mark, and the values.
    wide_width: u16,
    narrow_width: u16,
    /// Hidden below this screen width.
    min_screen: u16,
    sort: SortKey,
}

const GROUP_COLS: [Col; 10] = [
    col("NEW/s", "NEW/s", 7, 6, 0, SortKey::New),
    col("FAIL/s", "FAIL/s", 7, 7, 0, SortKey::Fail),
    col("REFUSED", "REF", 8, 5, 0, SortKey::Refused),
    col("TIMEOUT", "TMO", 8, 5, 0, SortKey::Timeout),
    col("RST", "RST", 6, 5, 0, SortKey::Rst),
    col("LIFE-P50", "P50", 9, 7, 90, SortKey::P50),
    col("LIFE-P99", "P99", 9, 7, 0, SortKey::P99),
    col("CONN-P99", "CONN", 9, 7, 0, SortKey::Connect),
    col("LIVE", "LIVE", 6, 5, 0, SortKey::Live),
    col("CLOSE-WAIT", "CLOSE-WAIT", 14, 11, 0, SortKey::CloseWait),
];

const fn col(
    wide: &'static str,
    narrow: &'static str,
    wide_width: u16,
    narrow_width: u16,
    min_screen: u16,
    sort: SortKey,
) -> Col {
    Col {
        wide,
        narrow,
        wide_width,
        narrow_width,
        min_screen,
        sort,
    }
}

const WIDE: u16 = 120;

fn group_cells(g: &Group, window_ns: u64, mode: Mode) -> [String; 10] {
    let c = &g.counts;
    let per = |n| match mode {
        Mode::Rate => rate(n, window_ns),
        Mode::Total => count(n),
    };
    let cw = match g.close_wait_oldest_ns {
        Some(age) if g.close_wait > 0 => format!("{} {}", count(g.close_wait), duration(age)),
        _ => count(g.close_wait),
    };
    [
        per(c.new),
        per(c.failed),
        count(c.refused),
        count(c.timeout),
        count(c.reset),
        opt_duration(g.lifespan_p50_ns),
        opt_duration(g.lifespan_p99_ns),
        opt_duration(g.connect_p99_ns),
        count(g.live),
        cw,
    ]
}

fn draw_groups(f: &mut Frame, ui: &Ui, theme: &Theme, area: Rect) {
    let width = area.width;
    let shown: Vec<usize> = (0..GROUP_COLS.len())
        .filter(|&i| width >= GROUP_COLS[i].min_screen)
        .collect();
    let total_mode = ui.mode == Mode::Total;
    let heading = |i: usize| -> String {
        let c = &GROUP_COLS[i];
        let mut h = if width >= WIDE { c.wide } else { c.narrow }.to_owned();
        if total_mode {
            h = h.trim_end_matches("/s").to_owned();
        }
        if c.sort == ui.sort {
            h.push('▼');
        }
        h
    };
    let key_heading = {
        let mut h = ui.group.heading().to_owned();
        if ui.sort == SortKey::Key {
            h.push('▲');
        }
        h
    };
    let header = Row::new(
        std::iter::once(Cell::from(key_heading)).chain(
            shown
                .iter()
                .map(|&i| Cell::from(Line::from(heading(i)).right_aligned())),
        ),
    )
    .style(theme.heading());
    let (rows, title_extra) = match &ui.model {
        Some(m) => {
            let rows: Vec<Row> = m
                .groups
                .iter()
                .map(|g| {
                    let cells = group_cells(g, m.window_ns, ui.mode);
                    let failing = g.counts.failed > 0;
                    Row::new(
                        std::iter::once(Cell::from(g.key.clone())).chain(shown.iter().map(|&i| {
                            let style = match i {
                                1..=4 if failing => theme.bad(),
                                9 if g
                                    .close_wait_oldest_ns
                                    .is_some_and(|a| a >= super::ui::CLOSE_WAIT_ALERT_NS) =>
                                {
                                    theme.alert()
                                }
                                _ => Style::new(),
                            };
                            Cell::from(Line::from(cells[i].clone()).right_aligned()).style(style)
                        })),
                    )
                })
                .collect();
            let extra = if m.groups_total > m.groups.len() {
                format!("{} of {} groups", m.groups.len(), m.groups_total)
            } else {
                format!("{} groups", m.groups_total)
            };
            (rows, extra)
        }
        None => (vec![], "no numbers yet".to_owned()),
    };
    let empty = rows.is_empty() && ui.model.is_some();
    let title = format!(" by {} (g) - sort (s) - {title_extra} ", ui.group.name());
    let block = Block::new()
        .borders(Borders::TOP)
        .title(Span::styled(title, theme.title()));
    // The key column as wide as its longest entry (within reason); spare room stays at the
    // right rather than pushing the numbers away from their names.
    let key_width = ui
        .model
        .as_ref()
        .and_then(|m| m.groups.iter().map(|g| g.key.chars().count()).max())
        .unwrap_or(0)
        .clamp(8, 40) as u16;
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(key_width))
        .chain(shown.iter().map(|&i| {
            let c = &GROUP_COLS[i];
            Constraint::Length(if width >= WIDE {
                c.wide_width
            } else {
                c.narrow_width
            })
        }))
        .collect();
    let table = Table::new(rows, widths)
        .flex(Flex::Start)
        .header(header)
        .block(block)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if ui.focus == Focus::Groups && !empty {
        state.select(Some(ui.group_sel));
    }
    f.render_stateful_widget(table, area, &mut state);
    if empty {
        let inner = Rect {
            y: area.y + 2,
            height: 1,
            ..area
        };
        if area.height > 2 {
            f.render_widget(
                Paragraph::new(Span::styled(
                    "no connections in this window and filter",
                    theme.dim(),
                )),
                inner,
            );
        }
    }
}

fn owner_text(e: &Ended) -> String {
    e.owner
        .as_ref()
        .map_or_else(|| "?".into(), |o| format!("{}[{}]", o.comm, o.pid))
}

fn path_text(e: &Ended) -> String {
    if e.path.is_empty() {
        return "-".into();
    }
    e.path
        .iter()
        .map(|(s, ns)| format!("{s}({})", duration(*ns)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn draw_recent(f: &mut Frame, ui: &Ui, theme: &Theme, area: Rect) {
    let wide = area.width >= WIDE;
    let recent = ui.recent();
    let mut headings = vec!["TIME", "OWNER", "LOCAL -> PEER", "END", "LIFESPAN"];
    let mut widths = vec![
        Constraint::Length(if wide { 15 } else { 8 }),
        Constraint::Length(if wide { 18 } else { 12 }),
        if wide {
            let longest = recent
                .iter()
                .map(|e| e.local.to_string().len() + e.peer.to_string().len() + 4)
                .max()
                .unwrap_or(13);
            Constraint::Length(longest.clamp(13, 47) as u16)
        } else {
            Constraint::Min(20)
        },
        Constraint::Length(15),
        Constraint::Length(8),
    ];
    if wide {
        headings.push("STATES");
        widths.push(Constraint::Fill(1));
    }
    let header = Row::new(headings.clone()).style(theme.heading());
    let rows: Vec<Row> = recent
        .iter()
        .map(|e| {
            let time = if wide {
                e.time.clone()
            } else {
                e.time.chars().take(8).collect()
            };
            let end_style = if e.end == "normal" {
                Style::new()
            } else {
                theme.bad()
            };
            let mut cells = vec![
                Cell::from(time),
                Cell::from(owner_text(e)),
                Cell::from(format!("{} -> {}", e.local, e.peer)),
                Cell::from(e.end.clone()).style(end_style),
                Cell::from(Line::from(opt_duration(e.lifespan_ns)).right_aligned()),
            ];
            if wide {
                cells.push(Cell::from(path_text(e)));
            }
            Row::new(cells)
        })
        .collect();
    let title = if ui.frozen.is_some() {
        " recently ended - FROZEN while scrolling (Home: follow) ".to_owned()
    } else {
        " recently ended, newest first (Tab: scroll) ".to_owned()
    };
    let empty = rows.is_empty() && ui.model.is_some();
    let table = Table::new(rows, widths)
        .flex(Flex::Start)
        .header(header)
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(Span::styled(title, theme.title())),
        )
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if ui.focus == Focus::Recent && !empty {
        state.select(Some(ui.recent_sel));
    }
    f.render_stateful_widget(table, area, &mut state);
    if empty && area.height > 2 {
        f.render_widget(
            Paragraph::new(Span::styled("no connection ended yet", theme.dim())),
            Rect {
                y: area.y + 2,
                height: 1,
                ..area
            },
        );
    }
}

fn footer_lines(ui: &Ui, theme: &Theme) -> Vec<Line<'static>> {
    const PROMPT: &str = "filter> ";
    if let Some(text) = &ui.editing {
        let mut input = vec![
            Span::styled(PROMPT, theme.title()),
            Span::raw(text.clone()),
            Span::styled("_", Style::new().add_modifier(Modifier::SLOW_BLINK)),
        ];
        let Some(p) = &ui.filter_problem else {
            input.push(Span::styled(
                "  (ss syntax; Enter: apply, Esc: cancel)",
                theme.dim(),
            ));
            return vec![Line::from(input)];
        };
        return vec![
            Line::from(input),
            Line::from(vec![
                Span::raw(" ".repeat(PROMPT.len() + p.column)),
                Span::styled("^".repeat(p.width.max(1)), theme.alert()),
            ]),
            Line::from(Span::styled(p.message.clone(), theme.alert())),
        ];
    }
    vec![Line::from(Span::styled(
        "q:quit g:group s:sort /:filter t:rate/total space:pause Tab:pane Enter:details",
        theme.dim(),
    ))]
}

/// The group key of an ended connection, as the grouped table writes it.
fn key_of(group: GroupBy, e: &Ended) -> String {
    match group {
        GroupBy::Owner => owner_text(e),
        GroupBy::Peer => e.peer.ip().to_string(),
        GroupBy::LocalPort => e.local.port().to_string(),
        GroupBy::PeerPort => e.peer.port().to_string(),
        GroupBy::Unit => e.unit.clone().unwrap_or_else(|| "?".into()),
        GroupBy::Container => e.container.clone().unwrap_or_else(|| "?".into()),
    }
}

fn details_lines(ui: &Ui) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    match ui.focus {
        Focus::Groups => {
            let Some((g, m)) = ui
                .model
                .as_ref()
                .and_then(|m| m.groups.get(ui.group_sel).map(|g| (g, m)))
            else {
                return vec![Line::from("nothing selected")];
            };
            let c = &g.counts;
            out.push(Line::from(format!("{} {}", ui.group.name(), g.key)));
            out.push(Line::from(format!(
                "in the last {}: {} new, {} closed, {} failed: {} refused, {} timed out, \
                 {} reset",
                duration(m.window_ns),
                c.new,
                c.closed,
                c.failed,
                c.refused,
                c.timeout,
                c.reset
            )));
            out.push(Line::from(format!(
                "lifespan p50 {}, p99 {}; connect p99 {}",
                opt_duration(g.lifespan_p50_ns),
                opt_duration(g.lifespan_p99_ns),
                opt_duration(g.connect_p99_ns)
            )));
            out.push(Line::from(format!(
                "live {}, CLOSE-WAIT {} (oldest {})",
                g.live,
                g.close_wait,
                opt_duration(g.close_wait_oldest_ns)
            )));
            out.push(Line::default());
            out.push(Line::from("recently ended:"));
            for e in ui.recent().iter().filter(|e| key_of(ui.group, e) == g.key) {
                out.push(Line::from(format!(
                    "  {} {} -> {} {} {}",
                    e.time,
                    e.local,
                    e.peer,
                    e.end,
                    opt_duration(e.lifespan_ns)
                )));
            }
        }
        Focus::Recent => {
            let Some(e) = ui.recent().get(ui.recent_sel) else {
                return vec![Line::from("nothing selected")];
            };
            out.push(Line::from(format!("{} -> {}", e.local, e.peer)));
            out.push(Line::from(format!("ended {} UTC: {}", e.time, e.end)));
            out.push(Line::from(format!(
                "lifespan {}",
                opt_duration(e.lifespan_ns)
            )));
            out.push(Line::from(match &e.owner {
                Some(o) => format!(
                    "owner {} pid {} uid {} fd {}",
                    o.comm,
                    o.pid,
                    o.uid,
                    o.fd.map_or_else(|| "-".into(), |f| f.to_string())
                ),
                None => "owner unknown".into(),
            }));
            out.push(Line::from(format!("states {}", path_text(e))));
            out.push(Line::from(format!(
                "bytes acked {}, received {}",
                e.bytes_acked, e.bytes_received
            )));
            out.push(Line::from(format!("netns {} cookie {}", e.netns, e.cookie)));
        }
    }
    out
}

fn draw_details(f: &mut Frame, ui: &Ui, theme: &Theme, area: Rect) {
    let popup = Rect {
        x: area.x + area.width / 10,
        y: area.y + area.height / 6,
        width: area.width - area.width / 5,
        height: area.height - area.height / 3,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(details_lines(ui))
            .wrap(Wrap { trim: false })
            .block(
                Block::bordered()
                    .title(Span::styled(" details (Enter/Esc: close) ", theme.title())),
            ),
        popup,
    );
}

/// The screen as plain text, `width` x `height`, trailing spaces cut: for `--once` and tests.
pub fn text(ui: &Ui, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal.draw(|f| draw(f, ui)).expect("drawing into memory");
    buffer_text(terminal.backend().buffer())
}

fn buffer_text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::top::{
        model::{Losses, Model, Query, compute, tests as m},
        ui::FilterProblem,
    };

    const S: u64 = 1_000_000_000;

    fn ui_with(model: Option<Model>) -> Ui {
        let mut ui = Ui {
            source: "agent".into(),
            ..Ui::default()
        };
        if let Some(model) = model {
            ui.update(model);
        }
        ui
    }

    fn busy_model(query: &Query) -> Model {
        compute(query, &m::filter(""), m::busy().input(11 * S))
    }

    /// Compares with `snapshots/NAME.txt`; `UPDATE_SNAPSHOTS=1` rewrites the file.
    fn check(name: &str, ui: &Ui, width: u16, height: u16) {
        let got = text(ui, width, height);
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/top/snapshots")
            .join(format!("{name}.txt"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_SNAPSHOTS=1 writes it)\n{got}",
                path.display()
            )
        });
        assert_eq!(got, want, "{name} changed (UPDATE_SNAPSHOTS=1 rewrites it)");
    }

    #[test]
    fn busy_screen_80x24_and_160x48() {
        let ui = ui_with(Some(busy_model(&m::query())));
        check("busy_80x24", &ui, 80, 24);
        check("busy_160x48", &ui, 160, 48);
        let text = text(&ui, 80, 24);
        assert!(text.contains("curl[100]"), "{text}");
        assert!(text.contains("connect-timeout"), "{text}");
    }

    #[test]
    fn empty_screens() {
        let waiting = ui_with(None);
        check("waiting_80x24", &waiting, 80, 24);
        let empty = ui_with(Some(compute(
            &m::query(),
            &m::filter(""),
            m::Script::new().input(11 * S),
        )));
        check("empty_80x24", &empty, 80, 24);
        check("empty_160x48", &empty, 160, 48);
    }

    #[test]
    fn losses_are_shown() {
        let mut model = busy_model(&m::query());
        model.losses = Losses {
            ring_full: 1234,
            recursion: 5,
            hints: 0,
            not_run: 0,
            malformed: 0,
            evicted: 100_000,
        };
        model.history_from_ns = Some(model.now_ns - S / 2);
        let ui = ui_with(Some(model));
        check("loss_80x24", &ui, 80, 24);
        check("loss_160x48", &ui, 160, 48);
        assert!(text(&ui, 80, 24).contains("LOSSES"));
    }

    #[test]
    fn a_filter_error_is_shown_under_the_input() {
        let mut ui = ui_with(Some(busy_model(&m::query())));
        ui.editing = Some("dport = :80 and".into());
        ui.filter_problem = Some(FilterProblem {
            message: "expected an expression after `and`".into(),
            column: 15,
            width: 0,
        });
        check("filter_error_80x24", &ui, 80, 24);
        check("filter_error_160x48", &ui, 160, 48);
    }

    #[test]
    fn totals_details_and_paused() {
        let mut ui = ui_with(Some(busy_model(&m::query())));
        ui.mode = Mode::Total;
        ui.paused = true;
        ui.focus = Focus::Recent;
        ui.recent_sel = 1;
        ui.details = true;
        check("details_160x48", &ui, 160, 48);
        ui.focus = Focus::Groups;
        check("group_details_80x24", &ui, 80, 24);
    }

    #[test]
    fn grouped_by_unit_and_by_container() {
        for (group, name) in [(GroupBy::Unit, "unit"), (GroupBy::Container, "container")] {
            let (s, mut names) = m::in_cgroups();
            let q = Query {
                group,
                ..m::query()
            };
            let mut input = s.input(11 * S);
            input.cgroups = Some(&mut names);
            let mut ui = ui_with(None);
            ui.group = group;
            ui.update(compute(&q, &m::filter(""), input));
            check(&format!("{name}_80x24"), &ui, 80, 24);
            check(&format!("{name}_160x48"), &ui, 160, 48);
        }
        let (s, mut names) = m::in_cgroups();
        let q = Query {
            group: GroupBy::Unit,
            ..m::query()
        };
        let mut input = s.input(11 * S);
        input.cgroups = Some(&mut names);
        let mut ui = ui_with(None);
        ui.group = GroupBy::Unit;
        ui.update(compute(&q, &m::filter(""), input));
        let screen = text(&ui, 80, 24);
        assert!(screen.contains("by unit (g)"), "{screen}");
        assert!(
            screen.lines().any(|l| l.starts_with("web.service")),
            "{screen}"
        );
        // The details of the selected group list its own ended connections.
        ui.details = true;
        ui.group_sel = ui
            .model
            .as_ref()
            .unwrap()
            .groups
            .iter()
            .position(|g| g.key == "web.service")
            .unwrap();
        let details: Vec<String> = details_lines(&ui).iter().map(|l| l.to_string()).collect();
        assert_eq!(details[0], "unit web.service");
        let ended = details.iter().filter(|l| l.contains(" -> ")).count();
        assert_eq!(ended, 10, "{details:#?}");
    }

    #[test]
    fn rates_and_counts_fit_their_columns() {
        assert_eq!(rate(0, S), "0");
        assert_eq!(rate(3, 2 * S), "1.5");
        assert_eq!(rate(46_000, S), "46.0k");
        assert_eq!(rate(120, S), "120");
        assert_eq!(count(123_456), "123.5k");
    }
}
