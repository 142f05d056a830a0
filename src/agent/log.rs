//! A job's log on its way to the server: the runner appends to a channel
//! (never blocking terraform), and [`stream`] sends what gathered about
//! every second as numbered [`LogChunk`]s, so a retried chunk is stored once.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{Client, ClientError, JobRef};
use crate::runner::protocol::LogChunk;

/// The most text one chunk carries, in bytes: a long burst of output goes as
/// several chunks.
const MAX_CHUNK: usize = 64 * 1024;

/// Sends `lines` to the server every `every` until the channel closes, then
/// the rest. Returns `Err(LeaseLost)` at once when the server answers 409;
/// other failures keep the chunk for the next tick (same `seq`) and, at the
/// end, give up on what is left.
pub async fn stream(
    client: &Client,
    job: &JobRef,
    mut lines: mpsc::UnboundedReceiver<String>,
    every: Duration,
) -> Result<(), ClientError> {
    let mut buffer = String::new();
    let mut pending: VecDeque<LogChunk> = VecDeque::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open {
        tokio::select! {
            line = lines.recv() => match line {
                Some(text) => {
                    buffer.push_str(&text);
                    continue;
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        seal(&mut buffer, &mut seq, &mut pending);
        if let Err(e) = send(client, job, &mut pending).await {
            if matches!(e, ClientError::LeaseLost) || !open {
                return Err(e);
            }
            tracing::warn!(job.id = job.id, error = %e, "log upload failed; will send it again");
        }
    }
    Ok(())
}

/// Moves the buffered text into numbered chunks of at most [`MAX_CHUNK`].
fn seal(buffer: &mut String, seq: &mut u64, pending: &mut VecDeque<LogChunk>) {
    let mut rest = std::mem::take(buffer);
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_CHUNK);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let tail = rest.split_off(cut);
        pending.push_back(LogChunk {
            seq: *seq,
            text: rest,
        });
        *seq += 1;
        rest = tail;
    }
}

/// Sends the pending chunks in order; a chunk leaves the queue once stored.
async fn send(
    client: &Client,
    job: &JobRef,
    pending: &mut VecDeque<LogChunk>,
) -> Result<(), ClientError> {
    while let Some(chunk) = pending.front() {
        client.log(job, chunk).await?;
        pending.pop_front();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_into_numbered_chunks_on_char_boundaries() {
        let mut buffer = "é".repeat(MAX_CHUNK); // two bytes each
        let (mut seq, mut pending) = (5, VecDeque::new());
        seal(&mut buffer, &mut seq, &mut pending);
        assert!(buffer.is_empty());
        assert_eq!(seq, 7);
        let seqs: Vec<u64> = pending.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [5, 6]);
        assert!(pending.iter().all(|c| c.text.len() <= MAX_CHUNK));
        let joined: String = pending.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(joined, "é".repeat(MAX_CHUNK));
    }
}
