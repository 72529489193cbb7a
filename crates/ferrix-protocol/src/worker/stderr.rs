//! What a server sends while it works on an operation: log lines, activities and their
//! results, requests for data, data, and the end of the work (success or an error).
//!
//! Each message is a u64 tag (the constants below) and a payload:
//!
//! | tag | payload |
//! |---|---|
//! | [`NEXT`] | string: a log line, normally ending in `\n` |
//! | [`READ`] | u64 length: the client answers with a string of at most that many bytes |
//! | [`WRITE`] | string: data for the client |
//! | [`LAST`] | nothing: the work succeeded, the reply follows |
//! | [`ERROR`] | from 1.26 the serialised `Error` (see [`ErrorInfo`]), before a string message and a u64 exit status |
//! | [`START_ACTIVITY`] | u64 id, u64 level, u64 type, string text, fields, u64 parent id |
//! | [`STOP_ACTIVITY`] | u64 id |
//! | [`RESULT`] | u64 activity id, u64 result type, fields |
//!
//! Fields are a u64 count, then per field a u64 type (0: a u64 follows, 1: a string follows).
//!
//! Activity messages exist from 1.20 on. For an older client [`write_stderr`] sends the text of
//! a `StartActivity` (when not empty) as a log line `text...` and leaves out everything else
//! about activities, as Nix's daemon does, but for a build's log lines, which it sends as log
//! lines (Nix's daemon drops them).
//!
//! Log text is whatever bytes the builder printed, so strings in log messages (lines, activity
//! texts and fields, error messages) are read as lossy UTF-8 rather than refused.

use std::fmt;
use std::io::{self, Read, Write};

use crate::wire::{
    read_bytes, read_count, read_u64, write_bytes, write_str, write_u64, Limits, WireError,
};
use crate::Version;

/// A log line (string).
pub const NEXT: u64 = 0x6f6c_6d67;
/// The server wants data: u64 length; the client answers with a string of at most that.
pub const READ: u64 = 0x6461_7461;
/// Data for the client's sink (string).
pub const WRITE: u64 = 0x6461_7416;
/// The operation succeeded; its answer follows.
pub const LAST: u64 = 0x616c_7473;
/// The operation failed; an error follows.
pub const ERROR: u64 = 0x6378_7470;
pub const START_ACTIVITY: u64 = 0x5354_5254;
pub const STOP_ACTIVITY: u64 = 0x5354_4f50;
pub const RESULT: u64 = 0x5253_4c54;

/// Activity messages are sent from this version on.
pub const ACTIVITIES_SINCE: Version = Version::new(1, 20);
/// Errors are the serialised `Error` from this version on.
pub const ERROR_STRUCT_SINCE: Version = Version::new(1, 26);

/// Activity types (`ActivityType` in Nix).
pub mod activity {
    pub const UNKNOWN: u64 = 0;
    pub const COPY_PATH: u64 = 100;
    pub const FILE_TRANSFER: u64 = 101;
    pub const REALISE: u64 = 102;
    pub const COPY_PATHS: u64 = 103;
    pub const BUILDS: u64 = 104;
    pub const BUILD: u64 = 105;
    pub const OPTIMISE_STORE: u64 = 106;
    pub const VERIFY_PATHS: u64 = 107;
    pub const SUBSTITUTE: u64 = 108;
    pub const QUERY_PATH_INFO: u64 = 109;
    pub const POST_BUILD_HOOK: u64 = 110;
    pub const BUILD_WAITING: u64 = 111;
}

/// Result types (`ResultType` in Nix).
pub mod result_type {
    pub const FILE_LINKED: u64 = 100;
    /// One field: the line (without its newline).
    pub const BUILD_LOG_LINE: u64 = 101;
    pub const UNTRUSTED_PATH: u64 = 102;
    pub const CORRUPTED_PATH: u64 = 103;
    /// One field: the phase name.
    pub const SET_PHASE: u64 = 104;
    pub const PROGRESS: u64 = 105;
    pub const SET_EXPECTED: u64 = 106;
    pub const POST_BUILD_LOG_LINE: u64 = 107;
}

/// Verbosity levels (`Verbosity` in Nix).
pub mod verbosity {
    pub const ERROR: u64 = 0;
    pub const WARN: u64 = 1;
    pub const NOTICE: u64 = 2;
    pub const INFO: u64 = 3;
    pub const TALKATIVE: u64 = 4;
    pub const CHATTY: u64 = 5;
    pub const DEBUG: u64 = 6;
    pub const VOMIT: u64 = 7;
}

/// One field of an activity or a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Int(u64),
    Str(String),
}

/// An error as the server reports it.
///
/// From 1.26 on the wire carries `"Error"`, the level, `"Error"` (once the error's name), the
/// message, `0` (no position), the number of traces and per trace `0` (no position) and its
/// text; the exit status is not sent and reads as 1 (the default of Nix's errors). Before 1.26
/// the wire carries the message and the exit status only; the level reads as
/// [`verbosity::ERROR`] and there are no traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// A [`verbosity`] level.
    pub level: u64,
    pub message: String,
    /// Context lines, innermost first (as Nix lists them).
    pub traces: Vec<String>,
    /// What a command failing with this error exits with (Nix: 1, or 100–104 for builds).
    pub exit_status: u64,
}

impl ErrorInfo {
    /// An error at level [`verbosity::ERROR`] with exit status 1 and no traces.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            level: verbosity::ERROR,
            message: message.into(),
            traces: Vec::new(),
            exit_status: 1,
        }
    }
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A peer's colours are not ours to show.
        f.write_str(&crate::text::plain(&self.message))?;
        for t in &self.traces {
            write!(f, "\n… {}", crate::text::plain(t))?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorInfo {}

/// One message of the server while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrMsg {
    /// A log line, as sent (normally ending in `\n`).
    Next(String),
    /// The server asks for at most this many bytes of the operation's data.
    Read(u64),
    /// Data for the client.
    Write(Vec<u8>),
    /// The work succeeded; the reply follows.
    Last,
    /// The work failed; no reply follows.
    Error(ErrorInfo),
    StartActivity {
        id: u64,
        /// A [`verbosity`] level.
        level: u64,
        /// An [`activity`] type.
        kind: u64,
        text: String,
        fields: Vec<Field>,
        /// 0 for none.
        parent: u64,
    },
    StopActivity(u64),
    Result {
        /// The activity.
        id: u64,
        /// A [`result_type`].
        kind: u64,
        fields: Vec<Field>,
    },
}

impl StderrMsg {
    /// Whether the message ends the work (`Last` or `Error`).
    pub fn ends_work(&self) -> bool {
        matches!(self, Self::Last | Self::Error(_))
    }
}

/// A string of log text: any bytes, read as lossy UTF-8.
fn read_text<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<String, WireError> {
    let bytes = read_bytes(r, limits, what)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

fn read_fields<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<Field>, WireError> {
    let n = read_count(r, limits, what)?;
    let mut fields = Vec::with_capacity(crate::wire::initial_capacity(n));
    for _ in 0..n {
        match read_u64(r, "type of a log field")? {
            0 => fields.push(Field::Int(read_u64(r, "number in a log field")?)),
            1 => fields.push(Field::Str(read_text(r, limits, "string in a log field")?)),
            t => return Err(WireError::unexpected("type of a log field", t)),
        }
    }
    Ok(fields)
}

fn write_fields<W: Write + ?Sized>(w: &mut W, fields: &[Field]) -> io::Result<()> {
    write_u64(w, fields.len() as u64)?;
    for f in fields {
        match f {
            Field::Int(n) => {
                write_u64(w, 0)?;
                write_u64(w, *n)?;
            }
            Field::Str(s) => {
                write_u64(w, 1)?;
                write_str(w, s)?;
            }
        }
    }
    Ok(())
}

/// An error for the negotiated `version` (the tag already read).
pub fn read_error<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<ErrorInfo, WireError> {
    if version < ERROR_STRUCT_SINCE {
        let message = read_text(r, limits, "error message")?;
        let exit_status = read_u64(r, "exit status of an error")?;
        return Ok(ErrorInfo {
            level: verbosity::ERROR,
            message,
            traces: Vec::new(),
            exit_status,
        });
    }
    let kind = read_text(r, limits, "type of an error")?;
    if kind != "Error" {
        return Err(WireError::unexpected("type of an error", kind));
    }
    let level = read_u64(r, "level of an error")?;
    read_bytes(r, limits, "name of an error")?;
    let message = read_text(r, limits, "error message")?;
    let pos = read_u64(r, "position flag of an error")?;
    if pos != 0 {
        return Err(WireError::unexpected("position flag of an error", pos));
    }
    let n = read_count(r, limits, "traces of an error")?;
    let mut traces = Vec::with_capacity(crate::wire::initial_capacity(n));
    for _ in 0..n {
        let pos = read_u64(r, "position flag of an error trace")?;
        if pos != 0 {
            return Err(WireError::unexpected(
                "position flag of an error trace",
                pos,
            ));
        }
        traces.push(read_text(r, limits, "error trace")?);
    }
    Ok(ErrorInfo {
        level,
        message,
        traces,
        exit_status: 1,
    })
}

/// Write an error for the negotiated `version` (without the tag).
pub fn write_error<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    e: &ErrorInfo,
) -> io::Result<()> {
    if version < ERROR_STRUCT_SINCE {
        write_str(w, &e.message)?;
        return write_u64(w, e.exit_status);
    }
    write_str(w, "Error")?;
    write_u64(w, e.level)?;
    write_str(w, "Error")?;
    write_str(w, &e.message)?;
    write_u64(w, 0)?;
    write_u64(w, e.traces.len() as u64)?;
    for t in &e.traces {
        write_u64(w, 0)?;
        write_str(w, t)?;
    }
    Ok(())
}

/// Read one message. Activity messages are accepted whatever the version (their tags cannot
/// be mistaken for anything else); an unknown tag is an error.
pub fn read_stderr<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<StderrMsg, WireError> {
    let tag = read_u64(r, "log message tag")?;
    Ok(match tag {
        NEXT => StderrMsg::Next(read_text(r, limits, "log line")?),
        READ => StderrMsg::Read(read_u64(r, "length the server asks for")?),
        WRITE => StderrMsg::Write(read_bytes(r, limits, "data from the server")?),
        LAST => StderrMsg::Last,
        ERROR => StderrMsg::Error(read_error(r, version, limits)?),
        START_ACTIVITY => StderrMsg::StartActivity {
            id: read_u64(r, "id of an activity")?,
            level: read_u64(r, "level of an activity")?,
            kind: read_u64(r, "type of an activity")?,
            text: read_text(r, limits, "text of an activity")?,
            fields: read_fields(r, limits, "fields of an activity")?,
            parent: read_u64(r, "parent of an activity")?,
        },
        STOP_ACTIVITY => StderrMsg::StopActivity(read_u64(r, "id of a stopped activity")?),
        RESULT => StderrMsg::Result {
            id: read_u64(r, "activity of a result")?,
            kind: read_u64(r, "type of a result")?,
            fields: read_fields(r, limits, "fields of a result")?,
        },
        t => {
            return Err(WireError::unexpected(
                "log message tag",
                format_args!("{t:#x}"),
            ))
        }
    })
}

/// Write one message for the negotiated `version`. Not flushed.
///
/// Below 1.20 activities do not exist: a `StartActivity` with a non-empty text becomes the log
/// line `text...\n` and everything else about activities (its fields, `StopActivity`,
/// `Result`) is left out, as Nix's daemon does, but for a build's log line (`Result` of
/// [`result_type::BUILD_LOG_LINE`]), which becomes a plain log line rather than being lost.
pub fn write_stderr<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    msg: &StderrMsg,
) -> io::Result<()> {
    let activities = version >= ACTIVITIES_SINCE;
    match msg {
        StderrMsg::Next(line) => {
            write_u64(w, NEXT)?;
            write_str(w, line)
        }
        StderrMsg::Read(len) => {
            write_u64(w, READ)?;
            write_u64(w, *len)
        }
        StderrMsg::Write(data) => {
            write_u64(w, WRITE)?;
            write_bytes(w, data)
        }
        StderrMsg::Last => write_u64(w, LAST),
        StderrMsg::Error(e) => {
            write_u64(w, ERROR)?;
            write_error(w, version, e)
        }
        StderrMsg::StartActivity {
            id,
            level,
            kind,
            text,
            fields,
            parent,
        } => {
            if activities {
                write_u64(w, START_ACTIVITY)?;
                write_u64(w, *id)?;
                write_u64(w, *level)?;
                write_u64(w, *kind)?;
                write_str(w, text)?;
                write_fields(w, fields)?;
                write_u64(w, *parent)
            } else if !text.is_empty() {
                write_u64(w, NEXT)?;
                write_str(w, &format!("{text}...\n"))
            } else {
                Ok(())
            }
        }
        StderrMsg::StopActivity(id) => {
            if activities {
                write_u64(w, STOP_ACTIVITY)?;
                write_u64(w, *id)?;
            }
            Ok(())
        }
        StderrMsg::Result { id, kind, fields } => {
            if activities {
                write_u64(w, RESULT)?;
                write_u64(w, *id)?;
                write_u64(w, *kind)?;
                write_fields(w, fields)?;
            } else if let (result_type::BUILD_LOG_LINE, [Field::Str(line)]) =
                (*kind, fields.as_slice())
            {
                // Nix's daemon drops these for an old client; it gets the line as a log line.
                write_u64(w, NEXT)?;
                write_str(w, &format!("{line}\n"))?;
            }
            Ok(())
        }
    }
}

/// The most a client sends at once in answer to [`StderrMsg::Read`], whatever the server asks.
pub const MAX_READ_ANSWER: u64 = 64 * 1024;

/// The client's side of the work of one operation: read messages until [`StderrMsg::Last`]
/// (`Ok(Ok(()))`) or [`StderrMsg::Error`] (`Ok(Err(info))`; the operation failed, no reply
/// follows, the session goes on).
///
/// [`StderrMsg::Read`] is answered from `source` (at most [`MAX_READ_ANSWER`] bytes at a time,
/// flushed); without a source it is an error. Every other message (log lines, activities,
/// results, [`StderrMsg::Write`] data) goes to `log`. `w` is flushed first, so that the
/// request is on its way before anything is awaited.
pub fn process_stderr<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    version: Version,
    limits: &Limits,
    mut source: Option<&mut dyn Read>,
    log: &mut dyn FnMut(StderrMsg),
) -> Result<Result<(), ErrorInfo>, WireError> {
    const WHAT: &str = "data the server asked for";
    w.flush().map_err(|e| WireError::io("the request", e))?;
    loop {
        match read_stderr(r, version, limits)? {
            StderrMsg::Last => return Ok(Ok(())),
            StderrMsg::Error(e) => return Ok(Err(e)),
            StderrMsg::Read(len) => {
                let Some(src) = source.as_mut() else {
                    return Err(WireError::unexpected(
                        "log message (the server asks for data, but this operation has none)",
                        "STDERR_READ",
                    ));
                };
                let mut buf = vec![0; len.min(MAX_READ_ANSWER) as usize];
                let n = loop {
                    match src.read(&mut buf) {
                        Ok(n) => break n.min(buf.len()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(WireError::io(WHAT, e)),
                    }
                };
                write_bytes(w, &buf[..n]).map_err(|e| WireError::io(WHAT, e))?;
                w.flush().map_err(|e| WireError::io(WHAT, e))?;
            }
            msg => log(msg),
        }
    }
}
