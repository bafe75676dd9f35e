//! Queues in SQL. Taking an item marks it claimed (with a nonce) instead of deleting it, in
//! a transaction that skips rows another process has locked (`FOR UPDATE SKIP LOCKED`):
//! two schedulers never both take an item, and a claim whose reply was lost is recognised
//! as ours when it is tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::db::{Arg, K, Val};
use super::{Inner, SqlStore, json_err};
use crate::{Queue, QueueItem, Result};

static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// Claimed rows are kept this long (for retried claims), then deleted.
const KEEP_CLAIMED_MS: i64 = 3_600_000;

/// Adds an item once. `nonce` names this enqueue call (the same on every retry of it): a
/// taken item of an earlier call for the same run is replaced (the run is queued again,
/// e.g. a retry), while a retry of this call finds its item taken and adds nothing.
async fn enqueue(db: &Inner, item: &QueueItem, json: &str, nonce: &str) -> Result<()> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let sweep = "DELETE FROM queue_items WHERE claim IS NOT NULL AND claimed_at < {now} - ?";
    tx.exec(d, sweep, &[KEEP_CLAIMED_MS.into()]).await?;
    let key = [
        Arg::from(item.queue.as_str()),
        Arg::from(item.run_id.as_str()),
    ];
    let sql = "SELECT claim, enqueue_nonce FROM queue_items WHERE queue = ? AND run_id = ? \
               FOR UPDATE";
    let rows = tx.fetch(d, sql, &key, &[K::Text, K::Text]).await?;
    if let Some(row) = rows.into_iter().next() {
        let mut row = row.into_iter().map(Val::into_text);
        let (claim, by) = (row.next().flatten(), row.next().flatten());
        if claim.is_none() || by.as_deref() == Some(nonce) {
            return Ok(()); // waiting already, or this call's item, taken since
        }
        let sql = "DELETE FROM queue_items WHERE queue = ? AND run_id = ?";
        tx.exec(d, sql, &key).await?;
    }
    let insert = "INSERT INTO queue_items (queue, run_id, priority, item, enqueue_nonce) \
                  VALUES (?, ?, ?, ?, ?)";
    let args = [
        key[0].clone(),
        key[1].clone(),
        i64::from(item.priority).into(),
        json.into(),
        nonce.into(),
    ];
    tx.exec(d, insert, &args).await?;
    tx.commit().await
}

/// Claims an item for `nonce`. With `fence`, only while that lease token still leads.
async fn claim(
    db: &Inner,
    queue: &str,
    run_id: &str,
    nonce: &str,
    fence: Option<u64>,
) -> Result<bool> {
    let d = db.dialect;
    if d == super::Dialect::Postgres {
        return claim_pg(db, queue, run_id, nonce, fence).await;
    }
    let mut tx = db.pool.begin().await?;
    if let Some(token) = fence {
        super::state::check_fence(&mut tx, d, token).await?;
    }
    let sql = "SELECT claim FROM queue_items WHERE queue = ? AND run_id = ? \
               FOR UPDATE SKIP LOCKED";
    let rows = tx
        .fetch(d, sql, &[queue.into(), run_id.into()], &[K::Text])
        .await?;
    let Some(row) = rows.into_iter().next() else {
        // Not queued, or being taken by someone else right now.
        return Ok(false);
    };
    match row.into_iter().next().and_then(Val::into_text) {
        Some(holder) => Ok(holder == nonce),
        None => {
            let sql = "UPDATE queue_items SET claim = ?, claimed_at = {now} \
                       WHERE queue = ? AND run_id = ?";
            tx.exec(d, sql, &[nonce.into(), queue.into(), run_id.into()])
                .await?;
            tx.commit().await?;
            Ok(true)
        }
    }
}

/// [`claim`] in one statement on PostgreSQL (the scheduler takes an item per run it
/// starts): the row is taken only if unclaimed, not locked by another taker, and — for
/// the leader — while its lease token is current. When nothing is taken, one more look
/// tells a fenced leader, a repeat of this call and an item someone else has apart.
async fn claim_pg(
    db: &Inner,
    queue: &str,
    run_id: &str,
    nonce: &str,
    fence: Option<u64>,
) -> Result<bool> {
    let token = fence.map_or(-1, |t| t as i64);
    let sql = "UPDATE queue_items SET claim = ?, claimed_at = {now} WHERE seq = \
                 (SELECT seq FROM queue_items WHERE queue = ? AND run_id = ? \
                  AND claim IS NULL FOR UPDATE SKIP LOCKED) \
               AND (? < 0 OR EXISTS (SELECT 1 FROM leases WHERE name = 'scheduler' \
                  AND token = ? AND expires_ms > {now}))";
    let args = [
        nonce.into(),
        queue.into(),
        run_id.into(),
        Arg::Int(token),
        Arg::Int(token),
    ];
    if db.exec(sql, &args).await? == 1 {
        return Ok(true);
    }
    let sql = "SELECT claim FROM queue_items WHERE queue = ? AND run_id = ?";
    let rows = db
        .fetch(sql, &[queue.into(), run_id.into()], &[K::Text])
        .await?;
    let holder = rows.into_iter().next().and_then(|r| r.into_iter().next());
    if holder.as_ref().and_then(Val::text) == Some(nonce) {
        return Ok(true); // this call's take, whose reply was lost
    }
    if let Some(token) = fence {
        let mut tx = db.pool.begin().await?;
        super::state::check_fence(&mut tx, super::Dialect::Postgres, token).await?;
    }
    Ok(false)
}

async fn set_priority(
    db: &Inner,
    queue: &str,
    run_id: &str,
    priority: i32,
) -> Result<Option<QueueItem>> {
    let d = db.dialect;
    let mut tx = db.pool.begin().await?;
    let sql = "SELECT item FROM queue_items WHERE queue = ? AND run_id = ? \
               AND claim IS NULL FOR UPDATE";
    let rows = tx
        .fetch(d, sql, &[queue.into(), run_id.into()], &[K::Text])
        .await?;
    let Some(json) = rows.into_iter().next().and_then(|r| r.into_iter().next()) else {
        return Ok(None);
    };
    let mut item: QueueItem =
        serde_json::from_str(json.text().unwrap_or_default()).map_err(json_err)?;
    item.priority = priority;
    let json = serde_json::to_string(&item).map_err(json_err)?;
    let sql = "UPDATE queue_items SET priority = ?, item = ? WHERE queue = ? AND run_id = ?";
    let args = [
        i64::from(priority).into(),
        json.into(),
        queue.into(),
        run_id.into(),
    ];
    tx.exec(d, sql, &args).await?;
    tx.commit().await?;
    Ok(Some(item))
}

impl SqlStore {
    fn claim_as(&self, queue: &str, run_id: &str, fence: Option<u64>) -> Result<bool> {
        // One nonce for every try of this claim, so a retry recognises its own claim.
        let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let nonce = Arc::new(format!("{}-{n}", self.inner.nonce));
        let (queue, run_id) = (Arc::new(queue.to_string()), Arc::new(run_id.to_string()));
        self.run(move |db| {
            let (q, r, n) = (queue.clone(), run_id.clone(), nonce.clone());
            async move { claim(&db, &q, &r, &n, fence).await }
        })
    }
}

impl SqlStore {
    /// Reads the items of `order` (seq, priority) not cached yet. The scheduler lists
    /// every queue on every pass; items do not change but for their priority, so each is
    /// read and parsed once.
    fn cache_items(&self, order: &[(i64, i64)]) -> Result<()> {
        let missing: Vec<i64> = {
            let cache = self.inner.items.lock().unwrap_or_else(|e| e.into_inner());
            order
                .iter()
                .filter(|(seq, p)| cache.get(seq).is_none_or(|(cp, _)| cp != p))
                .map(|(seq, _)| *seq)
                .collect()
        };
        for chunk in missing.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = Arc::new(format!(
                "SELECT seq, priority, item FROM queue_items WHERE seq IN ({marks})"
            ));
            let args = Arc::new(chunk.iter().map(|s| Arg::Int(*s)).collect::<Vec<_>>());
            let rows = self.run(move |db| {
                let (sql, args) = (sql.clone(), args.clone());
                async move { db.fetch(&sql, &args, &[K::Int, K::Int, K::Text]).await }
            })?;
            let mut cache = self.inner.items.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() > 100_000 {
                cache.clear();
            }
            for row in rows {
                let (seq, priority) = (row[0].int(), row[1].int());
                match serde_json::from_str(row[2].text().unwrap_or_default()) {
                    Ok(item) => {
                        cache.insert(seq, (priority, item));
                    }
                    Err(e) => tracing::warn!("queue: a stored item is not valid ({e}); skipped"),
                }
            }
        }
        Ok(())
    }
}

impl Queue for SqlStore {
    fn enqueue(&self, item: &QueueItem) -> Result<()> {
        crate::check_name(&item.run_id)?;
        let json = Arc::new(serde_json::to_string(item).map_err(json_err)?);
        let item = Arc::new(item.clone());
        let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let nonce = Arc::new(format!("{}-e{n}", self.inner.nonce));
        self.run(move |db| {
            let (item, json, nonce) = (item.clone(), json.clone(), nonce.clone());
            async move { enqueue(&db, &item, &json, &nonce).await }
        })
    }

    fn items(&self, queue: &str) -> Result<Vec<QueueItem>> {
        let queue = Arc::new(queue.to_string());
        let order = self.run(move |db| {
            let queue = queue.clone();
            async move {
                let sql = "SELECT seq, priority FROM queue_items WHERE queue = ? \
                           AND claim IS NULL ORDER BY priority DESC, seq";
                db.fetch(sql, &[Arg::from(queue.as_str())], &[K::Int, K::Int])
                    .await
            }
        })?;
        let order: Vec<(i64, i64)> = order
            .into_iter()
            .map(|r| (r[0].int(), r[1].int()))
            .collect();
        self.cache_items(&order)?;
        let cache = self.inner.items.lock().unwrap_or_else(|e| e.into_inner());
        Ok(order
            .iter()
            .filter_map(|(seq, _)| cache.get(seq).map(|(_, item)| item.clone()))
            .collect())
    }

    fn remove_item(&self, queue: &str, run_id: &str) -> Result<bool> {
        self.claim_as(queue, run_id, None)
    }

    fn take(&self, lead: u64, queue: &str, run_id: &str) -> Result<bool> {
        self.claim_as(queue, run_id, Some(lead))
    }

    fn set_priority(&self, queue: &str, run_id: &str, priority: i32) -> Result<Option<QueueItem>> {
        let (queue, run_id) = (Arc::new(queue.to_string()), Arc::new(run_id.to_string()));
        self.run(move |db| {
            let (q, r) = (queue.clone(), run_id.clone());
            async move { set_priority(&db, &q, &r, priority).await }
        })
    }

    fn queues(&self) -> Result<Vec<String>> {
        let rows = self.run(|db| async move {
            let sql = "SELECT DISTINCT queue FROM queue_items WHERE claim IS NULL ORDER BY queue";
            db.fetch(sql, &[], &[K::Text]).await
        })?;
        Ok(super::db::texts(rows))
    }
}
