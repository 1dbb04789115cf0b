//! Where a snapshot's data comes from and how it flows: a socket source (the kernel over
//! sock_diag or the `iter/tcp` iterator, or a recorded dump replayed, like ss's TCPDIAG_FILE)
//! yields each namespace's dump a part at a time; [`stream`] merges each part with what a
//! table knows, and hands its rows to the renderer, which prints them and lets them go, before
//! the next part is read. The one pipeline of the agent and of the one-shot fallback.

use std::{collections::BTreeMap, io::Write, sync::mpsc::SyncSender};

use netmon_common::KernelFilter;

use crate::{
    access::Access,
    clock::Clock,
    filter::Filter,
    iter::{Fields, IterError, TcpIter},
    netns::{self, Netns},
    procfs::SocketOwners,
    served::{self, Served},
    snapshot::{Renderer, Row},
    sock_diag::{self, Cancel, DiagError, DiagSock},
    table::{ClosedCursor, ClosedPart, Reconcile, Stale, Table},
};

/// Sockets in a part of a dump, about (sock_diag hands whole datagrams, the iterator whole
/// reads): ~150 KB of [`DiagSock`]s and ~230 KB of rows, against a snapshot's 350 bytes a
/// socket when a whole dump was held while it rendered. At 4,096 a part (~1.5 MB with its
/// rows) was the largest thing a 64k-socket reply held once its table's cells were coded
/// (`a_64k_socket_all_netns_reply_...`); a part is handed between two threads, a rendezvous
/// that costs microseconds.
pub const PART: usize = 1024;

/// Closed connections in a part of a reply's history.
pub const CLOSED_PART: usize = 4096;

/// Which namespaces a snapshot covers.
#[derive(Debug)]
pub enum Scope {
    /// One namespace: the caller's (held open, so it cannot be recycled meanwhile).
    Caller(Netns),
    /// Every namespace the source can reach.
    All,
}

/// A dump as a source yields it: for each namespace a `Begin`, its sockets in parts, an `End`.
#[derive(Debug)]
pub enum Part {
    /// A namespace's dump starts at `t0_ns` (CLOCK_MONOTONIC). `full`: it lists every socket
    /// of the namespace (sock_diag), so the table reconciles with it; an iterator's dump
    /// (possibly filtered in the kernel) is only looked up in the table.
    Begin {
        netns: u32,
        t0_ns: u64,
        full: bool,
    },
    Sockets(Vec<DiagSock>),
    /// The namespace's dump ended; one that failed may have given some parts before.
    End {
        ended: Result<(), DiagError>,
        /// What the user should know about how this namespace was read.
        note: Option<String>,
    },
}

/// Lists the sockets of the namespaces in a scope, a part at a time. Blocking: keep it off
/// the thread that drains the ring.
pub trait SocketSource {
    /// Hands the dumps of `scope` to `each`, in [`Part`]s; `ext`: the optional sock_diag
    /// attributes to ask for (bits of [`crate::diag_ext::want`]). Once `each` returns false,
    /// the dump stops and `each` is not called again.
    fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool);

    /// As [`SocketSource::parts`], the kernel sending only the sockets that `bytecode` (a
    /// sock_diag filter program, [`sock_diag::port_bytecode`]) accepts: such dumps are not
    /// full, so no table reconciles with them. A source that cannot filter lists every socket
    /// in full dumps (the caller's filter still selects the rows).
    fn parts_in_ports(
        &self,
        scope: &Scope,
        ext: u8,
        bytecode: &[u8],
        each: &mut dyn FnMut(Part) -> bool,
    ) {
        let _ = bytecode;
        self.parts(scope, ext, each)
    }
}

/// A source whose dumps the kernel narrows to a filter's port ranges
/// ([`SocketSource::parts_in_ports`]).
pub struct InPorts<'a, S: ?Sized> {
    pub source: &'a S,
    pub bytecode: Vec<u8>,
}

impl<S: SocketSource + ?Sized> SocketSource for InPorts<'_, S> {
    fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool) {
        self.source.parts_in_ports(scope, ext, &self.bytecode, each)
    }
}

/// The kernel, over sock_diag; dumps stop once `cancel` is set (the client left), and what
/// was not dumped then is reported as [`DiagError::Cancelled`].
#[derive(Clone, Debug, Default)]
pub struct LiveSource {
    pub cancel: Cancel,
}

/// Runs `produce` on a thread of its own and hands what it sends to `each` on this one, a
/// part at a time: the next part is made while this one is rendered, and no more (the channel
/// holds none). `each` may hold what cannot cross threads (the output, the table's handle);
/// once it returns false, the receiver goes and the producer's next send fails, which stops it.
fn bridged<R: Send>(
    produce: impl FnOnce(SyncSender<Vec<DiagSock>>) -> R + Send,
    each: &mut dyn FnMut(Vec<DiagSock>) -> bool,
) -> std::io::Result<R> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let producer = std::thread::Builder::new()
            .name("netmon-dump".into())
            .spawn_scoped(scope, move || produce(tx))?;
        for part in rx.iter() {
            if !each(part) {
                break;
            }
        }
        drop(rx);
        Ok(producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// Calls `each` for the namespaces of `scope` (opened, or why not), in turn, while it
/// returns true.
fn each_netns(scope: &Scope, mut each: impl FnMut(u32, Result<&Netns, std::io::Error>) -> bool) {
    match scope {
        Scope::Caller(ns) => {
            each(ns.inum, Ok(ns));
        }
        Scope::All => {
            let mut go_on = true;
            netns::each(|inum, ns| {
                if go_on {
                    go_on = match ns {
                        Ok(ns) => each(inum, Ok(&ns)),
                        Err(e) => each(inum, Err(e)),
                    };
                }
            });
        }
    }
}

/// A namespace that could not be opened: its Begin and End.
fn unopened(
    inum: u32,
    source: std::io::Error,
    full: bool,
    each: &mut dyn FnMut(Part) -> bool,
) -> bool {
    each(Part::Begin {
        netns: inum,
        t0_ns: Clock::mono_now_ns(),
        full,
    }) && each(Part::End {
        ended: Err(DiagError::Io {
            call: "open netns",
            source,
        }),
        note: None,
    })
}

impl LiveSource {
    /// One namespace over sock_diag, a part at a time.
    /// `bytecode` empty: every socket, a full dump.
    fn dump(
        &self,
        ns: &Netns,
        ext: u8,
        bytecode: &[u8],
        note: Option<String>,
        each: &mut dyn FnMut(Part) -> bool,
    ) -> bool {
        let begin = Part::Begin {
            netns: ns.inum,
            t0_ns: Clock::mono_now_ns(),
            full: bytecode.is_empty(),
        };
        if !each(begin) {
            return false;
        }
        let mut go_on = true;
        let ended = bridged(
            |tx| {
                let emit = Box::new(move |part| tx.send(part).is_ok());
                ns.dump_batched(ext, bytecode, &self.cancel, PART, emit)
            },
            &mut |part| {
                go_on = each(Part::Sockets(part));
                go_on
            },
        )
        .unwrap_or_else(|source| {
            Err(DiagError::Io {
                call: "thread spawn",
                source,
            })
        });
        go_on && each(Part::End { ended, note })
    }
}

impl SocketSource for LiveSource {
    fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool) {
        self.parts_in_ports(scope, ext, &[], each)
    }

    fn parts_in_ports(
        &self,
        scope: &Scope,
        ext: u8,
        bytecode: &[u8],
        each: &mut dyn FnMut(Part) -> bool,
    ) {
        let full = bytecode.is_empty();
        each_netns(scope, |inum, ns| match ns {
            // Each dump checks too; this spares the setns thread of the rest.
            _ if self.cancel.is_cancelled() => {
                each(Part::Begin {
                    netns: inum,
                    t0_ns: Clock::mono_now_ns(),
                    full,
                }) && each(Part::End {
                    ended: Err(DiagError::Cancelled),
                    note: None,
                })
            }
            Ok(ns) => self.dump(ns, ext, bytecode, None, each),
            Err(source) => unopened(inum, source, full, each),
        })
    }
}

/// The `iter/tcp` iterator ([`crate::iter`]), skipping in the kernel what `filter` rejects
/// and the optional `fields` not asked for; a namespace it cannot read is dumped over
/// sock_diag instead, with a note. Reads stop once `cancel` is set (the client left).
#[derive(Debug)]
pub struct IterSource<'a> {
    pub iter: &'a TcpIter,
    pub filter: KernelFilter,
    pub fields: Fields,
    pub cancel: Cancel,
}

impl IterSource<'_> {
    fn dump(&self, ns: &Netns, ext: u8, each: &mut dyn FnMut(Part) -> bool) -> bool {
        let begin = Part::Begin {
            netns: ns.inum,
            t0_ns: Clock::mono_now_ns(),
            full: false,
        };
        // Begun at the first part: an iterator that fails before it is replaced by sock_diag.
        let mut begin = Some(begin);
        let mut go_on = true;
        let read = bridged(
            |tx| {
                self.iter.dump_parts(
                    ns,
                    Some(self.filter),
                    self.fields,
                    &self.cancel,
                    PART,
                    &mut |part| tx.send(part).is_ok(),
                )
            },
            &mut |part| {
                go_on = begin.take().is_none_or(&mut *each) && each(Part::Sockets(part));
                go_on
            },
        )
        .unwrap_or_else(|e| Err(IterError::Setns(e)));
        if !go_on {
            return false;
        }
        let ended = match read {
            Ok(()) => Ok(()),
            Err(IterError::Cancelled) => Err(DiagError::Cancelled),
            Err(e) if begin.is_some() => {
                let note = format!(
                    "the socket iterator failed for netns {} ({}): dumped over sock_diag",
                    ns.inum,
                    with_causes(&e)
                );
                let live = LiveSource {
                    cancel: self.cancel.clone(),
                };
                return live.dump(ns, ext, &[], Some(note), each);
            }
            Err(e) => Err(DiagError::Io {
                call: "reading the socket iterator",
                source: std::io::Error::other(with_causes(&e)),
            }),
        };
        begin.take().is_none_or(&mut *each) && each(Part::End { ended, note: None })
    }
}

impl SocketSource for IterSource<'_> {
    fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool) {
        each_netns(scope, |inum, ns| match ns {
            Ok(ns) => self.dump(ns, ext, each),
            Err(source) => unopened(inum, source, false, each),
        })
    }
}

impl SocketSource for Box<dyn SocketSource + Send> {
    fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool) {
        (**self).parts(scope, ext, each)
    }

    fn parts_in_ports(
        &self,
        scope: &Scope,
        ext: u8,
        bytecode: &[u8],
        each: &mut dyn FnMut(Part) -> bool,
    ) {
        (**self).parts_in_ports(scope, ext, bytecode, each)
    }
}

/// Recorded dumps, by namespace inode, replayed as if the kernel answered them now.
#[derive(Clone, Debug, Default)]
pub struct ReplaySource {
    pub namespaces: BTreeMap<u32, Vec<DiagSock>>,
    /// Namespaces that could not be opened (e.g. the agent was out of descriptors).
    pub unreachable: Vec<u32>,
    /// Sockets a part ([`PART`] with 0).
    pub part: usize,
}

impl ReplaySource {
    /// A recording (`netmon snapshot --dump-to`, `ss -D`), replayed as namespace `netns`.
    pub fn from_recording(netns: u32, recording: &[u8]) -> Result<Self, DiagError> {
        Ok(Self {
            namespaces: BTreeMap::from([(netns, sock_diag::parse_recording(recording)?)]),
            ..Self::default()
        })
    }
}

impl SocketSource for ReplaySource {
    /// Replays the attributes that were recorded, whatever `ext` asks.
    fn parts(&self, scope: &Scope, _ext: u8, each: &mut dyn FnMut(Part) -> bool) {
        let replay = |(netns, socks): (&u32, &Vec<DiagSock>),
                      each: &mut dyn FnMut(Part) -> bool| {
            if self.unreachable.contains(netns) {
                return unopened(
                    *netns,
                    std::io::Error::from_raw_os_error(libc::EMFILE),
                    true,
                    each,
                );
            }
            let begin = Part::Begin {
                netns: *netns,
                t0_ns: Clock::mono_now_ns(),
                full: true,
            };
            each(begin)
                && socks
                    .chunks(if self.part == 0 { PART } else { self.part })
                    .all(|part| each(Part::Sockets(part.to_vec())))
                && each(Part::End {
                    ended: Ok(()),
                    note: None,
                })
        };
        match scope {
            Scope::Caller(ns) => {
                if let Some(found) = self.namespaces.get_key_value(&ns.inum) {
                    replay(found, each);
                }
            }
            Scope::All => {
                for found in &self.namespaces {
                    if !replay(found, each) {
                        break;
                    }
                }
            }
        }
    }
}

/// The table is out of reach: the agent's tracer stopped.
#[derive(Debug, thiserror::Error)]
#[error("the agent's tracer stopped")]
pub struct TracerStopped;

/// What a table adds to a dump, a part at a time: ages and owners of its rows, and the
/// closed history.
pub trait Enrich {
    /// Merges a part of a dump of every socket of a namespace into the table
    /// ([`Table::reconcile_batch`]), and returns its rows with what the table knows of each.
    fn merge(
        &mut self,
        r: Reconcile,
        part: Vec<DiagSock>,
    ) -> Result<(Reconcile, Vec<Row>), TracerStopped>;

    /// Ends a reconcile whose dump was merged whole ([`Table::reconcile_end`]).
    fn merge_end(&mut self, r: Reconcile) -> Result<(), TracerStopped>;

    /// The rows of a part of a dump the table must not reconcile with (see [`Part::Begin`]),
    /// with what the table knows of each socket.
    fn lookup(&mut self, netns: u32, part: Vec<DiagSock>) -> Result<Vec<Row>, TracerStopped>;

    /// The next part of the closed connections of these namespaces (all with `None`) that
    /// ended at or after `since_ns`, oldest first ([`Table::closed_part`]).
    fn closed_part(
        &mut self,
        netns: Option<&[u32]>,
        since_ns: u64,
        cursor: ClosedCursor,
    ) -> Result<ClosedPart, TracerStopped>;

    /// The sockets of `netns` the table itself serves for a request (`--max-age`), or why it
    /// cannot ([`crate::served::select`]).
    fn served(
        &mut self,
        netns: u32,
        max_age_ns: u64,
        filter: &Filter,
        access: Access,
    ) -> Result<Result<Served, Stale>, TracerStopped> {
        let _ = (netns, max_age_ns, filter, access);
        Ok(Err(Stale::NoTable))
    }

    /// The rows of a part of [`Served::cookies`].
    fn served_rows(
        &mut self,
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
    ) -> Result<Vec<Row>, TracerStopped> {
        let _ = (netns, cookies, now_ns);
        Ok(Vec::new())
    }

    /// Asks for the rows of a part of [`Served::cookies`] and returns what gets them: a
    /// table on another thread (the agent's tracer) makes them while the caller renders the
    /// part before.
    fn served_rows_ahead(
        &mut self,
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
    ) -> Result<RowsAhead, TracerStopped> {
        self.served_rows(netns, cookies, now_ns)
            .map(RowsAhead::Made)
    }
}

/// Rows asked for ahead ([`Enrich::served_rows_ahead`]).
pub enum RowsAhead {
    Made(Vec<Row>),
    Asked(tokio::sync::oneshot::Receiver<Vec<Row>>),
}

impl RowsAhead {
    /// The rows, once made (blocking: not from the runtime's tasks).
    pub fn rows(self) -> Result<Vec<Row>, TracerStopped> {
        match self {
            Self::Made(rows) => Ok(rows),
            Self::Asked(rx) => rx.blocking_recv().map_err(|_| TracerStopped),
        }
    }
}

impl Enrich for Table {
    fn merge(
        &mut self,
        mut r: Reconcile,
        part: Vec<DiagSock>,
    ) -> Result<(Reconcile, Vec<Row>), TracerStopped> {
        self.reconcile_batch(&mut r, &part);
        let netns = r.netns();
        let rows = part
            .into_iter()
            .map(|s| Row::new(s, netns, Some(self)))
            .collect();
        Ok((r, rows))
    }

    fn merge_end(&mut self, r: Reconcile) -> Result<(), TracerStopped> {
        self.reconcile_end(r);
        Ok(())
    }

    fn lookup(&mut self, netns: u32, part: Vec<DiagSock>) -> Result<Vec<Row>, TracerStopped> {
        Ok(part
            .into_iter()
            .map(|s| Row::new(s, netns, Some(self)))
            .collect())
    }

    fn closed_part(
        &mut self,
        netns: Option<&[u32]>,
        since_ns: u64,
        cursor: ClosedCursor,
    ) -> Result<ClosedPart, TracerStopped> {
        Ok(Table::closed_part(
            self,
            netns,
            since_ns,
            cursor,
            CLOSED_PART,
        ))
    }

    fn served(
        &mut self,
        netns: u32,
        max_age_ns: u64,
        filter: &Filter,
        access: Access,
    ) -> Result<Result<Served, Stale>, TracerStopped> {
        let now_ns = Clock::mono_now_ns();
        Ok(served::select(
            self, netns, now_ns, max_age_ns, filter, access,
        ))
    }

    fn served_rows(
        &mut self,
        netns: u32,
        cookies: Vec<served::Key>,
        now_ns: u64,
    ) -> Result<Vec<Row>, TracerStopped> {
        Ok(served::rows(self, netns, &cookies, now_ns))
    }
}

/// No table, as ss: owners (if asked) from a /proc walk, no ages, no history.
#[derive(Debug, Default)]
pub struct ProcOwners(pub Option<SocketOwners>);

impl Enrich for ProcOwners {
    fn merge(
        &mut self,
        r: Reconcile,
        part: Vec<DiagSock>,
    ) -> Result<(Reconcile, Vec<Row>), TracerStopped> {
        let rows = self.lookup(r.netns(), part)?;
        Ok((r, rows))
    }

    fn merge_end(&mut self, _r: Reconcile) -> Result<(), TracerStopped> {
        Ok(())
    }

    fn lookup(&mut self, netns: u32, part: Vec<DiagSock>) -> Result<Vec<Row>, TracerStopped> {
        Ok(part
            .into_iter()
            .map(|s| Row {
                owner: self.0.as_ref().and_then(|o| o.get(s.inode)),
                ..Row::new(s, netns, None)
            })
            .collect())
    }

    fn closed_part(
        &mut self,
        _netns: Option<&[u32]>,
        _since_ns: u64,
        cursor: ClosedCursor,
    ) -> Result<ClosedPart, TracerStopped> {
        Ok(ClosedPart {
            closed: Vec::new(),
            cursor: ClosedCursor {
                end: cursor.next,
                ..cursor
            },
            evicted: 0,
        })
    }
}

/// What to show.
#[derive(Clone, Copy, Debug)]
pub struct What {
    /// Closed connections of the last this-many nanoseconds instead of live sockets.
    pub closed_within_ns: Option<u64>,
    /// The sock_diag attributes the options print (`SnapshotArgs::diag_ext`).
    pub ext: u8,
    /// Whether the rows need the table's owners or ages (`SnapshotArgs::wants_table`); a
    /// full dump is merged with the table whatever this says.
    pub table: bool,
    /// What the client may see: rows are redacted before they are filtered.
    pub access: Access,
}

impl Default for What {
    fn default() -> Self {
        Self {
            closed_within_ns: None,
            ext: 0,
            table: false,
            access: Access::Admin,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("dumping sockets of netns {netns}")]
    Dump {
        netns: u32,
        #[source]
        source: DiagError,
    },
    #[error(transparent)]
    Stopped(#[from] TracerStopped),
    #[error("writing the snapshot")]
    Output(#[from] std::io::Error),
}

/// A namespace being streamed.
struct Streaming {
    netns: u32,
    /// The table's reconcile with a full dump.
    reconcile: Option<Reconcile>,
    /// Parts rendered.
    parts: usize,
}

/// Makes a snapshot: the scope's sockets from `source`, each part merged with `table`,
/// redacted, filtered and rendered by `out` before the next part is read. Returns what the
/// user must know about what is missing (namespaces that could not be dumped); the caller
/// ends the rendering ([`Renderer::finish`]).
pub fn stream(
    source: &impl SocketSource,
    scope: &Scope,
    table: &mut impl Enrich,
    what: What,
    out: &mut Renderer<'_, impl Write>,
) -> Result<Vec<String>, StreamError> {
    if let Some(window) = what.closed_within_ns {
        let netns = match scope {
            Scope::Caller(ns) => Some(vec![ns.inum]),
            Scope::All => None,
        };
        let since_ns = Clock::mono_now_ns().saturating_sub(window);
        let mut cursor = ClosedCursor::START;
        while !cursor.done() {
            let mut part = table.closed_part(netns.as_deref(), since_ns, cursor)?;
            part.closed.retain(|c| what.access.closed(c));
            out.closed(part.closed, part.evicted)?;
            cursor = part.cursor;
        }
        return Ok(Vec::new());
    }
    let mut notes = Vec::new();
    let mut missing = Vec::new();
    let mut incomplete = Vec::new();
    let mut failed = None;
    let mut ns: Option<Streaming> = None;
    let mut step = |part: Part| -> Result<(), StreamError> {
        match part {
            Part::Begin { netns, t0_ns, full } => {
                ns = Some(Streaming {
                    netns,
                    reconcile: full.then(|| Reconcile::new(netns, t0_ns)),
                    parts: 0,
                });
            }
            Part::Sockets(socks) => {
                let Some(ns) = ns.as_mut() else {
                    return Ok(());
                };
                let mut rows = match ns.reconcile.take() {
                    Some(r) => {
                        let (r, rows) = table.merge(r, socks)?;
                        ns.reconcile = Some(r);
                        rows
                    }
                    None if what.table => table.lookup(ns.netns, socks)?,
                    None => socks
                        .into_iter()
                        .map(|s| Row::new(s, ns.netns, None))
                        .collect(),
                };
                for row in &mut rows {
                    what.access.redact(row);
                }
                ns.parts += 1;
                out.rows(rows, Clock::mono_now_ns())?;
            }
            Part::End { ended, note } => {
                notes.extend(note);
                let Some(ns) = ns.take() else {
                    return Ok(());
                };
                match (ended, scope) {
                    (Ok(()), _) => {
                        if let Some(r) = ns.reconcile {
                            table.merge_end(r)?;
                        }
                    }
                    // Every namespace: say which are missing rather than fail them all.
                    (Err(e), Scope::All) if ns.parts == 0 => {
                        missing.push(format!("{} ({})", ns.netns, with_causes(&e)))
                    }
                    (Err(e), Scope::All) => {
                        incomplete.push(format!("{} ({})", ns.netns, with_causes(&e)))
                    }
                    (Err(source), Scope::Caller(_)) => {
                        return Err(StreamError::Dump {
                            netns: ns.netns,
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    };
    source.parts(scope, what.ext, &mut |part| match step(part) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if !missing.is_empty() {
        notes.push(format!(
            "{} network namespaces are missing from this snapshot: {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !incomplete.is_empty() {
        notes.push(format!(
            "{} network namespaces are incomplete in this snapshot (their dump failed midway): \
             {}",
            incomplete.len(),
            incomplete.join(", ")
        ));
    }
    Ok(notes)
}

/// `e` and each of its causes once, as `{:#}` prints an anyhow error: a note built with `{e}`
/// alone would say which call failed and drop why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use netmon_common::TcpState;

    use super::*;

    pub(crate) fn diag(cookie: u64, state: TcpState, local: &str, remote: &str) -> DiagSock {
        DiagSock {
            inode: cookie as u32,
            ..DiagSock::fixture(cookie, state, local, remote)
        }
    }

    use crate::snapshot::tests::args;

    /// `netmon snapshot WORDS` from `source` through `table`: the output and the notes.
    fn snap(
        source: &impl SocketSource,
        scope: &Scope,
        table: &mut impl Enrich,
        words: &[&str],
        out: &mut impl Write,
    ) -> Result<Vec<String>, StreamError> {
        let args = args(words);
        let services = crate::filter::Services::from_text("ssh 22/tcp\nhttp-alt 8080/tcp\n");
        let filter = args.filter(&services).unwrap();
        let what = What {
            ext: args.diag_ext(),
            table: args.wants_table(&filter),
            ..What::default()
        };
        let clock = Clock::fixed(std::time::UNIX_EPOCH);
        let mut renderer = Renderer::new(&args, &filter, &services, clock, false, out);
        let missing = stream(source, scope, table, what, &mut renderer)?;
        let mut notes = renderer.finish()?;
        notes.extend(missing);
        Ok(notes)
    }

    fn lines(
        source: &impl SocketSource,
        scope: &Scope,
        table: &mut impl Enrich,
    ) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        let notes = snap(source, scope, table, &["-tanH"], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        (text.lines().map(str::to_owned).collect(), notes)
    }

    #[test]
    fn stream_merges_a_replayed_dump_with_the_table_and_scopes_by_namespace() {
        let me = Netns::current().unwrap();
        let source = ReplaySource {
            namespaces: BTreeMap::from([
                (
                    me.inum,
                    vec![diag(1, TcpState::Listen, "127.0.0.1:80", "0.0.0.0:0")],
                ),
                (
                    me.inum + 1,
                    vec![diag(2, TcpState::Established, "10.0.0.1:1", "10.0.0.2:2")],
                ),
            ]),
            ..Default::default()
        };
        let mut table = Table::new();
        let (got, _) = lines(&source, &Scope::Caller(me), &mut table);
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("127.0.0.1:80"), "{got:?}");
        assert_eq!(table.len(), 1, "the table learned the namespace it saw");
        let (got, _) = lines(&source, &Scope::All, &mut table);
        assert_eq!(got.len(), 2);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_reconcile_over_parts_drops_only_what_the_whole_dump_missed() {
        let me = Netns::current().unwrap();
        let socks: Vec<DiagSock> = (1..=10u64)
            .map(|c| diag(c, TcpState::Established, "10.0.0.1:1", "10.0.0.2:2"))
            .collect();
        let source = |socks: Vec<DiagSock>| ReplaySource {
            namespaces: BTreeMap::from([(me.inum, socks)]),
            part: 3,
            ..Default::default()
        };
        let mut table = Table::new();
        lines(&source(socks.clone()), &Scope::All, &mut table);
        assert_eq!(table.len(), 10, "every part was merged");
        // Sockets 4 and 9 are gone from the next dump (in parts too): only they go.
        let fewer = socks
            .into_iter()
            .filter(|s| s.cookie != 4 && s.cookie != 9)
            .collect();
        lines(&source(fewer), &Scope::All, &mut table);
        let mut live: Vec<u64> = table.live().map(|(c, _)| c).collect();
        live.sort_unstable();
        assert_eq!(live, [1, 2, 3, 5, 6, 7, 8, 10]);
    }

    #[test]
    fn namespaces_that_cannot_be_dumped_are_reported_not_skipped() {
        let me = Netns::current().unwrap();
        let listener = || vec![diag(1, TcpState::Listen, "127.0.0.1:80", "0.0.0.0:0")];
        let source = ReplaySource {
            namespaces: BTreeMap::from([(me.inum, listener()), (7, listener())]),
            unreachable: vec![7],
            ..Default::default()
        };
        let (got, notes) = lines(&source, &Scope::All, &mut Table::new());
        assert_eq!(got.len(), 1);
        assert_eq!(
            notes,
            [format!(
                "1 network namespaces are missing from this snapshot: 7 (sock_diag open netns \
                 failed: {})",
                std::io::Error::from_raw_os_error(libc::EMFILE)
            )]
        );
        let me_inum = me.inum;
        let source = ReplaySource {
            unreachable: vec![me.inum],
            ..source
        };
        let e = snap(
            &source,
            &Scope::Caller(me),
            &mut Table::new(),
            &["-tan"],
            &mut Vec::new(),
        );
        assert!(matches!(e, Err(StreamError::Dump { .. })), "{e:?}");
        // At the CLI edge, `{:#}` names each step and the errno once.
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e.unwrap_err())),
            format!(
                "dumping sockets of netns {}: sock_diag open netns failed: {}",
                me_inum,
                std::io::Error::from_raw_os_error(libc::EMFILE)
            )
        );
    }

    /// A source that notes the heap this thread holds each time it hands out a part: what
    /// the pipeline kept of the parts before.
    struct Weighed<'a> {
        inner: ReplaySource,
        held: &'a std::cell::RefCell<Vec<isize>>,
    }

    impl SocketSource for Weighed<'_> {
        fn parts(&self, scope: &Scope, ext: u8, each: &mut dyn FnMut(Part) -> bool) {
            self.inner.parts(scope, ext, &mut |part| {
                if matches!(part, Part::Sockets(_)) {
                    let now = crate::heap::held();
                    self.held.borrow_mut().push(now);
                }
                each(part)
            })
        }
    }

    fn many(n: u64) -> Vec<DiagSock> {
        (0..n)
            .map(|i| {
                let local = format!("10.{}.{}.{}:{}", i >> 16 & 255, i >> 8 & 255, i & 255, 443);
                let remote = format!("192.168.{}.{}:{}", i >> 8 & 255, i & 255, 1024 + i % 60000);
                diag(i + 1, TcpState::Established, &local, &remote)
            })
            .collect()
    }

    #[test]
    fn a_dump_of_many_parts_is_rendered_holding_a_part_at_a_time() {
        let me = Netns::current().unwrap();
        const PARTS: usize = 40;
        // Parts of 4,096: 160k rows, past two of ss's text batches, so that what a table holds
        // from one part to the next is a batch's cells, whatever the rows.
        const PART: usize = 4096;
        let inner = ReplaySource {
            namespaces: BTreeMap::from([(me.inum, many((PARTS * PART) as u64))]),
            part: PART,
            ..Default::default()
        };
        let held = std::cell::RefCell::new(Vec::with_capacity(PARTS + 1));
        let source = Weighed { inner, held: &held };
        for words in [
            &["-tan"][..],
            &["-tan", "-f", "json"],
            &["-tan", "--count", "state,local-port"],
        ] {
            held.borrow_mut().clear();
            let (notes, heap) = crate::heap::measure(|| {
                snap(
                    &source,
                    &Scope::All,
                    &mut ProcOwners(None),
                    words,
                    &mut std::io::sink(),
                )
                .unwrap()
            });
            assert!(notes.is_empty(), "{notes:?}");
            let held = held.borrow();
            assert_eq!(held.len(), PARTS, "{words:?}");
            // What stays from one part to the next: the table's current batch of cells
            // (coded, less than ss's ~4 MiB of text), the counts' groups; never the rows of
            // the parts before.
            let part_rows = PART * size_of::<Row>();
            let most = held.iter().max().unwrap() - held[0];
            assert!(
                most < (part_rows + crate::columns::SS_BATCH_BYTES) as isize,
                "{words:?}: {most} bytes more at a part than at the first ({part_rows} of rows \
                 a part)"
            );
            let grown = held[PARTS - 1] - held[PARTS / 2];
            assert!(
                grown < part_rows as isize,
                "{words:?}: the heap grew {grown} bytes over the last {} parts",
                PARTS / 2
            );
            // At most two parts (the one rendered, the next one made), the text batch, and
            // the groups: far below the rows of the whole dump.
            let whole = PARTS * part_rows;
            let bound = 3 * part_rows + 2 * crate::columns::SS_BATCH_BYTES;
            assert!(
                (heap.peak as usize) < bound && bound < whole / 2,
                "{words:?}: peak {} bytes, bound {bound}, the whole dump's rows {whole}",
                heap.peak
            );
        }
    }

    /// Sockets like the soak's namespaces: TIME-WAIT from 127.1.x.y (a few established) to
    /// one listener.
    fn soak_like(n: u64, first_cookie: u64) -> Vec<DiagSock> {
        (0..n)
            .map(|k| {
                let local = format!(
                    "127.1.{}.{}:{}",
                    k % 1000 / 250,
                    k % 250 + 1,
                    30_000 + k % 30_000
                );
                let state = if k % 16 == 0 {
                    TcpState::Established
                } else {
                    TcpState::TimeWait
                };
                diag(first_cookie + k, state, &local, "127.0.0.1:41234")
            })
            .collect()
    }

    #[test]
    fn a_64k_socket_all_netns_reply_to_a_client_that_stopped_reading_holds_under_2_5_mb() {
        use crate::{
            budget::Budget,
            reply::{Frame, FrameWriter},
        };
        let source = ReplaySource {
            namespaces: BTreeMap::from([
                (4_026_531_840, soak_like(60_000, 1)),
                (4_026_532_000, soak_like(4_000, 100_000)),
            ]),
            ..Default::default()
        };
        let words = ["-tan", "--all-netns"];
        let mut whole = Vec::new();
        snap(
            &source,
            &Scope::All,
            &mut ProcOwners(None),
            &words,
            &mut whole,
        )
        .unwrap();
        assert_eq!(whole.iter().filter(|&&b| b == b'\n').count(), 64_001);
        // The client never reads: every frame stays queued, past the window deflated.
        let budget = Budget::new(256 << 20, 64 << 20);
        let (mut out, mut rx) = FrameWriter::new(budget.clone(), 0, Cancel::default());
        let ((), heap) = crate::heap::measure(|| {
            snap(
                &source,
                &Scope::All,
                &mut ProcOwners(None),
                &words,
                &mut out,
            )
            .unwrap();
        });
        drop(out);
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        let held: usize = frames.iter().map(Frame::held_len).sum();
        assert_eq!(budget.held(0), (held, held));
        // In flight, all along: the table's cells of the whole reply (one ss batch: ~4.6 MB
        // of text), a part of sockets and rows, the frames queued (~0.6 MB) and a deflater's
        // state. Measured 2.03 MB; 11.7 MB with the cells held as text and an end offset
        // each, parts of 4,096 and frames that kept their deflater's 32 KiB output buffer.
        assert!(
            heap.peak < 2_500_000,
            "peak {} bytes for a reply of {} ({held} held in frames)",
            heap.peak,
            whole.len()
        );
        // What stays is the frames: what the budget counts, not more.
        assert!(
            heap.retained < (held + held / 8) as isize,
            "{} bytes retained, {held} counted by the budget",
            heap.retained
        );
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.wire().unwrap()).collect();
        let mut plain = bytes::BytesMut::new();
        for chunk in whole.chunks(crate::reply::CHUNK) {
            crate::wire::put_frame(&mut plain, crate::wire::FRAME_DATA, chunk);
        }
        assert_eq!(wire, plain);
    }

    #[test]
    fn parts_render_as_the_whole_does() {
        let me = Netns::current().unwrap();
        let dump: Vec<DiagSock> = many(500)
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.state = [TcpState::Established, TcpState::TimeWait, TcpState::Listen][i % 3];
                s.recv_q = (i * 37 % 1000) as u32;
                s
            })
            .collect();
        let whole = ReplaySource {
            namespaces: BTreeMap::from([(me.inum, dump)]),
            part: usize::MAX,
            ..Default::default()
        };
        for words in [
            &["-tan"][..],
            &["-ta"],
            &["-tn", "state", "established"],
            &["-tan", "-f", "json"],
            &["-tan", "--count", "state,peer-port"],
            &["-tanH", "dport", ">", ":1200"],
        ] {
            let render = |source: &ReplaySource| {
                let mut out = Vec::new();
                snap(source, &Scope::All, &mut Table::new(), words, &mut out).unwrap();
                String::from_utf8(out).unwrap()
            };
            let at_once = render(&whole);
            assert!(at_once.lines().count() > 10, "{words:?}: {at_once}");
            for part in [1, 7, 100] {
                let parts = ReplaySource {
                    part,
                    ..whole.clone()
                };
                assert_eq!(render(&parts), at_once, "{words:?} in parts of {part}");
            }
        }
    }

    /// Renders a recorded fixture (netmon/testdata, made by record-fixture.py there) as
    /// `netmon snapshot --from-dump FILE ARGS` does.
    fn replay(recording: &[u8], words: &[&str]) -> String {
        let me = Netns::current().unwrap();
        let source = ReplaySource::from_recording(me.inum, recording).unwrap();
        let mut out = Vec::new();
        snap(
            &source,
            &Scope::Caller(me),
            &mut ProcOwners(None),
            words,
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    const FIXTURE: &[u8] = include_bytes!("../testdata/snapshot.dump");
    const FIXTURE_MI: &[u8] = include_bytes!("../testdata/snapshot-mi.dump");

    #[test]
    #[cfg(target_endian = "little")]
    fn a_replayed_recording_prints_what_ss_prints_from_the_same_file() {
        // The expected texts are `TCPDIAG_FILE=FILE ss ARGS` (iproute2 6.1), trailing blanks
        // removed: ss replaying the very bytes netmon replays.
        let cases = [
            (
                FIXTURE,
                "-tan",
                include_str!("../testdata/snapshot.ss-tan.txt"),
            ),
            (
                FIXTURE,
                "-tano",
                include_str!("../testdata/snapshot.ss-tano.txt"),
            ),
            (
                FIXTURE_MI,
                "-tanmi",
                include_str!("../testdata/snapshot-mi.ss-tanmi.txt"),
            ),
        ];
        for (recording, flags, ss) in cases {
            assert_eq!(replay(recording, &[flags]), ss, "{flags}");
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_replayed_recording_is_filtered_and_named_as_live_sockets_are() {
        // ss sends states to the kernel, so its replay of a file shows every state whatever
        // it is asked; netmon filters in userspace. The first text is ss's
        // (`TCPDIAG_FILE=FILE ss -tH`, services from Debian's /etc/services) less its LISTEN
        // and TIME-WAIT rows.
        assert_eq!(
            replay(FIXTURE, &["-t", "-H"]),
            "\
ESTAB      3      0                   [::1]:9090                  [::1]:35460
ESTAB      0      0               127.0.0.1:46360             127.0.0.1:9090
ESTAB      0      0      [::ffff:127.0.0.1]:9090     [::ffff:127.0.0.1]:46360
ESTAB      0      0               127.0.0.1:49276             127.0.0.1:http-alt
FIN-WAIT-2 0      0               127.0.0.1:49300             127.0.0.1:http-alt
ESTAB      0      0               127.0.0.1:49310             127.0.0.1:http-alt
ESTAB      0      0                   [::1]:35460                 [::1]:9090
ESTAB      5      0               127.0.0.1:http-alt          127.0.0.1:49276
ESTAB      0      0               127.0.0.1:http-alt          127.0.0.1:49310
CLOSE-WAIT 1      0               127.0.0.1:http-alt          127.0.0.1:49300
"
        );
        assert_eq!(
            replay(
                FIXTURE,
                &[
                    "-Hn",
                    "state",
                    "listening",
                    "(",
                    "sport",
                    "=",
                    ":ssh",
                    "or",
                    "dport",
                    "=",
                    ":443",
                    "or",
                    "src",
                    "[::1]",
                    ")"
                ]
            ),
            "\
0      16         [::1]:443    [::]:*
0      128    127.0.0.1:22  0.0.0.0:*
"
        );
        let json = replay(FIXTURE, &["-an", "-f", "json", "state", "time-wait"]);
        let rec: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(rec["local"], "127.0.0.1:49290");
        assert_eq!(rec["peer"], "127.0.0.1:8080");
        assert_eq!(rec["timer"]["kind"], "timewait");
        assert_eq!(rec["inode"], 0);
        assert_eq!(
            replay(FIXTURE, &["-an", "--count", "state"]),
            "Count State\n    8 ESTAB\n    4 LISTEN\n    1 CLOSE-WAIT\n    1 FIN-WAIT-2\n    1 TIME-WAIT\n"
        );
    }

    #[test]
    fn the_fallback_names_owners_from_a_proc_walk() {
        let me = Netns::current().unwrap();
        let source = ReplaySource {
            namespaces: BTreeMap::from([(
                me.inum,
                vec![diag(7, TcpState::Listen, "127.0.0.1:80", "0.0.0.0:0")],
            )]),
            ..Default::default()
        };
        let owner = crate::table::Owner {
            task: crate::decode::Task::new(55, 55, 0, "sshd"),
            fd: Some(3),
        };
        let mut enrich = ProcOwners(Some([(7, owner)].into_iter().collect()));
        let mut out = Vec::new();
        snap(
            &source,
            &Scope::Caller(me),
            &mut enrich,
            &["-tlpH"],
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with(" users:((\"sshd\",pid=55,fd=3))\n"), "{out}");
        let mut out = Vec::new();
        snap(
            &source,
            &Scope::Caller(Netns::current().unwrap()),
            &mut enrich,
            &["-tleH"],
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with(" age:- in-state:-\n"),
            "no table, no ages: {out}"
        );
    }
}
