//! Ground truth: the committed event sequence read back from every member after the test by a
//! watch from revision 1 over all keys (with prev_kv), up to the cluster's final revision.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{GetOptions, WatchOptions};
use tokio::time::Instant;

use crate::client;
use crate::watchlog::EventRecord;
use crate::workload::watch::event_record;

/// How long reading one member's whole history may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the final revision may take to be learned (a leader is needed).
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);

/// Each member's events up to the final revision, by member name.
pub async fn collect(names: &[String], endpoints: &[String]) -> Result<Vec<(String, Vec<EventRecord>)>> {
    let target = final_revision(endpoints).await?;
    let mut truths = Vec::new();
    for (name, endpoint) in names.iter().zip(endpoints) {
        let events = tokio::time::timeout(READ_BACK_TIMEOUT, read_back(endpoint, target))
            .await
            .map_err(|_| anyhow!("reading back {name}'s history timed out"))?
            .with_context(|| format!("read back {name}'s history"))?;
        truths.push((name.clone(), events));
    }
    Ok(truths)
}

/// The current revision, from a linearizable read on any member.
async fn final_revision(endpoints: &[String]) -> Result<i64> {
    let deadline = Instant::now() + TARGET_TIMEOUT;
    loop {
        for endpoint in endpoints {
            let Ok(mut c) = client::connect(endpoint, Some(Duration::from_secs(2))).await else { continue };
            if let Ok(resp) = c.get("\0", Some(GetOptions::new().with_from_key().with_count_only())).await {
                return Ok(resp.header().map_or(1, |h| h.revision()));
            }
        }
        if Instant::now() >= deadline {
            bail!("no member answered a linearizable read");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_back(endpoint: &str, target: i64) -> Result<Vec<EventRecord>> {
    let mut events = Vec::new();
    if target <= 1 {
        return Ok(events);
    }
    let mut c = client::connect(endpoint, None).await?;
    let options = WatchOptions::new().with_all_keys().with_start_revision(1).with_prev_key().with_progress_notify();
    let mut stream = c.watch("\0", Some(options)).await?;
    let mut seen = 0;
    while seen < target {
        let resp = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Err(_) => {
                stream.request_progress().await?;
                continue;
            }
            Ok(r) => r?.ok_or_else(|| anyhow!("watch stream closed"))?,
        };
        if resp.canceled() {
            bail!("read-back watch canceled: {}", resp.cancel_reason());
        }
        for event in resp.events() {
            let record = event_record(event);
            seen = seen.max(record.revision());
            if record.revision() <= target {
                events.push(record);
            }
        }
        if resp.events().is_empty() && !resp.created() {
            seen = seen.max(resp.header().map_or(0, |h| h.revision()));
        }
    }
    Ok(events)
}
