//! A second thread beside the publisher: one long-lived thread that runs a job while the
//! publishing thread does its own share, for large direct fan-outs (see `hub::Hub::fan_out`).
//!
//! The publisher always waits for the job's end before it moves on, even when its own share
//! panics, so nothing the job does outlives the publisher's locks. The thread is started on the
//! first use and ends when its [`Lane`] (the job channel's only sender) is dropped.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub(crate) struct Lane {
    jobs: mpsc::Sender<Job>,
    /// Set when a job went unanswered (it panicked): the lane is not used again.
    dead: AtomicBool,
}

/// How the lane's side of [`Lane::beside`] went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beside<R> {
    Done(R),
    /// The lane is gone: the job never ran.
    NotRun,
    /// The job started and panicked: what it did is unknown.
    Failed,
}

impl Lane {
    /// Starts the lane's thread; `None` when no thread can be had.
    pub(crate) fn start() -> Option<Lane> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("citas-fanout".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            });
        match spawned {
            Ok(_) => Some(Lane {
                jobs,
                dead: AtomicBool::new(false),
            }),
            Err(error) => {
                tracing::warn!(%error, "no second fan-out thread: large fan-outs are written by one");
                None
            }
        }
    }

    /// Runs `job` on the lane and `meanwhile` here, and returns both once both have ended.
    pub(crate) fn beside<R: Send + 'static, T>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
        meanwhile: impl FnOnce() -> T,
    ) -> (T, Beside<R>) {
        let (done, answer) = mpsc::sync_channel(1);
        let sent = !self.dead.load(Ordering::Relaxed)
            && self
                .jobs
                .send(Box::new(move || {
                    let _ = done.send(job());
                }))
                .is_ok();
        let mine = panic::catch_unwind(AssertUnwindSafe(meanwhile));
        let theirs = if !sent {
            Beside::NotRun
        } else if let Ok(theirs) = answer.recv() {
            Beside::Done(theirs)
        } else {
            self.dead.store(true, Ordering::Relaxed);
            Beside::Failed
        };
        match mine {
            Ok(mine) => (mine, theirs),
            Err(panicked) => panic::resume_unwind(panicked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_beside_and_a_failed_lane_is_not_used_again() {
        let lane = Lane::start().expect("a thread");
        let (mine, theirs) = lane.beside(|| 2, || 1);
        assert_eq!((mine, theirs), (1, Beside::Done(2)));
        let (_, theirs) = lane.beside(|| -> i32 { panic!("test panic") }, || ());
        assert_eq!(theirs, Beside::Failed);
        let (_, theirs) = lane.beside(|| 3, || ());
        assert_eq!(theirs, Beside::NotRun);
    }

    #[test]
    fn the_publisher_waits_for_the_lane_even_when_its_own_share_panics() {
        let lane = Lane::start().expect("a thread");
        let finished = std::sync::Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            lane.beside(
                // A slow job: were it not waited for, the flag would still be down below.
                move || {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    flag.store(true, Ordering::SeqCst);
                },
                || panic!("test panic"),
            )
        }));
        assert!(outcome.is_err());
        assert!(finished.load(Ordering::SeqCst));
    }
}
