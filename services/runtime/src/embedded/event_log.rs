//! The local event log: an append-only JSON-lines file of published messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::bus::Message;

/// One line of an event log: a message as the bus accepted it.
///
/// Serialized as `{"messageId": …, "publishTime": …, "message": {…}}`, where `message` is
/// [`Message`]'s own serde form (base64 `data`, `attributes`, optional `orderingKey`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedMessage {
    /// The id the bus gave the message (the `message_id` of every delivery of it).
    pub message_id: String,
    /// When the bus accepted it.
    pub publish_time: DateTime<Utc>,
    /// The message as published.
    pub message: Message,
}

/// What [`EventLog::read_contents`] found in a log file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContents {
    /// Every complete, parsable line, in file order.
    pub messages: Vec<LoggedMessage>,
    /// Complete lines (ending in a newline) that did not parse and were skipped.
    pub skipped: usize,
    /// Whether the file ended in an unterminated line that did not parse: a write torn
    /// by a crash. It is ignored; the next append terminates it first.
    pub torn_tail: bool,
}

/// Reading and appending event-log files (a namespace; the bus keeps its own open
/// handle for the topics it persists, see [`crate::embedded::EmbeddedBus::with_persisted_topic`]).
///
/// Format: UTF-8 JSON, one [`LoggedMessage`] per line, each line written with a single
/// `write(2)` in append mode and terminated by `\n`. The file is only ever appended to.
pub struct EventLog;

impl EventLog {
    /// Every message in the log at `path`, in the order they were appended.
    ///
    /// A missing file is an empty log. A torn last line (a crash mid-write) is ignored;
    /// other unparsable lines are skipped and logged with their count at `warn` level
    /// (use [`EventLog::read_contents`] to get the count). Fails only on I/O errors.
    pub fn read(path: &Path) -> io::Result<Vec<LoggedMessage>> {
        let contents = Self::read_contents(path)?;
        if contents.skipped > 0 || contents.torn_tail {
            tracing::warn!(
                path = %path.display(),
                skipped = contents.skipped,
                torn_tail = contents.torn_tail,
                "event log has unreadable lines"
            );
        }
        Ok(contents.messages)
    }

    /// Like [`EventLog::read`], but also says how many lines were skipped and whether
    /// the last line was torn. Streams the file; memory grows with the messages only.
    pub fn read_contents(path: &Path) -> io::Result<LogContents> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LogContents::default()),
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut contents = LogContents::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            let terminated = line.last() == Some(&b'\n');
            let body = trim_line(&line);
            if body.is_empty() {
                continue;
            }
            match serde_json::from_slice::<LoggedMessage>(body) {
                Ok(message) => contents.messages.push(message),
                Err(_) if !terminated => contents.torn_tail = true,
                Err(_) => contents.skipped += 1,
            }
        }
        Ok(contents)
    }

    /// Append `message` to the log at `path` (created with its parent directories if
    /// missing) and flush it to the operating system before returning. If the file ends
    /// in a torn line, that line is terminated first so the new message stays readable.
    pub fn append(path: &Path, message: &LoggedMessage) -> io::Result<()> {
        LogFile::open(path)?.append(message)
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

/// An event-log file kept open for appending (one per persisted topic of a bus).
pub(crate) struct LogFile {
    path: PathBuf,
    inner: Mutex<LogFileInner>,
}

struct LogFileInner {
    file: File,
    /// The file may end without a newline (torn line, or a failed write): write one
    /// before the next record.
    needs_newline: bool,
}

impl LogFile {
    /// Open (or create) the log at `path` for appending.
    pub(crate) fn open(path: &Path) -> io::Result<LogFile> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let len = file.metadata()?.len();
        let needs_newline = if len == 0 {
            false
        } else {
            file.seek(SeekFrom::End(-1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            last[0] != b'\n'
        };
        Ok(LogFile { path: path.to_path_buf(), inner: Mutex::new(LogFileInner { file, needs_newline }) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record with a single write and flush it. Blocking (a small write to
    /// the page cache); callers hold no other lock while calling it.
    pub(crate) fn append(&self, message: &LoggedMessage) -> io::Result<()> {
        let json = serde_json::to_vec(message).map_err(io::Error::other)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = Vec::with_capacity(json.len() + 2);
        if inner.needs_newline {
            record.push(b'\n');
        }
        record.extend_from_slice(&json);
        record.push(b'\n');
        match inner.file.write_all(&record).and_then(|()| inner.file.flush()) {
            Ok(()) => {
                inner.needs_newline = false;
                Ok(())
            }
            Err(e) => {
                // Part of the record may be on disk: terminate it before the next one.
                inner.needs_newline = true;
                Err(e)
            }
        }
    }
}
