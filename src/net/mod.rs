//! Transports below WebSocket.
