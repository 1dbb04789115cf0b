//! The state of the `netmon top` screen and what each key does to it (no terminal here).

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{Ended, GroupBy, Model, Query, SortKey, sort_groups};
use crate::filter::{Filter, Services, StateSet};

/// CLOSE-WAIT sockets older than this are flagged: the application is not closing them.
pub const CLOSE_WAIT_ALERT_NS: u64 = 60_000_000_000;

/// Counting since the last screen (per second), or since `top` started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Rate,
    Total,
}

/// Which pane the arrow keys move in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Focus {
    #[default]
    Groups,
    Recent,
}

/// A filter that did not parse, as the input line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterProblem {
    pub message: String,
    /// Character column and width of the offending part in the typed text.
    pub column: usize,
    pub width: usize,
}

/// What the loop must do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Redraw only.
    Redraw,
    /// The query changed: ask again now.
    Refetch,
    Quit,
}

#[derive(Debug, Default)]
pub struct Ui {
    pub group: GroupBy,
    pub sort: SortKey,
    pub filter: String,
    pub mode: Mode,
    pub paused: bool,
    pub focus: Focus,
    pub group_sel: usize,
    pub recent_sel: usize,
    /// The recently-ended list as it was when scrolling began: it does not move under the
    /// reader.
    pub frozen: Option<Vec<Ended>>,
    /// Text being typed after `/`.
    pub editing: Option<String>,
    pub filter_problem: Option<FilterProblem>,
    pub details: bool,
    pub color: bool,
    /// Where the numbers come from, for the header.
    pub source: String,
    /// Why the last request failed, shown until one succeeds.
    pub error: Option<String>,
    pub model: Option<Model>,
    /// CLOSE-WAIT went up since the previous screen.
    pub close_wait_growing: bool,
    /// CLOCK_MONOTONIC when `top` started: the start of total mode's window.
    pub started_ns: u64,
    /// Time between screens (0: one second).
    pub interval_ns: u64,
}

impl Ui {
    /// The request for the next screen.
    pub fn query(&self, max_groups: usize, max_recent: usize) -> Query {
        let since_ns = match self.mode {
            Mode::Total => Some(self.started_ns),
            // From the previous answer (no gap between screens), but never less than an
            // interval: a key that asks again early does not make a noisy short window.
            Mode::Rate => self.model.as_ref().map(|m| {
                let interval = if self.interval_ns == 0 {
                    super::model::RATE_WINDOW_NS
                } else {
                    self.interval_ns
                };
                m.now_ns
                    .min(crate::clock::Clock::mono_now_ns().saturating_sub(interval))
            }),
        };
        Query {
            group: self.group,
            sort: self.sort,
            since_ns,
            filter: if self.filter.is_empty() {
                vec![]
            } else {
                vec![self.filter.clone()]
            },
            all_netns: false,
            max_groups,
            max_recent,
        }
    }

    /// Takes a new screen's numbers (ignored while paused).
    pub fn update(&mut self, model: Model) {
        if self.paused {
            return;
        }
        self.close_wait_growing = self
            .model
            .as_ref()
            .is_some_and(|old| model.close_wait > old.close_wait);
        self.model = Some(model);
        self.error = None;
        self.clamp();
    }

    /// The recently-ended list on screen: frozen while scrolling.
    pub fn recent(&self) -> &[Ended] {
        match (&self.frozen, &self.model) {
            (Some(f), _) => f,
            (None, Some(m)) => &m.recent,
            (None, None) => &[],
        }
    }

    pub fn close_wait_alert(&self) -> bool {
        self.close_wait_growing
            || self
                .model
                .as_ref()
                .and_then(|m| m.close_wait_oldest_ns)
                .is_some_and(|age| age >= CLOSE_WAIT_ALERT_NS)
    }

    fn clamp(&mut self) {
        let groups = self.model.as_ref().map_or(0, |m| m.groups.len());
        self.group_sel = self.group_sel.min(groups.saturating_sub(1));
        self.recent_sel = self.recent_sel.min(self.recent().len().saturating_sub(1));
    }

    fn select(&mut self, delta: isize) {
        match self.focus {
            Focus::Groups => {
                let n = self.model.as_ref().map_or(0, |m| m.groups.len());
                self.group_sel = step(self.group_sel, delta, n);
            }
            Focus::Recent => {
                let n = self.recent().len();
                let sel = step(self.recent_sel, delta, n);
                if sel > 0 && self.frozen.is_none() {
                    self.frozen = Some(self.recent().to_vec());
                }
                if sel == 0 {
                    self.frozen = None;
                }
                self.recent_sel = sel;
            }
        }
    }

    /// Applies one key.
    pub fn key(&mut self, key: KeyEvent, services: &Services) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing.is_some() {
            return self.edit_key(key, services);
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.details => self.details = false,
            KeyCode::Esc => {}
            KeyCode::Char('g') => {
                self.group = self.group.next();
                self.group_sel = 0;
                return Action::Refetch;
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                // Re-sort what is shown now; the next answer comes sorted the same way.
                if let Some(m) = &mut self.model {
                    sort_groups(&mut m.groups, self.sort);
                }
                return Action::Refetch;
            }
            KeyCode::Char('t') => {
                self.mode = match self.mode {
                    Mode::Rate => Mode::Total,
                    Mode::Total => Mode::Rate,
                };
                return Action::Refetch;
            }
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('/') => {
                self.editing = Some(self.filter.clone());
                self.filter_problem = None;
            }
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Focus::Groups => Focus::Recent,
                    Focus::Recent => Focus::Groups,
                }
            }
            KeyCode::Enter => self.details = !self.details,
            KeyCode::Up | KeyCode::Char('k') => self.select(-1),
            KeyCode::Down | KeyCode::Char('j') => self.select(1),
            KeyCode::PageUp => self.select(-10),
            KeyCode::PageDown => self.select(10),
            KeyCode::Home => self.select(isize::MIN / 2),
            KeyCode::End => self.select(isize::MAX / 2),
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    fn edit_key(&mut self, key: KeyEvent, services: &Services) -> Action {
        let Some(text) = &mut self.editing else {
            return Action::Nothing;
        };
        match key.code {
            KeyCode::Esc => {
                self.editing = None;
                self.filter_problem = None;
            }
            KeyCode::Enter => {
                let words = [text.clone()];
                match Filter::parse(&words, services, StateSet::ALL) {
                    Ok(_) => {
                        self.filter = text.trim().to_owned();
                        self.editing = None;
                        self.filter_problem = None;
                        self.group_sel = 0;
                        return Action::Refetch;
                    }
                    Err(e) => {
                        let column = text.get(..e.span.start).map_or(0, |s| s.chars().count());
                        let width = text.get(e.span.clone()).map_or(0, |s| s.chars().count());
                        self.filter_problem = Some(FilterProblem {
                            message: e.message,
                            column,
                            width,
                        });
                    }
                }
            }
            KeyCode::Backspace => {
                text.pop();
                self.filter_problem = None;
            }
            // As in a shell: the whole line away at once.
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                text.clear();
                self.filter_problem = None;
            }
            KeyCode::Char(c) if !c.is_control() => {
                text.push(c);
                self.filter_problem = None;
            }
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

fn step(at: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (at as isize)
        .saturating_add(delta)
        .clamp(0, len as isize - 1) as usize
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEventKind;

    use super::*;
    use crate::top::model::{compute, tests as m};

    pub fn press(ui: &mut Ui, code: KeyCode) -> Action {
        let key = KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(key.kind, KeyEventKind::Press);
        ui.key(key, &Services::default())
    }

    fn loaded() -> Ui {
        let mut ui = Ui::default();
        let s = m::busy();
        ui.update(compute(
            &m::query(),
            &m::filter(""),
            s.input(11_000_000_000),
        ));
        ui
    }

    #[test]
    fn keys_change_grouping_sort_mode_and_pause() {
        let mut ui = loaded();
        assert_eq!(press(&mut ui, KeyCode::Char('g')), Action::Refetch);
        assert_eq!(ui.group, GroupBy::Peer);
        // `g` goes on through the ports, unit and container, and back to the owner.
        let mut cycle = vec![ui.group];
        for _ in 0..5 {
            press(&mut ui, KeyCode::Char('g'));
            cycle.push(ui.group);
        }
        assert_eq!(
            cycle,
            [
                GroupBy::Peer,
                GroupBy::LocalPort,
                GroupBy::PeerPort,
                GroupBy::Unit,
                GroupBy::Container,
                GroupBy::Owner
            ]
        );
        press(&mut ui, KeyCode::Char('g'));
        assert_eq!(press(&mut ui, KeyCode::Char('s')), Action::Refetch);
        assert_eq!(ui.sort, SortKey::Fail);
        assert_eq!(ui.model.as_ref().unwrap().groups[0].key, "curl[100]");
        assert_eq!(press(&mut ui, KeyCode::Char('t')), Action::Refetch);
        assert_eq!(ui.query(10, 10).since_ns, Some(ui.started_ns));
        press(&mut ui, KeyCode::Char(' '));
        assert!(ui.paused);
        let before = ui.model.clone();
        ui.update(Model::default());
        assert_eq!(ui.model, before, "paused: the screen stays");
        assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(ui.key(ctrl_c, &Services::default()), Action::Quit);
    }

    #[test]
    fn ctrl_u_clears_the_filter_being_typed() {
        let mut ui = loaded();
        press(&mut ui, KeyCode::Char('/'));
        for c in "dport = :80".chars() {
            press(&mut ui, KeyCode::Char(c));
        }
        let ctrl_u = KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL);
        ui.key(ctrl_u, &Services::default());
        assert_eq!(ui.editing.as_deref(), Some(""));
        for c in "unit = a.service".chars() {
            press(&mut ui, KeyCode::Char(c));
        }
        assert_eq!(press(&mut ui, KeyCode::Enter), Action::Refetch);
        assert_eq!(ui.filter, "unit = a.service");
    }

    #[test]
    fn rate_mode_asks_from_the_previous_answer_or_an_interval_ago() {
        let mut ui = loaded();
        // The fixture's answer is from monotonic 11 s, long before now.
        assert_eq!(ui.query(10, 10).since_ns, Some(11_000_000_000));
        ui.model.as_mut().unwrap().now_ns = u64::MAX;
        let since = ui.query(10, 10).since_ns.unwrap();
        let ago = crate::clock::Clock::mono_now_ns() - since;
        assert!((1_000_000_000..2_000_000_000).contains(&ago), "{ago}");
        assert_eq!(Ui::default().query(10, 10).since_ns, None);
    }

    #[test]
    fn a_bad_filter_is_shown_inline_and_not_applied() {
        let mut ui = loaded();
        press(&mut ui, KeyCode::Char('/'));
        for c in "dport = :80 and".chars() {
            press(&mut ui, KeyCode::Char(c));
        }
        assert_eq!(press(&mut ui, KeyCode::Enter), Action::Redraw);
        let problem = ui.filter_problem.clone().expect("an error");
        assert!(problem.column >= 10, "{problem:?}");
        assert!(ui.editing.is_some(), "still editing");
        assert_eq!(ui.filter, "");
        for _ in 0..4 {
            press(&mut ui, KeyCode::Backspace);
        }
        assert_eq!(press(&mut ui, KeyCode::Enter), Action::Refetch);
        assert_eq!(ui.filter, "dport = :80");
        assert_eq!(ui.query(1, 1).filter, ["dport = :80"]);
        // `q` while typing is a letter, not quit.
        press(&mut ui, KeyCode::Char('/'));
        assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Redraw);
        press(&mut ui, KeyCode::Esc);
        assert_eq!(ui.filter, "dport = :80", "Esc keeps the old filter");
    }

    #[test]
    fn scrolling_the_recent_list_freezes_it() {
        let mut ui = loaded();
        press(&mut ui, KeyCode::Tab);
        press(&mut ui, KeyCode::Down);
        press(&mut ui, KeyCode::Down);
        assert_eq!(ui.recent_sel, 2);
        let shown = ui.recent().to_vec();
        ui.update(Model::default());
        assert_eq!(ui.recent(), shown, "frozen while scrolling");
        press(&mut ui, KeyCode::Home);
        assert!(ui.frozen.is_none());
        assert!(ui.recent().is_empty(), "back at the top: live again");
    }

    #[test]
    fn close_wait_is_flagged_when_it_grows_or_gets_old() {
        let mut ui = Ui::default();
        let mut model = Model {
            close_wait: 1,
            close_wait_oldest_ns: Some(1_000_000_000),
            ..Model::default()
        };
        ui.update(model.clone());
        assert!(!ui.close_wait_alert());
        model.close_wait = 2;
        ui.update(model.clone());
        assert!(ui.close_wait_alert(), "grew");
        ui.update(model.clone());
        assert!(!ui.close_wait_alert(), "steady and young");
        model.close_wait_oldest_ns = Some(CLOSE_WAIT_ALERT_NS);
        ui.update(model);
        assert!(ui.close_wait_alert(), "old");
    }
}
