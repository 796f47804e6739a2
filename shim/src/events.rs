//! One ordered queue of task events to containerd.
//!
//! Every event goes through one channel drained by one task that forwards it to containerd's
//! events service and waits for the answer before the next, so containerd sees events in the
//! order the shim decided them (TaskCreate, TaskStart, TaskExit, TaskDelete), whatever the RPC
//! concurrency. (containerd-shim's `RemotePublisher` queues too, but requeues failures behind
//! later events, which breaks that order.) [`EventQueue::flush`] returns once everything queued
//! before it was delivered or given up, so the server does not exit with events unsent.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context::Context;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many times an event is offered before it is dropped: about two minutes, so that a
/// containerd restarting meanwhile still receives it.
const ATTEMPTS: u32 = 120;

enum Item {
    Event(&'static str, Box<dyn MessageDyn>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::UnboundedSender<Item>,
    namespace: std::sync::Arc<str>,
}

fn connect(address: &str) -> anyhow::Result<EventsClient> {
    let fd = containerd_shim::util::connect(address)?;
    // SAFETY: `fd` is a connected unix socket returned by `connect`, owned by nobody else; the
    // client takes ownership of it.
    let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
    Ok(EventsClient::new(client))
}

impl EventQueue {
    /// `address` is containerd's ttrpc socket. The connection is made on first use and remade
    /// after a failure.
    pub fn new(address: String, namespace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let shared: std::sync::Arc<str> = namespace.as_str().into();
        tokio::spawn(async move {
            let mut client: Option<EventsClient> = None;
            while let Some(item) = rx.recv().await {
                let (topic, event) = match item {
                    Item::Event(topic, event) => (topic, event),
                    Item::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let envelope = match containerd_shim::util::convert_to_any(event) {
                    Ok(any) => Envelope {
                        timestamp: Some(crate::process::timestamp(std::time::SystemTime::now()))
                            .into(),
                        namespace: namespace.clone(),
                        topic: topic.to_string(),
                        event: Some(any).into(),
                        ..Default::default()
                    },
                    Err(e) => {
                        log::error!("encode {topic}: {e}");
                        continue;
                    }
                };
                let req = ForwardRequest {
                    envelope: Some(envelope).into(),
                    ..Default::default()
                };
                for attempt in 1..=ATTEMPTS {
                    if client.is_none() {
                        client = connect(&address)
                            .map_err(|e| log::warn!("connect to containerd events {address}: {e}"))
                            .ok();
                    }
                    let sent = match &client {
                        Some(c) => c
                            .forward(Context::default(), &req)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("not connected".into()),
                    };
                    match sent {
                        Ok(_) => break,
                        Err(e) => {
                            log::warn!("publish {topic} (attempt {attempt}): {e}");
                            client = None;
                            tokio::time::sleep(Duration::from_millis(
                                100 * u64::from(attempt.min(10)),
                            ))
                            .await;
                        }
                    }
                }
            }
        });
        Self {
            tx,
            namespace: shared,
        }
    }

    /// The containerd namespace the events go to (and the containers live in).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        log::debug!("event {topic}");
        if self.tx.send(Item::Event(topic, Box::new(event))).is_err() {
            log::error!("event queue closed, dropping {topic}");
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
