//! Request bodies: JSON read whole under the body limit, every failure a 400 that says
//! why (too large, not JSON and where) instead of axum's plain-text rejections. An
//! oversize body is still read to its end (up to a bound) before the answer, so a client
//! still writing gets the 400 rather than a reset. Uploads (later) stream and do not come
//! through here.

use axum::extract::{FromRequest, Request};
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ApiError;
use super::AppState;

/// How much of an oversize body is read (and dropped) before the 400 is sent. A client
/// that writes its whole body before reading the answer (HPE's SDK does) would otherwise
/// see the connection closed under it instead of the error; past this, closing is fair.
const DRAIN_MAX: usize = 256 << 20;

/// A JSON request body (at most the server's body limit).
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<JsonBody, ApiError> {
        let limit = st.body_limit;
        let mut body = req.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(
                    "INVALID_REQUEST_BODY",
                    format!("reading the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit.saturating_add(DRAIN_MAX) {
                break;
            }
        }
        if seen > limit {
            return Err(ApiError::bad_request(
                "REQUEST_TOO_LARGE",
                format!(
                    "the request body is too large: {} bytes or more, the limit is {limit}",
                    seen
                ),
            )
            .recommend("Send a smaller body, or raise the server's --api-body-limit."));
        }
        parse(&buf).map(JsonBody)
    }
}

/// The body as JSON, or a 400 with serde's line and column.
pub fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "INVALID_JSON",
            "the request body is empty; a JSON object was expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "INVALID_JSON",
            format!("the request body is not valid JSON: {e}"),
        )
        .recommend("Send a JSON object with Content-Type: application/json.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_says_where() {
        let e = parse(b"{\"name\": }").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("line 1 column"), "{}", e.message);
        assert!(parse(b"  ").unwrap_err().message.contains("empty"));
        assert_eq!(parse(b"{\"a\":1}").unwrap()["a"], 1);
    }
}
