//! The agent's wire protocol: a versioned request (independent of the command line's
//! arguments) and a framed reply that the client checks for completeness.
//!
//! Request: one JSON line, a [`Request`] of at most [`MAX_REQUEST`] bytes.
//! Reply: one JSON line, a [`ReplyHeader`] (a refused request ends there); then frames, each a
//! tag byte, a big-endian `u32` length and that many bytes: [`FRAME_DATA`] frames carry the
//! rendered output, and one final [`FRAME_TRAILER`] frame carries a JSON [`Trailer`] saying
//! whether the output is complete. A reply that ends before its trailer is truncated.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::{count::CountBy, output::Format, snapshot::SnapshotArgs, tracer::LossTotals};

/// Bumped when a request or reply changes incompatibly.
pub const VERSION: u32 = 1;
/// The largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;
pub const FRAME_DATA: u8 = b'D';
pub const FRAME_TRAILER: u8 = b'T';
pub const FRAME_HEADER: usize = 5;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    #[serde(default)]
    pub snapshot: SnapshotRequest,
    /// A `netmon top` screen instead of a snapshot: the reply's data is one JSON
    /// [`crate::top::model::Model`]. (An agent older than this field refuses it as an
    /// unknown field.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<crate::top::model::Query>,
}

impl Request {
    pub fn new(args: &SnapshotArgs) -> Self {
        Self {
            version: VERSION,
            snapshot: SnapshotRequest::from(args),
            top: None,
        }
    }

    pub fn top(query: crate::top::model::Query) -> Self {
        Self {
            version: VERSION,
            snapshot: SnapshotRequest::default(),
            top: Some(query),
        }
    }
}

/// What a snapshot asks for: the options that reach the agent, in wire form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotRequest {
    pub all: bool,
    pub listening: bool,
    pub numeric: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub no_header: bool,
    pub summary: bool,
    pub processes: bool,
    pub extended: bool,
    pub all_netns: bool,
    /// Closed connections of the last this-many nanoseconds instead of live sockets.
    pub closed_ns: Option<u64>,
    pub json: bool,
    pub filter: Vec<String>,
    pub resolve: bool,
    pub options: bool,
    pub memory: bool,
    pub info: bool,
    pub oneline: bool,
    pub count: Vec<CountBy>,
    pub cgroup: bool,
    /// `--max-age`: the agent may answer from its table when its last walk of the
    /// namespace is at most this old (nanoseconds). Left out when not asked, so that an
    /// agent of the previous version still takes the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_ns: Option<u64>,
}

impl From<&SnapshotArgs> for SnapshotRequest {
    fn from(a: &SnapshotArgs) -> Self {
        Self {
            all: a.all,
            listening: a.listening,
            numeric: a.numeric,
            ipv4: a.ipv4,
            ipv6: a.ipv6,
            no_header: a.no_header,
            summary: a.summary,
            processes: a.processes,
            extended: a.extended,
            all_netns: a.all_netns,
            closed_ns: a
                .closed
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            json: a.format == Format::Json,
            filter: a.filter.clone(),
            resolve: a.resolve,
            options: a.options,
            memory: a.memory,
            info: a.info,
            oneline: a.oneline,
            count: a.count.clone(),
            cgroup: a.cgroup,
            max_age_ns: a
                .max_age
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

impl SnapshotRequest {
    /// The renderer's options.
    pub fn args(&self) -> SnapshotArgs {
        SnapshotArgs {
            tcp: true,
            all: self.all,
            listening: self.listening,
            numeric: self.numeric,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            no_header: self.no_header,
            summary: self.summary,
            processes: self.processes,
            extended: self.extended,
            all_netns: self.all_netns,
            closed: self.closed_ns.map(Duration::from_nanos),
            format: if self.json {
                Format::Json
            } else {
                Format::Text
            },
            filter: self.filter.clone(),
            resolve: self.resolve,
            options: self.options,
            memory: self.memory,
            info: self.info,
            oneline: self.oneline,
            count: self.count.clone(),
            cgroup: self.cgroup,
            max_age: self.max_age_ns.map(Duration::from_nanos),
            ..SnapshotArgs::default()
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReplyHeader {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub version: u32,
}

impl ReplyHeader {
    /// The request was accepted: data frames and a trailer follow.
    pub fn accepted() -> Self {
        Self {
            ok: true,
            error: None,
            version: VERSION,
        }
    }

    /// The request was refused: nothing follows.
    pub fn refused(error: &str) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            version: VERSION,
        }
    }
}

/// The end of a reply: whether the output before it is complete, and what to tell the user.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Trailer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the agent's tracer lost since it started.
    #[serde(default)]
    pub losses: LossTotals,
}

/// Appends one frame.
pub fn put_frame(out: &mut BytesMut, tag: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME);
    out.reserve(FRAME_HEADER + payload.len());
    out.put_u8(tag);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame tag {tag:#04x}")]
    Tag { tag: u8 },
    #[error("frame of {len} bytes, more than the {MAX_FRAME} allowed")]
    TooLarge { len: usize },
}

/// Takes one whole frame off the front of `buf`, if it holds one.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let tag = buf[0];
    if tag != FRAME_DATA && tag != FRAME_TRAILER {
        return Err(FrameError::Tag { tag });
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    if buf.len() < FRAME_HEADER + len {
        buf.reserve(FRAME_HEADER + len - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_HEADER);
    Ok(Some((tag, buf.split_to(len).freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_partial_frame_waits() {
        let mut wire = BytesMut::new();
        put_frame(&mut wire, FRAME_DATA, b"hello");
        put_frame(&mut wire, FRAME_TRAILER, b"{}");
        let mut partial = BytesMut::from(&wire[..7]);
        assert_eq!(take_frame(&mut partial), Ok(None));
        assert_eq!(
            take_frame(&mut wire),
            Ok(Some((FRAME_DATA, Bytes::from_static(b"hello"))))
        );
        assert_eq!(
            take_frame(&mut wire),
            Ok(Some((FRAME_TRAILER, Bytes::from_static(b"{}"))))
        );
        assert!(wire.is_empty());
    }

    #[test]
    fn garbage_and_oversized_frames_are_errors() {
        let mut wire = BytesMut::from(&b"Xabcdefg"[..]);
        assert_eq!(take_frame(&mut wire), Err(FrameError::Tag { tag: b'X' }));
        let mut wire = BytesMut::new();
        wire.put_u8(FRAME_DATA);
        wire.put_u32(u32::MAX);
        assert!(matches!(
            take_frame(&mut wire),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_request_is_not_the_command_line() {
        let req = SnapshotRequest {
            extended: true,
            closed_ns: Some(5_000_000_000),
            max_age_ns: Some(2_500_000_000),
            json: true,
            filter: vec!["state".into(), "listening".into()],
            ..Default::default()
        };
        let line = serde_json::to_string(&Request {
            version: VERSION,
            snapshot: req.clone(),
            top: None,
        })
        .unwrap();
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back.snapshot, req);
        assert_eq!(
            SnapshotRequest::from(&req.args()),
            req,
            "lossless both ways"
        );
        // Fields a newer client adds are refused, not ignored.
        assert!(
            serde_json::from_str::<Request>(r#"{"version":1,"snapshot":{"bogus":1}}"#).is_err()
        );
    }
}
