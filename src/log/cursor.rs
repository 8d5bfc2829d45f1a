//! Where the listener is in the event log: the highest seq read, and the seqs below it that may
//! still commit.
//!
//! # Out-of-order commits
//!
//! `seq` is drawn when a row is written, but rows become visible when their transaction commits,
//! and transactions commit out of `seq` order: a long transaction takes seq 10 and commits after
//! seq 11 was read. So every seq skipped below the cursor is *pending*: it may still appear.
//!
//! Who can still commit a pending seq? A seq `s` skipped by a read is below a seq `c` that read
//! saw committed, so `s` was drawn before `c` committed, hence before the read's snapshot; and
//! the writer of `s` had a transaction id when it drew `s` (it changed `citas`, or called
//! `pg_current_xact_id()` in `notify_cita()`, before writing the log). So that writer was either
//! finished by the snapshot (and `s` will never appear: a rollback) or running at the snapshot.
//! The transactions running at a snapshot are its list `xip` *and every id from its `xmax`
//! (the newest finished id, plus one) up to the next id to be assigned*: `xip` lists only ids
//! below `xmax`, and a writer that took its id after the newest commit is above it. The read
//! learns the next id too ([`Running`]). A read's new pending seqs therefore form a [`Group`]
//! whose possible *writers* are that snapshot's running transactions, and nothing else.
//!
//! Each later read brings its own running transactions. When one of a group's writers is no
//! longer among them, that writer ended, and if it committed its rows are now visible: the group
//! is *probed* (its seqs read from the log). Writers that ended are then struck off, and a group
//! with no writer left is given up after that probe: whatever did not show up was rolled back.
//! No seq is given up while a transaction that may hold it is running, however long it runs and
//! however many seqs other transactions burn meanwhile; and a group costs a probe only when one
//! of its writers ends, never on every read.
//!
//! Memory is proportional to what is pending: the seqs are compressed bitmaps (`roaring`), and
//! groups whose writers are the same transactions are merged (a long-open transaction ends up
//! with one group), with a hard cap on their number that merges the oldest ones (a merged group
//! is only ever probed more often and given up later, never earlier).

use std::collections::BTreeSet;
use std::sync::Arc;

use roaring::RoaringTreemap;

/// How far the listener has published: every seq at or below `cursor` and not `pending` was
/// handed to the hub already; any other seq may still be published later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogPosition {
    pub cursor: i64,
    /// Seqs below the cursor whose transactions may still commit (shared, copied on change).
    pub pending: Arc<roaring::RoaringTreemap>,
}

impl LogPosition {
    /// True when `seq` may still be published after this position was taken.
    pub fn may_publish_later(&self, seq: i64) -> bool {
        seq > self.cursor || u64::try_from(seq).is_ok_and(|key| self.pending.contains(key))
    }

    /// True when some seq at or below `seq` may still be published after this position was
    /// taken: the listener has not read that far, or a transaction holding such a seq may
    /// still commit.
    pub fn may_publish_up_to(&self, seq: i64) -> bool {
        self.cursor < seq
            || self
                .pending
                .min()
                .is_some_and(|min| i64::try_from(min).is_ok_and(|min| min <= seq))
    }
}

/// Groups kept at most; beyond this the two oldest are merged.
const MAX_GROUPS: usize = 64;

/// Pending seqs found by one read (or merged reads), and the transactions that may hold them.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    seqs: RoaringTreemap,
    /// The transactions that were running when the seqs were found and have not been seen to
    /// end since.
    writers: Writers,
}

/// The listener's place in the log. See the module documentation.
#[derive(Debug, Default)]
pub struct LogCursor {
    /// The highest seq read; `None` before the first read.
    pub cursor: Option<i64>,
    groups: Vec<Group>,
    /// Every pending seq (the union of the groups), shared with the hub for resuming clients.
    pending: Arc<RoaringTreemap>,
}

/// The transactions running at one snapshot (ids as `xid8` integers): those listed in `xip`,
/// and every id from `xmax` up to (not including) `next`, the next id to be assigned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Running {
    pub xip: BTreeSet<i64>,
    pub xmax: i64,
    pub next: i64,
}

/// A snapshot's text (`pg_current_snapshot()::text`) that is not `xmin:xmax:xip,...`.
#[derive(Debug, thiserror::Error)]
#[error("unexpected snapshot from the database: {0:?}")]
pub struct BadSnapshot(String);

impl Running {
    /// From a snapshot's text form, `xmin:xmax:xip1,xip2,...` (`pg_current_snapshot()::text`),
    /// and how many ids were assigned at or above its `xmax` by the time it was read
    /// (`ahead`: `next` is `xmax + ahead`).
    pub fn from_snapshot(text: &str, ahead: i32) -> Result<Running, BadSnapshot> {
        let bad = || BadSnapshot(text.chars().take(100).collect());
        let mut parts = text.splitn(3, ':');
        let (Some(xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let id = |digits: &str| digits.parse::<i64>().map_err(|_| bad());
        let (xmin, xmax) = (id(xmin)?, id(xmax)?);
        let xip = xip
            .split(',')
            .filter(|x| !x.is_empty())
            .map(id)
            .collect::<Result<BTreeSet<i64>, _>>()?;
        let next = xmax.checked_add(i64::from(ahead)).ok_or_else(bad)?;
        if ahead < 0 || xmin > xmax || xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(bad());
        }
        Ok(Running { xip, xmax, next })
    }

    /// True when transaction `xid` may still be running. Ids from `xmax` on count as running:
    /// the writers we track were assigned before an earlier snapshot, so below `next`.
    fn contains(&self, xid: i64) -> bool {
        xid >= self.xmax || self.xip.contains(&xid)
    }

    fn is_empty(&self) -> bool {
        self.xip.is_empty() && self.next <= self.xmax
    }
}

/// The transactions that may hold a group's seqs: a set of ids, and a range of ids
/// (`from..to`) that were at or above some snapshot's `xmax`, kept as a range so that a
/// transaction that burns many subtransaction ids costs no memory.
#[derive(Debug, Clone, Default, PartialEq)]
struct Writers {
    xids: BTreeSet<i64>,
    from: i64,
    to: i64,
}

impl Writers {
    fn of(running: &Running) -> Writers {
        Writers {
            xids: running.xip.clone(),
            from: running.xmax,
            to: running.next,
        }
        .normalized()
    }

    fn is_empty(&self) -> bool {
        self.xids.is_empty() && self.from >= self.to
    }

    /// True when some writer is not running any more.
    fn any_ended(&self, running: &Running) -> bool {
        if self.xids.iter().any(|&xid| !running.contains(xid)) {
            return true;
        }
        // Ids of the range below the new `xmax` run only if they are in `xip`.
        let end = self.to.min(running.xmax);
        let listed = running.xip.range(self.from..end).count() as i64;
        self.from < end && listed < end - self.from
    }

    /// Strikes off the writers that are not running any more.
    fn keep_running(&mut self, running: &Running) {
        self.xids.retain(|&xid| running.contains(xid));
        let end = self.to.min(running.xmax);
        if self.from < end {
            self.xids.extend(running.xip.range(self.from..end));
            self.from = end;
        }
        *self = std::mem::take(self).normalized();
    }

    /// Both groups' writers (the range becomes the span of both: only ever more writers).
    fn merge(&mut self, other: Writers) {
        self.xids.extend(other.xids);
        if other.from < other.to {
            if self.from < self.to {
                self.from = self.from.min(other.from);
                self.to = self.to.max(other.to);
            } else {
                (self.from, self.to) = (other.from, other.to);
            }
        }
    }

    /// An empty range is always `0..0`, so that equal writers compare equal.
    fn normalized(mut self) -> Writers {
        if self.from >= self.to {
            (self.from, self.to) = (0, 0);
        }
        self
    }
}

impl LogCursor {
    /// Takes in one read's new seqs (in increasing order, all above the cursor): moves the
    /// cursor and records the seqs it skipped as pending, held by `running`.
    pub fn advance<'a>(&mut self, seqs: impl IntoIterator<Item = &'a i64>, running: &Running) {
        let mut cursor = self.cursor.unwrap_or(0);
        let mut skipped = RoaringTreemap::new();
        for &seq in seqs {
            if seq <= cursor {
                continue; // cannot happen: reads ask for seqs above the cursor
            }
            if seq > cursor + 1 {
                skipped.insert_range(as_key(cursor + 1)..as_key(seq));
            }
            cursor = seq;
        }
        self.cursor = Some(cursor);
        if skipped.is_empty() || running.is_empty() {
            return; // nobody was writing: the skipped seqs were rolled back
        }
        *Arc::make_mut(&mut self.pending) |= &skipped;
        self.groups.push(Group {
            seqs: skipped,
            writers: Writers::of(running),
        });
        self.compact();
    }

    /// Seqs below the cursor (inclusive ranges) that `running` transactions may hold: the
    /// first start's view of what is still in flight, however far back.
    pub fn hold(&mut self, ranges: impl IntoIterator<Item = (i64, i64)>, running: &Running) {
        let cursor = self.cursor.unwrap_or(0);
        let mut seqs = RoaringTreemap::new();
        for (lo, hi) in ranges {
            let (lo, hi) = (lo.max(1), hi.min(cursor));
            if lo <= hi {
                seqs.insert_range(as_key(lo)..=as_key(hi));
            }
        }
        if seqs.is_empty() || running.is_empty() {
            return;
        }
        *Arc::make_mut(&mut self.pending) |= &seqs;
        self.groups.push(Group {
            seqs,
            writers: Writers::of(running),
        });
        self.compact();
    }

    /// The pending seqs that may have become visible: those of every group with a writer that
    /// is not running any more. As inclusive ranges `(lo, hi)`, for the probe query.
    pub fn to_probe(&self, running: &Running) -> Vec<(i64, i64)> {
        let mut seqs = RoaringTreemap::new();
        for group in &self.groups {
            if group.writers.any_ended(running) {
                seqs |= &group.seqs;
            }
        }
        ranges(&seqs)
    }

    /// A pending seq showed up in the log: it leaves the pending set. False when it was not
    /// pending (already delivered: never deliver twice).
    pub fn take(&mut self, seq: i64) -> bool {
        let Ok(key) = u64::try_from(seq) else {
            return false;
        };
        if !self.pending.contains(key) {
            return false;
        }
        Arc::make_mut(&mut self.pending).remove(key);
        for group in &mut self.groups {
            if group.seqs.remove(key) {
                break;
            }
        }
        true
    }

    /// After the probe of [`LogCursor::to_probe`]: writers not in `running` (the read's running
    /// transactions, taken before the probe) have ended and their rows were probed, so they
    /// are struck off; a group left without writers is given up. Returns how many seqs were
    /// given up (rolled back).
    pub fn settle(&mut self, running: &Running) -> u64 {
        let mut given_up = RoaringTreemap::new();
        self.groups.retain_mut(|group| {
            group.writers.keep_running(running);
            if group.writers.is_empty() || group.seqs.is_empty() {
                given_up |= &group.seqs;
                false
            } else {
                true
            }
        });
        if !given_up.is_empty() {
            *Arc::make_mut(&mut self.pending) -= &given_up;
        }
        self.compact();
        given_up.len()
    }

    /// How many seqs are pending.
    pub fn pending_len(&self) -> u64 {
        self.pending.len()
    }

    /// What resuming clients de-duplicate against (see [`LogPosition`]).
    pub fn position(&self) -> LogPosition {
        LogPosition {
            cursor: self.cursor.unwrap_or(0),
            pending: self.pending.clone(),
        }
    }

    /// Merges groups with the same writers, and the oldest ones beyond [`MAX_GROUPS`].
    fn compact(&mut self) {
        let mut merged: Vec<Group> = Vec::with_capacity(self.groups.len());
        for group in self.groups.drain(..) {
            match merged.iter_mut().find(|g| g.writers == group.writers) {
                Some(same) => same.seqs |= group.seqs,
                None => merged.push(group),
            }
        }
        while merged.len() > MAX_GROUPS {
            let oldest = merged.remove(0);
            merged[0].seqs |= oldest.seqs;
            merged[0].writers.merge(oldest.writers);
        }
        self.groups = merged;
    }
}

fn as_key(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// A set of seqs as inclusive ranges of consecutive seqs.
fn ranges(seqs: &RoaringTreemap) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for key in seqs.iter() {
        let seq = i64::try_from(key).unwrap_or(i64::MAX);
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == seq => *hi = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_may_publish_up_to_a_seq_it_has_not_passed_or_still_waits_for() {
        let position = LogPosition {
            cursor: 10,
            pending: Arc::new([4u64, 7].into_iter().collect()),
        };
        assert!(position.may_publish_up_to(11));
        assert!(position.may_publish_up_to(4) && position.may_publish_up_to(5));
        assert!(!position.may_publish_up_to(3));
        let passed = LogPosition {
            cursor: 10,
            pending: Arc::default(),
        };
        assert!(!passed.may_publish_up_to(10) && passed.may_publish_up_to(i64::MAX));
    }

    /// Running transactions all listed in `xip` (nobody above `xmax`).
    fn running(xids: &[i64]) -> Running {
        Running {
            xip: xids.iter().copied().collect(),
            xmax: 1 << 40,
            next: 1 << 40,
        }
    }

    fn snapshot(xip: &[i64], xmax: i64, next: i64) -> Running {
        Running {
            xip: xip.iter().copied().collect(),
            xmax,
            next,
        }
    }

    #[test]
    fn a_snapshot_is_read_from_its_text() {
        let running = Running::from_snapshot("748:752:748,750", 3).expect("a snapshot");
        assert_eq!(running, snapshot(&[748, 750], 752, 755));
        let idle = Running::from_snapshot("752:752:", 0).expect("a snapshot");
        assert_eq!(idle, snapshot(&[], 752, 752));
        assert!(idle.is_empty());
        for bad in [
            "",
            "752",
            "752:752",
            "a:752:",
            "1:x:",
            "1:752:7,,q",
            "1:752:800",
            "753:752:",
            "749:752:748",
            "1:9223372036854775808:",
        ] {
            assert!(Running::from_snapshot(bad, 0).is_err(), "{bad:?}");
        }
        assert!(Running::from_snapshot("1:752:", -1).is_err());
        assert!(Running::from_snapshot("1:9223372036854775807:", 1).is_err());
    }

    #[test]
    fn writers_above_xmax_are_waited_for() {
        let mut log = LogCursor::default();
        // Transaction 20 committed seq 2; 21 and 22 took their ids after it, above xmax.
        log.advance(&[2], &snapshot(&[], 21, 23));
        assert!(log.position().may_publish_later(1));
        // Nothing ended yet (xmax moved because 23 ended; 21 and 22 are listed).
        let now = snapshot(&[21, 22], 24, 24);
        assert!(log.to_probe(&now).is_empty());
        assert_eq!(log.settle(&now), 0);
        // 21 ended: probe; 22 still running, so seq 1 stays pending.
        let now = snapshot(&[22], 25, 25);
        assert_eq!(log.to_probe(&now), vec![(1, 1)]);
        assert_eq!(log.settle(&now), 0);
        assert!(log.position().may_publish_later(1));
        // 22 ended: probe once more, then give up.
        let now = snapshot(&[], 25, 26);
        assert_eq!(log.to_probe(&now), vec![(1, 1)]);
        assert_eq!(log.settle(&now), 1);
        assert_eq!(log.pending_len(), 0);
    }

    #[test]
    fn a_huge_range_of_ids_costs_no_memory() {
        let mut log = LogCursor::default();
        log.advance(&[2], &snapshot(&[], 10, 10 + (1 << 40)));
        let now = snapshot(&[], 1 << 30, 10 + (1 << 40));
        assert_eq!(log.to_probe(&now), vec![(1, 1)]);
        assert_eq!(log.settle(&now), 0);
        assert_eq!(log.groups[0].writers.from, 1 << 30);
    }

    #[test]
    fn skipped_seqs_wait_for_their_writers() {
        let mut log = LogCursor {
            cursor: Some(5),
            ..LogCursor::default()
        };
        log.advance(&[6, 9, 10], &running(&[100, 101]));
        assert_eq!(log.cursor, Some(10));
        assert_eq!(log.pending_len(), 2);
        assert!(log.position().may_publish_later(7));
        assert!(!log.position().may_publish_later(9));
        // Both writers still running: nothing to probe, nothing given up.
        assert!(log.to_probe(&running(&[100, 101, 102])).is_empty());
        assert_eq!(log.settle(&running(&[100, 101, 102])), 0);
        // 101 ended: probe; 8 showed up; 7 stays pending while 100 runs.
        let now = running(&[100]);
        assert_eq!(log.to_probe(&now), vec![(7, 8)]);
        assert!(log.take(8));
        assert!(!log.take(8));
        assert_eq!(log.settle(&now), 0);
        assert!(log.position().may_publish_later(7));
        // 100 ended too: one more probe, then 7 is given up.
        assert_eq!(log.to_probe(&running(&[])), vec![(7, 7)]);
        assert_eq!(log.settle(&running(&[])), 1);
        assert_eq!(log.pending_len(), 0);
    }

    #[test]
    fn nobody_running_means_rolled_back() {
        let mut log = LogCursor::default();
        log.advance(&[3], &running(&[]));
        assert_eq!(log.pending_len(), 0);
        assert_eq!(log.cursor, Some(3));
    }

    #[test]
    fn a_long_transaction_keeps_many_gaps_in_one_group() {
        let mut log = LogCursor::default();
        let mut seq = 0;
        for i in 0..100_000i64 {
            // Each read skips one seq (a rollback) while transaction 1 and a short one run.
            seq += 2;
            log.advance(&[seq], &running(&[1, 1000 + i]));
            let now = running(&[1]);
            for (lo, hi) in log.to_probe(&now) {
                assert!(lo >= 1 && hi <= seq);
            }
            log.settle(&now);
        }
        assert_eq!(log.groups.len(), 1);
        assert_eq!(log.pending_len(), 100_000);
        assert!(log.position().may_publish_later(1));
        // The long transaction ends: one probe over everything, then all is given up.
        assert_eq!(log.to_probe(&running(&[])).len(), 100_000);
        assert_eq!(log.settle(&running(&[])), 100_000);
    }

    #[test]
    fn groups_are_capped_by_merging_the_oldest() {
        let mut log = LogCursor::default();
        for i in 0..(MAX_GROUPS as i64 * 3) {
            log.advance(&[(i + 1) * 2], &running(&[i]));
        }
        assert!(log.groups.len() <= MAX_GROUPS);
        assert_eq!(log.pending_len(), MAX_GROUPS as u64 * 3);
    }
}
