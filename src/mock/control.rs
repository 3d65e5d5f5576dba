//! The `/_mock/*` endpoints, for driving a mock that runs in another process.

use std::io;

use futures_lite::{AsyncRead, AsyncWrite};

use super::errors::ApiError;
use super::http::{self, Reader};
use super::rest::{self, Next};
use super::script::Script;
use super::state::Shared;
use crate::protocol::http1::RequestHead;

/// Path prefix of the control endpoints.
pub const PREFIX: &str = "/_mock/";

/// Answers `GET /_mock/stats`, `POST /_mock/script` (appends) and `POST /_mock/reset`.
pub async fn handle<S>(
    reader: &mut Reader<S>,
    head: &RequestHead,
    body: &[u8],
    shared: &Shared,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = head.keep_alive();
    let endpoint = head.path.strip_prefix(PREFIX).unwrap_or_default();
    match (&*head.method, endpoint) {
        ("GET", "stats") => {
            let json = sonic_rs::to_string(&shared.snapshot()).map_err(io::Error::other)?;
            ok(reader, json, keep_alive).await
        }
        ("POST", "script") => match sonic_rs::from_slice::<Script>(body) {
            Ok(script) => {
                shared.append_script(script);
                ok(reader, "{\"ok\":true}".to_string(), keep_alive).await
            }
            Err(e) => {
                let err = ApiError::invalid_request(format!("Invalid script: {e}"));
                rest::error(reader, &err, keep_alive).await
            }
        },
        ("POST", "reset") => {
            shared.reset();
            ok(reader, "{\"ok\":true}".to_string(), keep_alive).await
        }
        (_, "stats" | "script" | "reset") => {
            rest::error(reader, &ApiError::for_status(405), keep_alive).await
        }
        _ => rest::error(reader, &ApiError::for_status(404), keep_alive).await,
    }
}

async fn ok<S>(reader: &mut Reader<S>, json: String, keep_alive: bool) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    http::respond(
        reader.stream(),
        200,
        "application/json",
        &[],
        json.as_bytes(),
        keep_alive,
    )
    .await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}
