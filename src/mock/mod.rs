//! A scriptable mock of the upstream Responses API (WebSocket and HTTP/SSE), for tests and `perf/`.
