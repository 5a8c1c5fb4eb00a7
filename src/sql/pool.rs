//! The parser pool: large statements are classified here, never on an async worker.
//!
//! Parsing a 1 MiB `IN` list takes tens of milliseconds of CPU. Done on a tokio worker
//! (or on a thread the worker waits for), two sessions pipelining such statements stall
//! every other session of a 2-core gateway. So statements over
//! [`postgres::INLINE_PARSE_MAX`] go to a fixed set of big-stack threads through a
//! bounded queue, and the session awaits the answer without holding a worker. When the
//! queue is full the statement is refused at once ([`ClassifyError::Busy`]): a clear
//! error for one agent instead of a stall for everyone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::postgres::{self, INLINE_PARSE_MAX, PARSE_STACK};
use super::{ClassifyError, StatementFacts};

type Classified = Result<Vec<StatementFacts>, ClassifyError>;

/// Which grammar classifies a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    Postgres,
    Mysql,
}

struct Job {
    sql: String,
    grammar: Grammar,
    max_bytes: usize,
    reply: oneshot::Sender<Classified>,
}

/// A fixed set of parser threads with a bounded queue.
pub struct ParsePool {
    tx: SyncSender<Job>,
    /// Jobs queued or running (for the refusal message).
    in_flight: Arc<AtomicUsize>,
}

impl ParsePool {
    /// Starts `threads` parser threads; at most `queue` statements wait for one.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<ParsePool> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(AtomicUsize::new(0));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let in_flight = in_flight.clone();
            std::thread::Builder::new()
                .name(format!("sqlgate-parse-{i}"))
                .stack_size(PARSE_STACK)
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = match job.grammar {
                        Grammar::Postgres => postgres::classify_on_parser_thread(&job.sql),
                        Grammar::Mysql => super::mysql::classify(&job.sql, job.max_bytes),
                    };
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = job.reply.send(result);
                })?;
        }
        Ok(ParsePool { tx, in_flight })
    }

    /// Classifies `sql`: small statements right here (release builds), larger ones on
    /// a pool thread, or [`ClassifyError::Busy`] when the queue is full.
    pub async fn classify(&self, sql: &str, max_bytes: usize, grammar: Grammar) -> Classified {
        if sql.len() <= INLINE_PARSE_MAX && !cfg!(debug_assertions) {
            return match grammar {
                Grammar::Postgres => postgres::classify(sql, max_bytes),
                Grammar::Mysql => super::mysql::classify(sql, max_bytes),
            };
        }
        // Checked here, so an oversized text is never copied into the queue.
        match grammar {
            Grammar::Postgres => postgres::check_limits(sql, max_bytes)?,
            Grammar::Mysql if sql.len() > max_bytes => {
                return Err(ClassifyError::TooLarge {
                    len: sql.len(),
                    max: max_bytes,
                })
            }
            Grammar::Mysql => {}
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            sql: sql.to_owned(),
            grammar,
            max_bytes,
            reply,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let queued = self.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(ClassifyError::Busy { queued });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(ClassifyError::Internal("the parser threads stopped".into()));
            }
        }
        answer
            .await
            .map_err(|_| ClassifyError::Internal("a parser thread failed".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_in_list(n: usize) -> String {
        let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("SELECT 1 WHERE 1 IN ({})", list.join(","))
    }

    #[tokio::test]
    async fn large_statements_parse_on_the_pool() {
        let pool = ParsePool::start(1, 4).unwrap();
        let facts = pool
            .classify(&big_in_list(2000), 1 << 20, Grammar::Postgres)
            .await
            .unwrap();
        assert_eq!(facts.len(), 1);
        assert!(matches!(
            pool.classify(&big_in_list(2000), 100, Grammar::Postgres)
                .await,
            Err(ClassifyError::TooLarge { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let pool = Arc::new(ParsePool::start(1, 0).unwrap());
        let sql = big_in_list(200_000);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                let sql = sql.clone();
                tokio::spawn(async move { pool.classify(&sql, 8 << 20, Grammar::Postgres).await })
            })
            .collect();
        let mut busy = 0;
        let mut parsed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => parsed += 1,
                Err(ClassifyError::Busy { .. }) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(parsed >= 1, "at least one statement parses");
        assert!(busy >= 1, "a full queue refuses ({parsed} parsed)");
    }
}
