//! What a snapshot reply holds while it waits for its client: its frames, deflated once the
//! client falls behind, each holding its share of the in-flight budget until it is sent.

use std::{
    io::{self, Write},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::{
    budget::{Budget, Grant},
    sock_diag::Cancel,
    wire::{self, FRAME_DATA},
};

/// Rendered output goes to the client in frames of this size.
pub const CHUNK: usize = 64 * 1024;
/// Unsent bytes (as sent) one reply queues before its next frames are held deflated: a
/// client that reads keeps its reply under this, and pays nothing for it. Four frames, plus
/// what the socket's own buffer holds: at 1 MiB, a client that stopped reading kept 1 MiB of
/// plain frames for the rest of its deadline, more than its whole deflated 64k-socket reply.
pub const WINDOW: usize = 256 << 10;
/// How long, in all, one renderer may wait for its client to get back under the window
/// before it deflates: a client that reads as fast as the renderer writes only lags by
/// moments, while one that stopped reading would otherwise hold its slot and thread.
const PATIENCE: Duration = Duration::from_millis(250);
/// Deflate level. On a real `ss -tan` text of 100k sockets (7 MB, frames of 64 KiB, release
/// build) levels 1, 2, 3 and 6 made it 4.2x, 5.4x, 6.1x and 7.1x smaller in 31, 40, 56 and
/// 118 ms: 2 takes most of the gain at 175 MB/s, paid only for clients that stopped reading.
const LEVEL: u8 = 2;
/// How often a renderer waiting for its client looks whether the reply was cancelled (sent
/// frames wake it at once).
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// A frame of a reply and the share of the in-flight budget it holds until it is dropped
/// (sent, or given up with its reply).
#[derive(Debug)]
pub struct Frame {
    held: Bytes,
    /// The frame's length on the wire when `held` is deflated.
    inflated_len: Option<usize>,
    _grant: Grant,
    _queued: Queued,
}

impl Frame {
    /// The frame as it goes on the wire.
    pub fn wire(&self) -> io::Result<Bytes> {
        match self.inflated_len {
            None => Ok(self.held.clone()),
            Some(len) => miniz_oxide::inflate::decompress_to_vec_with_limit(&self.held, len)
                .map(Bytes::from)
                .map_err(|e| io::Error::other(format!("a held reply frame: {e}"))),
        }
    }

    /// Bytes this frame holds (what it takes from the budget).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }
}

/// Wire bytes a reply has queued and not yet sent, and the renderer waiting for them to get
/// back under [`WINDOW`].
#[derive(Debug, Default)]
struct Queue {
    bytes: AtomicUsize,
    /// Taken by a waiting renderer around its check, and by a sent frame that brings the
    /// queue under the window around its wake-up, so that the wake-up is not lost between the
    /// check and the wait.
    lock: Mutex<()>,
    under_window: Condvar,
}

impl Queue {
    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One frame's wire length counted in its reply's queue until the frame is dropped.
#[derive(Debug)]
struct Queued {
    queue: Arc<Queue>,
    len: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let before = self.queue.bytes.fetch_sub(self.len, Ordering::Relaxed);
        // The renderer is woken as soon as the client takes the queue under the window: a
        // client reads a 64 KiB frame in far less than a 2 ms poll, which kept the renderer
        // of a 100k-socket reply asleep 12 times (~24 ms) while the client waited for it.
        if before >= WINDOW && before - self.len < WINDOW {
            let _held = self.queue.lock.lock();
            self.queue.under_window.notify_one();
        }
    }
}

/// Frames what the renderer writes and queues full frames for the connection's writer. The
/// renderer does not wait for a client that stopped reading (beyond [`PATIENCE`] in all): a
/// frame takes its bytes from the in-flight budget of the agent and of the client's uid, a
/// reply that finds it spent fails instead of holding a thread, and the frames queued past
/// [`WINDOW`] are held deflated.
pub struct FrameWriter {
    buf: Vec<u8>,
    tx: mpsc::UnboundedSender<Frame>,
    budget: Arc<Budget>,
    uid: u32,
    cancel: Cancel,
    /// Wire bytes queued and not yet sent.
    queue: Arc<Queue>,
    patience: Duration,
    /// Time spent waiting for the client, all frames together.
    waited: Duration,
}

impl FrameWriter {
    /// A writer whose frames come out of the returned receiver, in order.
    pub fn new(
        budget: Arc<Budget>,
        uid: u32,
        cancel: Cancel,
    ) -> (Self, mpsc::UnboundedReceiver<Frame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Self {
            buf: Vec::with_capacity(CHUNK),
            tx,
            budget,
            uid,
            cancel,
            queue: Arc::default(),
            patience: PATIENCE,
            waited: Duration::ZERO,
        };
        (writer, rx)
    }

    fn queued(&self) -> usize {
        self.queue.bytes()
    }

    /// Whether the client is behind by the window, after waiting for it within what is left
    /// of the patience.
    fn behind(&mut self) -> bool {
        if self.queued() < WINDOW {
            return false;
        }
        let started = Instant::now();
        let deadline = started + self.patience;
        let mut held = self.queue.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.queue.bytes() >= WINDOW && !self.cancel.is_cancelled() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A cancel (the client hung up) sends nothing: seen within a few milliseconds.
            let nap = (deadline - now).min(CANCEL_POLL);
            held = self
                .queue
                .under_window
                .wait_timeout(held, nap)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(held);
        let waited = started.elapsed();
        self.waited += waited;
        self.patience = self.patience.saturating_sub(waited);
        self.queued() >= WINDOW
    }

    fn send(&mut self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "client gone"));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut frame = BytesMut::with_capacity(self.buf.len() + 8);
        wire::put_frame(&mut frame, FRAME_DATA, &self.buf);
        self.buf.clear();
        let len = frame.len();
        let (held, inflated_len) = if self.behind() {
            let mut deflated = miniz_oxide::deflate::compress_to_vec(&frame, LEVEL);
            // The output starts with room for half the input: a 64 KiB frame of table text
            // deflates to ~5 KiB, and without this each held frame kept 32 KiB (the budget
            // counted the 5).
            deflated.shrink_to_fit();
            (Bytes::from(deflated), Some(len))
        } else {
            (frame.freeze(), None)
        };
        let grant = self
            .budget
            .take(self.uid, held.len())
            .map_err(io::Error::other)?;
        self.queue.bytes.fetch_add(len, Ordering::Relaxed);
        let frame = Frame {
            held,
            inflated_len,
            _grant: grant,
            _queued: Queued {
                queue: self.queue.clone(),
                len,
            },
        };
        self.tx
            .send(frame)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines like a rendered `snapshot -tan --all-netns`: padded columns, varied numbers.
    fn table_text(rows: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..rows {
            writeln!(
                text,
                "{:<10} {:<6} {:<6} {:>20}:{:<6} {:>20}:{:<6} {:<10}",
                ["ESTAB", "TIME-WAIT", "LISTEN"][i % 3],
                i % 7,
                (i * 31) % 1000,
                format!("127.{}.{}.{}", i % 5, (i / 7) % 250, i % 250),
                40_000 + (i * 13) % 25_000,
                format!("127.1.{}.{}", (i / 3) % 250, (i * 7) % 250),
                8080 + i % 3,
                4_026_531_840u64 + (i % 4) as u64,
            )
            .unwrap();
        }
        text
    }

    fn wire_of(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.wire().unwrap()).collect()
    }

    fn plain_frames(text: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for chunk in text.chunks(CHUNK) {
            wire::put_frame(&mut out, FRAME_DATA, chunk);
        }
        out.to_vec()
    }

    #[test]
    fn a_client_that_stopped_reading_holds_its_reply_deflated_and_gets_it_whole() {
        let budget = Budget::new(256 << 20, 64 << 20);
        let (mut w, mut rx) = FrameWriter::new(budget.clone(), 1000, Cancel::default());
        let text = table_text(100_000);
        let ((), heap) = crate::heap::measure(|| {
            w.write_all(&text).unwrap();
            w.flush().unwrap();
        });
        // The renderer waited for the client once, within its patience, not per frame (~2,300
        // frames). Measured around the waits only: deflating takes seconds in a debug build
        // on a loaded machine, and is not waiting. One 2 ms poll may overshoot its patience.
        assert!(
            w.waited >= PATIENCE && w.waited < PATIENCE + Duration::from_millis(500),
            "{:?}",
            w.waited
        );
        drop(w);
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        let held: usize = frames.iter().map(Frame::held_len).sum();
        assert_eq!(budget.held(1000), (held, held));
        // The frames hold what the budget counts, not their deflater's output buffers.
        assert!(
            heap.retained < (held + held / 8) as isize,
            "{} bytes retained, {held} counted",
            heap.retained
        );
        // The window goes as it is; the rest a fraction of its size.
        let plain = frames.iter().filter(|f| f.inflated_len.is_none()).count();
        assert_eq!(plain, WINDOW.div_ceil(CHUNK + wire::FRAME_HEADER));
        assert!(
            held < text.len() / 3,
            "held {held} of {} bytes rendered",
            text.len()
        );
        assert_eq!(wire_of(&frames), plain_frames(&text));
        drop(frames);
        assert_eq!(budget.held(1000), (0, 0));
    }

    #[test]
    fn a_client_that_reads_gets_plain_frames() {
        let budget = Budget::new(256 << 20, 64 << 20);
        let (mut w, mut rx) = FrameWriter::new(budget.clone(), 1000, Cancel::default());
        // However long the reader is kept off the CPU on a loaded machine.
        w.patience = Duration::from_secs(60);
        let text = table_text(100_000);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut deflated = 0;
            while let Some(f) = rx.blocking_recv() {
                deflated += usize::from(f.inflated_len.is_some());
                got.extend_from_slice(&f.wire().unwrap());
            }
            (got, deflated)
        });
        w.write_all(&text).unwrap();
        w.flush().unwrap();
        drop(w);
        let (got, deflated) = reader.join().unwrap();
        assert_eq!(deflated, 0);
        assert_eq!(got, plain_frames(&text));
        assert_eq!(budget.held(1000), (0, 0));
    }

    #[test]
    fn a_reply_beyond_the_in_flight_budget_fails_instead_of_waiting() {
        let budget = Budget::new(1 << 20, 100 << 10);
        let (mut w, mut rx) = FrameWriter::new(budget.clone(), 1000, Cancel::default());
        w.write_all(&[b'x'; CHUNK]).unwrap();
        let e = w.write_all(&[b'x'; CHUNK]).unwrap_err();
        assert!(e.to_string().contains("replies unread"), "{e}");
        // Another user is not held back by the first one's unread reply.
        let _other = budget.take(1001, 100 << 10).unwrap();
        // Sending the first frame gives its budget back.
        drop(rx.try_recv().unwrap());
        assert_eq!(budget.held(1000), (100 << 10, 0));
    }

    #[test]
    fn a_cancelled_reply_stops_at_its_next_frame() {
        let cancel = Cancel::default();
        let (mut w, _rx) = FrameWriter::new(Budget::new(1 << 30, 1 << 30), 0, cancel.clone());
        w.write_all(&[b'x'; CHUNK]).unwrap();
        cancel.cancel();
        let e = w.write_all(&[b'x'; CHUNK]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
