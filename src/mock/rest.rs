//! `POST …/responses`: the HTTP twin, as a JSON response or an SSE stream.

use std::io;

use futures_lite::{AsyncRead, AsyncWrite};

use super::errors::ApiError;
use super::events::stamp;
use super::http::{self, Reader};
use super::request::CreateRequest;
use super::state::{ConnState, Shared};
use super::turn::{self, Ending, EventSink, Plan, Transport};
use crate::protocol::http1::RequestHead;

/// What the connection does after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next request (if the client keeps the connection alive).
    KeepAlive,
    /// End the connection.
    Close,
}

/// Answers one `POST …/responses` whose body has been read.
pub async fn handle<S>(
    reader: &mut Reader<S>,
    head: &RequestHead,
    body: &[u8],
    shared: &Shared,
    conn: &mut ConnState,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = head.keep_alive();
    shared.record(|s| {
        s.http_requests_total += 1;
        s.last_http_body = String::from_utf8_lossy(body).into_owned();
        if let Some(auth) = head.header_str("authorization") {
            s.authorizations_seen.insert(auth.to_string());
        }
        s.paths_seen.insert(head.path.clone());
    });
    if !super::ws::authorized(head, shared) {
        shared.record(|s| s.auth_failures += 1);
        return error(reader, &super::ws::unauthorized(head), keep_alive).await;
    }
    if let Some(status) = shared.script(|q| q.next_http()).filter(|s| *s != 200) {
        return error(reader, &ApiError::for_status(status), keep_alive).await;
    }
    let req = match CreateRequest::from_http_body(body) {
        Ok(req) => req,
        Err(err) => {
            shared.record(|s| s.invalid_requests_total += 1);
            let err = ApiError::invalid_request(err.to_string());
            return error(reader, &err, keep_alive).await;
        }
    };
    if req.has_generate {
        shared.record(|s| s.http_generate_rejected_total += 1);
        return error(reader, &ApiError::unsupported_generate(), keep_alive).await;
    }
    let plan = match turn::begin(&req, shared, conn, Transport::Http) {
        Ok(plan) => plan,
        Err(err) => return error(reader, &err, keep_alive).await,
    };
    if let Some(status) = plan.http_status.filter(|s| *s != 200) {
        return error(reader, &ApiError::for_status(status), keep_alive).await;
    }
    let next = if req.stream {
        stream(reader, &plan, keep_alive).await?
    } else {
        whole(reader, &plan, keep_alive).await?
    };
    turn::finish(&plan, shared, conn);
    Ok(next)
}

/// The non-streaming answer: the final response object, after the turn's simulated duration.
async fn whole<S>(reader: &mut Reader<S>, plan: &Plan, keep_alive: bool) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gaps = plan.events.len().saturating_sub(1) as u32;
    let duration = plan.first + plan.ttft + plan.delay * gaps;
    if !duration.is_zero() {
        crate::runtime::sleep(duration).await;
    }
    match (plan.ending, &plan.error) {
        (_, Some((_, err))) => {
            error(reader, err, keep_alive && plan.ending == Ending::Failed).await
        }
        (Ending::Close(_) | Ending::Drop | Ending::Garbage, None) => Ok(Next::Close),
        (Ending::Stall, None) => {
            reader.drain_until_eof().await;
            Ok(Next::Close)
        }
        (Ending::Completed | Ending::Failed, None) => {
            let body = stamp(&plan.final_response);
            http::respond(
                reader.stream(),
                200,
                "application/json",
                &[],
                body.as_bytes(),
                keep_alive,
            )
            .await?;
            Ok(next(keep_alive))
        }
    }
}

/// The SSE answer: the same events as over WebSocket, one `event:`/`data:` record each.
async fn stream<S>(reader: &mut Reader<S>, plan: &Plan, keep_alive: bool) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some((0, err)) = &plan.error {
        return error(reader, err, keep_alive && plan.ending == Ending::Failed).await;
    }
    http::respond_chunked_head(reader.stream(), 200, "text/event-stream", keep_alive).await?;
    turn::play(&mut SseSink::new(reader.stream()), plan).await?;
    match plan.ending {
        Ending::Completed | Ending::Failed => {
            http::finish_chunks(reader.stream()).await?;
            Ok(next(keep_alive))
        }
        Ending::Close(_) if plan.error.is_some() => {
            http::finish_chunks(reader.stream()).await?;
            Ok(Next::Close)
        }
        Ending::Close(_) | Ending::Drop | Ending::Garbage => Ok(Next::Close),
        Ending::Stall => {
            reader.drain_until_eof().await;
            Ok(Next::Close)
        }
    }
}

/// Writes `err` as a JSON error response (`Retry-After: 1` on 429).
pub async fn error<S>(reader: &mut Reader<S>, err: &ApiError, keep_alive: bool) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let retry: &[(&str, &str)] = if err.status == 429 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    let body = err.body_json();
    http::respond(
        reader.stream(),
        err.status,
        "application/json",
        retry,
        body.as_bytes(),
        keep_alive,
    )
    .await?;
    Ok(next(keep_alive))
}

fn next(keep_alive: bool) -> Next {
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Events as SSE records, gathered and written as one chunk per flush.
struct SseSink<'a, S> {
    stream: &'a mut S,
    pending: Vec<u8>,
}

impl<'a, S> SseSink<'a, S> {
    fn new(stream: &'a mut S) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> EventSink for SseSink<'_, S> {
    async fn feed(&mut self, kind: &str, json: String) -> io::Result<()> {
        self.pending.extend_from_slice(b"event: ");
        self.pending.extend_from_slice(kind.as_bytes());
        self.pending.extend_from_slice(b"\ndata: ");
        self.pending.extend_from_slice(json.as_bytes());
        self.pending.extend_from_slice(b"\n\n");
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        http::write_chunk(self.stream, &data).await
    }
}
