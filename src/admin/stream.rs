//! `GET /v1/audit/stream`: the audit log live as Server-Sent Events
//! (`id: <seq>`, `event: audit`, `data: <event JSON>`), for the console and
//! `clavis audit --follow` (and `curl -N`). A reconnecting client sends
//! `Last-Event-ID` and gets what it missed from the ring first; a comment
//! opens the stream at once and keeps it alive every 15 s.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{broadcast, mpsc};

use crate::audit::Event;
use crate::error::ProxyError;
use crate::identity::Caller;
use crate::state::State;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn frame(event: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: audit\ndata: {}\n\n",
        event.seq(),
        event.to_json()
    ))
}

/// The stream's body: what the forwarding task hands over.
struct Channel(mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

pub(super) async fn audit_stream(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ProxyError> {
    who.require_admin()?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (missed, mut live) = state.audit.follow(after);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut last = after.unwrap_or(0);
        for event in missed {
            last = event.seq();
            if tx.send(frame(&event)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        loop {
            let out = tokio::select! {
                got = live.recv() => match got {
                    Ok(event) if event.seq() <= last => continue,
                    Ok(event) => { last = event.seq(); frame(&event) }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!(": {n} events skipped (slow reader); reconnect with Last-Event-ID to fetch them\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = tx.closed() => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let mut response = axum::body::Body::new(Channel(rx)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
