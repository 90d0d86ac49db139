//! Watch logs (`watch.jsonl`) and ground truth (`truth-<member>.jsonl`): what every watch asked
//! for and every response it got, and the committed event sequence read back from each member
//! after the test (a watch from revision 1 with prev_kv, compaction off).
//!
//! Keys and values are recorded as UTF-8 text (the workloads only write text).

use serde::{Deserialize, Serialize};

/// A key-value pair as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub create_revision: i64,
    #[serde(default)]
    pub mod_revision: i64,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One watch event. For a delete, `kv` holds the key and the deletion's `mod_revision` only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub kv: KvRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KvRecord>,
}

impl EventRecord {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// A watch filter (etcd's `WatchCreateRequest.filters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Drop put events.
    NoPut,
    /// Drop delete events.
    NoDelete,
}

/// One line of `watch.jsonl`.
///
/// A watcher (a client task) opens a sequence of watch sessions; each session is one watch
/// request and the responses on it, until it is cancelled, fails or the test ends. A session that
/// resumes asks for `start_revision` = the last revision it saw + 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WatchRecord {
    Request {
        watcher: u64,
        session: u64,
        node: String,
        key: String,
        /// Empty for a single key; etcd's range end otherwise (`"\0"` = every key >= key).
        #[serde(default)]
        range_end: String,
        /// 0 = from the member's current revision + 1.
        start_revision: i64,
        prev_kv: bool,
        progress_notify: bool,
        #[serde(default)]
        filters: Vec<Filter>,
        time: u64,
    },
    Response {
        watcher: u64,
        session: u64,
        time: u64,
        header_revision: i64,
        watch_id: i64,
        #[serde(default)]
        created: bool,
        #[serde(default)]
        canceled: bool,
        #[serde(default)]
        compact_revision: i64,
        #[serde(default)]
        fragment: bool,
        #[serde(default)]
        events: Vec<EventRecord>,
    },
    /// The session ended (the stream broke, the watcher cancelled it, or the test ended).
    End { watcher: u64, session: u64, time: u64, reason: String },
}

impl WatchRecord {
    pub fn session(&self) -> (u64, u64) {
        match self {
            WatchRecord::Request { watcher, session, .. }
            | WatchRecord::Response { watcher, session, .. }
            | WatchRecord::End { watcher, session, .. } => (*watcher, *session),
        }
    }

    /// A progress notification: no events, not created, not canceled, compact_revision 0.
    pub fn is_progress_notify(&self) -> bool {
        matches!(self, WatchRecord::Response { events, created: false, canceled: false, compact_revision: 0, .. } if events.is_empty())
    }
}

/// Whether `key` lies in a watch's range (etcd's semantics: empty `range_end` = just `key`,
/// `"\0"` = every key >= `key`, otherwise `key <= k < range_end`).
pub fn in_range(key: &str, start: &str, range_end: &str) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == "\0" {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

/// etcd's prefix range end: the prefix with its last byte incremented.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".to_string()
}

/// Parses a JSON-lines file of `T`.
pub fn parse_jsonl<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd() {
        assert!(in_range("a", "a", ""));
        assert!(!in_range("ab", "a", ""));
        assert!(in_range("w/1", "w/", &prefix_end("w/")));
        assert!(!in_range("x", "w/", &prefix_end("w/")));
        assert!(in_range("zzz", "b", "\0"));
        assert_eq!(prefix_end("w/"), "w0");
    }

    #[test]
    fn progress_notifications_are_recognised() {
        let notify = WatchRecord::Response {
            watcher: 1,
            session: 1,
            time: 5,
            header_revision: 9,
            watch_id: 0,
            created: false,
            canceled: false,
            compact_revision: 0,
            fragment: false,
            events: vec![],
        };
        assert!(notify.is_progress_notify());
        let line = serde_json::to_string(&notify).unwrap();
        assert!(line.starts_with(r#"{"kind":"response""#), "{line}");
        assert_eq!(parse_jsonl::<WatchRecord>(&line).unwrap(), vec![notify]);
    }
}
