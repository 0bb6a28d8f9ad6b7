//! The one way async code reaches the CNN: a dedicated worker thread behind a bounded
//! queue. Requests that arrive while a forward pass runs are batched into the next one;
//! a full queue is refused at once ([`Error::QueueFull`]) instead of growing memory, so the
//! server can answer 503 with `Retry-After`.

use crate::error::{Error, Result};
use crate::extractor::{
    CropBox, ExtractError, Extracted, FeatureExtractor, ImageInput, LocalFor, View,
};
use futures_channel::oneshot;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

type Reply = oneshot::Sender<std::result::Result<Extracted, ExtractError>>;

/// What to extract from a queued image (see [`ImageInput`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub crop: Option<CropBox>,
    pub view: View,
    pub local: LocalFor,
}

struct Job {
    image: Arc<[u8]>,
    want: Want,
    reply: Reply,
}

pub struct EmbedQueue {
    sender: Option<SyncSender<Job>>,
    capacity: usize,
    worker: Option<JoinHandle<()>>,
}

impl EmbedQueue {
    /// Starts the worker thread. `capacity` jobs may wait; `max_batch` go into one pass.
    pub fn start(extractor: Arc<dyn FeatureExtractor>, capacity: usize, max_batch: usize) -> Self {
        let (sender, receiver) = sync_channel::<Job>(capacity);
        let max_batch = max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("exemplar-embed".into())
            .spawn(move || run_worker(extractor.as_ref(), receiver, max_batch))
            .expect("spawning the embedding thread");
        Self {
            sender: Some(sender),
            capacity,
            worker: Some(worker),
        }
    }

    /// Jobs that may wait.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues one encoded image; await the returned future for what was extracted.
    /// Fails at once, without waiting, when the queue is full. Jobs that share one
    /// allocation (several views of a photo) can be decoded once when batched together.
    pub fn submit(
        &self,
        image: impl Into<Arc<[u8]>>,
        want: Want,
    ) -> Result<impl std::future::Future<Output = Result<Extracted>>> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.as_ref().ok_or(Error::WorkerStopped)?;
        match sender.try_send(Job {
            image: image.into(),
            want,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => return Err(Error::WorkerStopped),
        }
        Ok(async move {
            match answer.await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::WorkerStopped),
            }
        })
    }

    /// Queues one whole image and waits for its pooled feature.
    pub async fn embed(&self, image: Vec<u8>) -> Result<crate::PooledFeature> {
        Ok(self.submit(image, Want::default())?.await?.pooled)
    }
}

impl Drop for EmbedQueue {
    fn drop(&mut self) {
        // Closing the channel lets the worker finish what is queued, then exit.
        self.sender.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn run_worker(extractor: &dyn FeatureExtractor, receiver: Receiver<Job>, max_batch: usize) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let images: Vec<ImageInput<'_>> = jobs
            .iter()
            .map(|j| ImageInput {
                bytes: &j.image,
                crop: j.want.crop,
                view: j.want.view,
                local: j.want.local,
            })
            .collect();
        let results = extractor.extract(&images);
        tracing::debug!(batch = jobs.len(), "embedded batch");
        for (job, result) in jobs.into_iter().zip(results) {
            // The requester may have gone away (client disconnected): nothing to do.
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extractor::ModelInfo;
    use crate::PooledFeature;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Returns the first byte as a 1-d feature; records batch sizes; can be held shut.
    struct Fake {
        info: ModelInfo,
        batches: Mutex<Vec<usize>>,
        gate: Mutex<()>,
        entered: AtomicUsize,
    }

    impl FeatureExtractor for Fake {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn extract(
            &self,
            images: &[ImageInput<'_>],
        ) -> Vec<std::result::Result<Extracted, ExtractError>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.batches.lock().unwrap().push(images.len());
            images
                .iter()
                .map(|i| match i.bytes.first() {
                    Some(b) => Ok(Extracted {
                        pooled: PooledFeature(vec![*b as f32]),
                        local: i.local.wanted().then(|| vec![*b]),
                    }),
                    None => Err(ExtractError::CorruptImage("empty".into())),
                })
                .collect()
        }
    }

    fn fake() -> Arc<Fake> {
        Arc::new(Fake {
            info: ModelInfo {
                id: "fake".into(),
                feature_dim: 1,
            },
            batches: Mutex::new(vec![]),
            gate: Mutex::new(()),
            entered: AtomicUsize::new(0),
        })
    }

    #[test]
    fn answers_in_order_and_reports_bad_images_individually() {
        let queue = EmbedQueue::start(fake(), 8, 4);
        let a = queue.submit(vec![7], Want::default()).unwrap();
        let b = queue.submit(vec![], Want::default()).unwrap();
        assert_eq!(
            futures_executor::block_on(a).unwrap().pooled,
            PooledFeature(vec![7.0])
        );
        let err = futures_executor::block_on(b).unwrap_err();
        assert!(matches!(err, Error::Extract(ExtractError::CorruptImage(_))));
    }

    #[test]
    fn waiting_requests_are_batched_and_a_full_queue_is_refused() {
        let extractor = fake();
        let queue = EmbedQueue::start(extractor.clone(), 3, 8);
        let held = extractor.gate.lock().unwrap();
        // The worker takes the first job and blocks on the gate...
        let first = queue.submit(vec![1], Want::default()).unwrap();
        while extractor.entered.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...so three more fill the queue and the fifth is refused.
        let waiting: Vec<_> = (2..5)
            .map(|i| queue.submit(vec![i], Want::default()).unwrap())
            .collect();
        assert!(matches!(
            queue.submit(vec![9], Want::default()),
            Err(Error::QueueFull { capacity: 3 })
        ));
        drop(held);
        assert_eq!(
            futures_executor::block_on(first).unwrap().pooled.0,
            vec![1.0]
        );
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(
                futures_executor::block_on(w).unwrap().pooled.0,
                vec![(i + 2) as f32]
            );
        }
        assert_eq!(*extractor.batches.lock().unwrap(), vec![1, 3]);
    }
}
