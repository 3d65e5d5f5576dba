//! A client's side of WebSocket framing written by hand, for tests that must see the bytes the
//! gateway sends or keep the test's own allocations out of a count.

use std::io::Read;
use std::net::TcpStream;

/// A client text frame with a zero mask (the payload goes as is).
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81u8];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Reads a server frame's header (server frames are unmasked); the length of its payload,
/// which is next on `stream`.
pub fn read_frame_header(stream: &mut TcpStream) -> usize {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).expect("frame header");
    match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            stream.read_exact(&mut l).expect("length");
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            stream.read_exact(&mut l).expect("length");
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    }
}
