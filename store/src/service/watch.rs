//! The Watch service: one bidirectional stream carries many watchers. Each
//! stream has one bounded buffer the hub pushes into; a client that does not
//! read fills it and its watchers fall back to catch-up from storage.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use crate::error::StoreError;
use crate::limits::{WATCH_STREAM_RESPONSES_BUFFERED_MAX, WATCHERS_PER_STREAM_MAX};
use crate::node::Node;
use crate::node::require_leader::LeaderGuard;
use crate::proto::etcdserverpb::{self as pb, watch_create_request::FilterType, watch_request, watch_server::Watch};
use crate::watch::{StreamItem, WatchSpec};

/// Responses queued towards the gRPC transport per stream.
const WATCH_OUTBOUND_RESPONSES_MAX: usize = 16;
/// How often a deferred progress request re-checks that all watchers are synced.
const PROGRESS_RECHECK_INTERVAL: Duration = Duration::from_millis(20);
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

struct Local {
    hub_key: u64,
    progress_notify: bool,
    fragment: bool,
    sent_since_tick: bool,
    /// Revision of the last events response sent: every event of this watcher up to it has been
    /// sent, so a progress notification never reports less.
    last_rev: i64,
}

struct WatchStreamTask {
    node: std::sync::Arc<Node>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    sink: mpsc::Sender<StreamItem>,
    watchers: HashMap<i64, Local>,
    next_id: i64,
    progress_pending: bool,
}

impl WatchStreamTask {
    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse { header: self.node.header(revision), watch_id, ..Default::default() }
    }

    async fn send(&self, r: pb::WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        let current = self.node.shared.hub.current_revision();
        if c.start_revision < 0 {
            let mut r = self.response(-1, current);
            (r.created, r.canceled, r.cancel_reason) = (true, true, StoreError::Compacted.to_string());
            return self.send(r).await;
        }
        let id = if c.watch_id != 0 { c.watch_id } else { self.auto_id() };
        if self.watchers.contains_key(&id) || self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let mut r = self.response(-1, current);
            (r.created, r.canceled, r.cancel_reason) = (true, true, DUPLICATE_WATCH_ID.to_string());
            return self.send(r).await;
        }
        let filters: Vec<FilterType> = c.filters.iter().filter_map(|f| FilterType::try_from(*f).ok()).collect();
        let spec = WatchSpec {
            watch_id: id,
            key: c.key.to_vec(),
            range_end: c.range_end.to_vec(),
            prev_kv: c.prev_kv,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
        };
        let mut created = self.response(id, current);
        created.created = true;
        match self.node.shared.hub.add(spec, c.start_revision, self.sink.clone()) {
            Ok(hub_key) => {
                let local = Local {
                    hub_key,
                    progress_notify: c.progress_notify,
                    fragment: c.fragment,
                    sent_since_tick: false,
                    last_rev: 0,
                };
                self.watchers.insert(id, local);
                self.send(created).await
            }
            Err(compact_revision) => {
                if !self.send(created).await {
                    return false;
                }
                self.send(self.compacted(id, compact_revision)).await
            }
        }
    }

    fn compacted(&self, watch_id: i64, compact_revision: i64) -> pb::WatchResponse {
        let mut r = self.response(watch_id, 0);
        (r.canceled, r.compact_revision, r.cancel_reason) = (true, compact_revision, StoreError::Compacted.to_string());
        r
    }

    fn auto_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn cancel(&mut self, watch_id: i64) -> bool {
        if let Some(w) = self.watchers.remove(&watch_id) {
            self.node.shared.hub.remove(w.hub_key);
            let mut r = self.response(watch_id, self.node.shared.hub.current_revision());
            r.canceled = true;
            return self.send(r).await;
        }
        true
    }

    async fn request(&mut self, req: pb::WatchRequest) -> bool {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Answered by the stream loop, which can first flush queued events.
                self.progress_pending = true;
                true
            }
            None => true,
        }
    }

    /// Answers a progress request once every watcher is synced, so the
    /// revision it reports is a true bookmark. The revision is read before the queued events
    /// are flushed: everything up to it is in the queue by then (see `Hub::publish`).
    async fn try_progress(&mut self, items: &mut mpsc::Receiver<StreamItem>) -> bool {
        let keys: Vec<u64> = self.watchers.values().map(|w| w.hub_key).collect();
        let Some(rev) = self.node.shared.hub.all_synced_revision(&keys) else { return true };
        if !self.flush(items).await {
            return false;
        }
        self.progress_pending = false;
        let rev = self.watchers.values().map(|w| w.last_rev).fold(rev, i64::max);
        self.send(self.response(-1, rev)).await
    }

    /// Sends every queued item now.
    async fn flush(&mut self, items: &mut mpsc::Receiver<StreamItem>) -> bool {
        while let Ok(item) = items.try_recv() {
            if !self.item(item).await {
                return false;
            }
        }
        true
    }

    async fn item(&mut self, item: StreamItem) -> bool {
        match item {
            StreamItem::Events { watch_id, events, revision } => {
                let Some(w) = self.watchers.get_mut(&watch_id) else { return true };
                w.sent_since_tick = true;
                w.last_rev = w.last_rev.max(revision);
                let fragment = w.fragment;
                let mut r = self.response(watch_id, revision);
                r.events = events;
                if fragment && r.encoded_len() > self.node.config.max_request_bytes {
                    return self.send_fragments(r).await;
                }
                self.send(r).await
            }
            StreamItem::Compacted { watch_id, compact_revision } => {
                if self.watchers.remove(&watch_id).is_none() {
                    return true;
                }
                self.send(self.compacted(watch_id, compact_revision)).await
            }
        }
    }

    /// Splits a large response at event boundaries; all parts but the last
    /// carry `fragment = true`, as etcd does for watchers that asked for it.
    async fn send_fragments(&self, whole: pb::WatchResponse) -> bool {
        let limit = self.node.config.max_request_bytes;
        let mut part = pb::WatchResponse { events: Vec::new(), ..whole.clone() };
        let total = whole.events.len();
        for (i, e) in whole.events.into_iter().enumerate() {
            if !part.events.is_empty() && part.encoded_len() + e.encoded_len() + 8 > limit {
                let mut full =
                    std::mem::replace(&mut part, pb::WatchResponse { events: Vec::new(), ..Default::default() });
                full.fragment = true;
                part.header = full.header;
                part.watch_id = full.watch_id;
                if !self.send(full).await {
                    return false;
                }
            }
            part.events.push(e);
            if i + 1 == total {
                part.fragment = false;
            }
        }
        self.send(part).await
    }

    /// Periodic notifications for idle watchers that asked for them. Revisions are read
    /// before the queue is flushed, as in `try_progress`.
    async fn progress_tick(&mut self, items: &mut mpsc::Receiver<StreamItem>) -> bool {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify
                && !std::mem::take(&mut w.sent_since_tick)
                && let Some(rev) = self.node.shared.hub.synced_revision(w.hub_key)
            {
                due.push((*id, rev));
            }
        }
        if due.is_empty() {
            return true;
        }
        if !self.flush(items).await {
            return false;
        }
        for (id, rev) in due {
            let Some(w) = self.watchers.get(&id) else { continue };
            if !self.send(self.response(id, rev.max(w.last_rev))).await {
                return false;
            }
        }
        true
    }

    async fn run(
        mut self,
        mut input: Streaming<pb::WatchRequest>,
        mut items: mpsc::Receiver<StreamItem>,
        mut leader: LeaderGuard,
    ) {
        let mut tick = tokio::time::interval(self.node.config.watch_progress_notify_interval);
        tick.tick().await;
        let mut recheck = tokio::time::interval(PROGRESS_RECHECK_INTERVAL);
        loop {
            let alive = tokio::select! {
                msg = input.message() => match msg {
                    Ok(Some(req)) => self.request(req).await && (!self.progress_pending || self.try_progress(&mut items).await),
                    Ok(None) | Err(_) => false,
                },
                Some(item) = items.recv() => self.item(item).await,
                _ = tick.tick() => self.progress_tick(&mut items).await,
                _ = recheck.tick(), if self.progress_pending => self.try_progress(&mut items).await,
                _ = leader.lost() => {
                    let _ = self.out.send(Err(StoreError::NoLeader.into())).await;
                    false
                }
            };
            if !alive {
                break;
            }
        }
        for w in self.watchers.values() {
            self.node.shared.hub.remove(w.hub_key);
        }
    }
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for Ctx {
    type WatchStream = WatchResponseStream;

    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let leader = LeaderGuard::open(&self.node, req.metadata())?;
        let input = req.into_inner();
        let (out, out_rx) = mpsc::channel(WATCH_OUTBOUND_RESPONSES_MAX);
        let (sink, items) = mpsc::channel(WATCH_STREAM_RESPONSES_BUFFERED_MAX);
        let task = WatchStreamTask {
            node: self.node.clone(),
            out,
            sink,
            watchers: HashMap::new(),
            next_id: 0,
            progress_pending: false,
        };
        tokio::spawn(task.run(input, items, leader));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
