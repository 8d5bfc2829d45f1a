//! A second writer for large direct fan-outs: one long-lived thread that offers a frame to the
//! outlets it is handed while the publishing thread offers it to the rest.
//!
//! The publisher waits for the lane's answer before it moves on (see `hub::fan_out`), so a
//! subscriber's frames keep their order and none is written after the hub's read lock is given
//! up. The thread is started on the first split and ends when the hub (its only sender) is
//! dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::fanout::frames::Outbound;
use crate::fanout::outlet::{Offered, Outlet};

/// One half of a fan-out, and where to answer.
struct Job {
    frame: Arc<Outbound>,
    outlets: Vec<Arc<dyn Outlet>>,
    done: mpsc::SyncSender<Vec<Offered>>,
}

#[derive(Debug)]
pub(crate) struct Lane {
    jobs: mpsc::Sender<Job>,
    /// Set when a job went unanswered: the lane is not used again.
    dead: AtomicBool,
}

impl Lane {
    /// Starts the lane's thread; `None` when no thread can be had.
    pub(crate) fn start() -> Option<Lane> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("citas-fanout".into())
            .spawn(move || {
                for job in queue {
                    let offered = job
                        .outlets
                        .iter()
                        .map(|outlet| outlet.offer(&job.frame, true))
                        .collect();
                    drop(job.outlets);
                    let _ = job.done.send(offered);
                }
            })
            .ok()?;
        Some(Lane {
            jobs,
            dead: AtomicBool::new(false),
        })
    }

    /// Hands `outlets` to the lane, runs `meanwhile` here, then waits for the lane: how each
    /// offer went, in order; `None` if the lane is gone and took nothing. Should the lane die
    /// during the job (a bug), which of its frames went out is unknown: every one of its
    /// outlets is answered `Full`, so those clients are kicked and resume without a gap.
    pub(crate) fn offer_beside<T>(
        &self,
        frame: &Arc<Outbound>,
        outlets: Vec<Arc<dyn Outlet>>,
        meanwhile: impl FnOnce() -> T,
    ) -> (T, Option<Vec<Offered>>) {
        let (done, answer) = mpsc::sync_channel(1);
        let n = outlets.len();
        let job = Job {
            frame: frame.clone(),
            outlets,
            done,
        };
        let sent = !self.dead.load(Ordering::Relaxed) && self.jobs.send(job).is_ok();
        let mine = meanwhile();
        if !sent {
            return (mine, None);
        }
        let offered = answer.recv().unwrap_or_else(|_| {
            self.dead.store(true, Ordering::Relaxed);
            tracing::error!(
                subscribers = n,
                "the fan-out lane died: kicking its subscribers"
            );
            vec![Offered::Full; n]
        });
        (mine, Some(offered))
    }
}
