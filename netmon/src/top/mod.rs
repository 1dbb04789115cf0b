//! `netmon top`: the live screen of who opens and fails connections, refreshed once a second
//! from the agent ([`feed`]); numbers in [`model`], keys in [`ui`], drawing in [`view`], the
//! terminal's care in [`term`].

pub mod feed;
pub mod model;
pub mod term;
pub mod ui;
pub mod view;

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use self::{
    feed::Feed,
    model::{GroupBy, MAX_GROUPS, MAX_RECENT, SortKey},
    ui::{Action, Mode, Ui},
};
use crate::{clock::Clock, filter::Services};

#[derive(Clone, Debug, Args)]
pub struct TopArgs {
    /// Print one screen as plain text and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// Group the table by this (key `g` cycles).
    #[arg(long, value_enum, default_value_t = GroupBy::Owner)]
    pub group: GroupBy,
    /// Sort the table by this column (key `s` cycles).
    #[arg(long, value_enum, default_value_t = SortKey::New)]
    pub sort: SortKey,
    /// Show totals since start instead of rates (key `t` toggles).
    #[arg(long)]
    pub total: bool,
    /// Time between screens.
    #[arg(long, default_value = "1s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,
    /// Size of the text screen when the output is not a terminal, WIDTHxHEIGHT.
    #[arg(long, default_value = "160x48", value_parser = parse_size, value_name = "WxH")]
    pub size: (u16, u16),
    /// Every network namespace (default: this process's, like ss).
    #[arg(long)]
    pub all_netns: bool,
    /// An ss filter, e.g. `dport = :443` or `dst 10.0.0.0/8` (key `/` changes it).
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 1s, 500ms)"))?;
    if d < Duration::from_millis(200) {
        return Err(format!("{s} is too short: 200ms at least"));
    }
    Ok(d)
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}`: expected WIDTHxHEIGHT, at least 40x12, e.g. 160x48");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u16, u16) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w < 40 || h < 12 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
fn wants_color(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs `netmon top` until `q`, Ctrl-C or a signal.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let services = Services::system().unwrap_or_default();
    let mut ui = Ui {
        group: args.group,
        sort: args.sort,
        filter: args.filter.join(" ").trim().to_owned(),
        mode: if args.total { Mode::Total } else { Mode::Rate },
        started_ns: Clock::mono_now_ns(),
        interval_ns: args.interval.as_nanos() as u64,
        ..Ui::default()
    };
    // A bad filter on the command line fails at once, like snapshot's.
    feed::parse_filter(&ui.query(0, 0), &services).map_err(crate::cli::Rendered)?;
    term::catch_signals();
    let (mut feed, source) = Feed::open(&crate::agent::socket_path())?;
    let local = matches!(feed, Feed::Local(_));
    ui.source = if local {
        "own probe".into()
    } else {
        source.clone()
    };
    let interactive = std::io::stdout().is_terminal() && !args.once;
    if local && !interactive {
        eprintln!("netmon: {source}");
    }
    if local {
        // A tracer attached just now has seen nothing yet: let one interval pass.
        wait(args.interval);
    }
    let all_netns = args.all_netns;
    let fetch = move |ui: &mut Ui, feed: &mut Feed| {
        let mut query = ui.query(MAX_GROUPS, MAX_RECENT);
        query.all_netns = all_netns;
        match feed.fetch(&query, &services) {
            Ok(model) => ui.update(model),
            Err(e) => ui.error = Some(format!("{e:#}")),
        }
    };
    if !interactive {
        return batch(&args, &mut ui, &mut feed, fetch);
    }
    ui.color = wants_color(true);
    if local {
        ui.error = Some(source);
    }
    interactive_loop(&args, ui, feed, fetch)
}

/// Sleeps `d`, or less if a signal asks to stop.
fn wait(d: Duration) {
    let end = Instant::now() + d;
    while !term::stop_requested() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Not a terminal (or `--once`): plain text screens, one per interval, until stopped.
fn batch(
    args: &TopArgs,
    ui: &mut Ui,
    feed: &mut Feed,
    mut fetch: impl FnMut(&mut Ui, &mut Feed),
) -> anyhow::Result<()> {
    let (width, height) = if args.once && std::io::stdout().is_terminal() {
        ratatui::crossterm::terminal::size().unwrap_or(args.size)
    } else {
        args.size
    };
    let mut out = std::io::stdout().lock();
    loop {
        fetch(ui, feed);
        if let (Some(e), None) = (&ui.error, &ui.model) {
            anyhow::bail!("{e}");
        }
        out.write_all(view::text(ui, width, height).as_bytes())?;
        out.flush()?;
        if args.once || term::stop_requested() {
            return Ok(());
        }
        wait(args.interval);
        if term::stop_requested() {
            return Ok(());
        }
        out.write_all(b"\n")?;
    }
}

fn interactive_loop(
    args: &TopArgs,
    mut ui: Ui,
    mut feed: Feed,
    mut fetch: impl FnMut(&mut Ui, &mut Feed),
) -> anyhow::Result<()> {
    let services = Services::system().unwrap_or_default();
    let mut screen = term::Screen::enter().context("setting up the terminal")?;
    let mut next_fetch = Instant::now();
    let mut dirty = true;
    // How often a signal's stop request is noticed while no key comes.
    let tick = Duration::from_millis(100);
    while !term::stop_requested() {
        if Instant::now() >= next_fetch {
            if !ui.paused {
                fetch(&mut ui, &mut feed);
                dirty = true;
            }
            next_fetch = Instant::now() + args.interval;
        }
        if dirty {
            screen
                .terminal
                .draw(|f| view::draw(f, &ui))
                .context("drawing")?;
            dirty = false;
        }
        let timeout = next_fetch
            .saturating_duration_since(Instant::now())
            .min(tick);
        if !event::poll(timeout).context("reading the keyboard")? {
            continue;
        }
        match event::read().context("reading the keyboard")? {
            Event::Key(k) if k.kind == KeyEventKind::Press => match ui.key(k, &services) {
                Action::Quit => break,
                Action::Refetch => {
                    next_fetch = Instant::now();
                    dirty = true;
                }
                Action::Redraw => dirty = true,
                Action::Nothing => {}
            },
            Event::Resize(..) => {
                screen.terminal.autoresize().context("resizing")?;
                dirty = true;
            }
            _ => {}
        }
    }
    drop(screen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_intervals_are_checked() {
        assert_eq!(parse_size("80x24"), Ok((80, 24)));
        assert!(parse_size("10x5").unwrap_err().contains("at least 40x12"));
        assert!(parse_size("big").is_err());
        assert!(parse_interval("100ms").unwrap_err().contains("200ms"));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn no_color_when_asked_or_not_a_terminal() {
        assert!(!wants_color(false));
    }
}
