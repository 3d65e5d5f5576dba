//! A socket read buffer for plain HTTP/1.1 readers (a client connection's request heads and
//! bodies on the gateway, the mock upstream's server side, the load generator's SSE client):
//! bytes read past what was consumed stay for the next parse. The buffer is zero-filled when it
//! is made or grown, never per read: a read goes into bytes an earlier read left (a request
//! head read into a `Vec` extended with zeros per read zero-filled 4 KiB per request).

use futures_lite::{AsyncRead, AsyncReadExt};

/// Bytes read from a socket and not yet consumed.
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes asked of the socket per read (and the growth step when the buffer is full).
    chunk: usize,
}

impl ReadBuf {
    /// An empty buffer reading `chunk` bytes at a time.
    pub fn new(chunk: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0; chunk],
            start: 0,
            end: 0,
            chunk,
        }
    }

    /// The bytes read and not consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` bytes of [`ReadBuf::data`] consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.clear();
        }
    }

    /// Drops everything buffered.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// The bytes not consumed, owned (to hand on with the socket).
    pub fn into_rest(self) -> Vec<u8> {
        self.buf[self.start..self.end].to_vec()
    }

    /// The bytes not consumed, owned, leaving the buffer empty (to hand on with the socket
    /// from a borrowed buffer).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.data().to_vec();
        self.clear();
        rest
    }

    /// Reads more bytes from `stream`; 0 at end of stream. Moves unconsumed bytes to the front
    /// when the buffer's end is reached, and grows it by one chunk when it is full of them.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> std::io::Result<usize> {
        self.fill_with_room(stream, 1).await
    }

    /// As [`ReadBuf::fill`], reading into at least `room` bytes: unconsumed bytes move to the
    /// front when fewer are free after them, and the buffer grows (by at least one chunk) when
    /// that is still too few. A large read (a chunked request body's) grows it once, not per
    /// read.
    pub async fn fill_with_room<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        room: usize,
    ) -> std::io::Result<usize> {
        if self.buf.len() - self.end < room {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < room {
                let grown = self.end + room.max(self.chunk);
                self.buf.resize(grown, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unconsumed_bytes_across_fills_and_grows_when_full() {
        futures_lite::future::block_on(async {
            let mut b = ReadBuf::new(4);
            let mut src: &[u8] = b"abcdefghij";
            assert_eq!(b.fill(&mut src).await.unwrap(), 4);
            b.consume(1);
            assert_eq!(b.data(), b"bcd");
            assert_eq!(
                b.fill(&mut src).await.unwrap(),
                1,
                "compacted, one byte free"
            );
            assert_eq!(b.data(), b"bcde");
            assert_eq!(
                b.fill(&mut src).await.unwrap(),
                4,
                "full of unconsumed: grown"
            );
            assert_eq!(b.data(), b"bcdefghi");
            b.consume(8);
            assert!(b.data().is_empty());
            assert_eq!(b.fill(&mut src).await.unwrap(), 1);
            assert_eq!(b.into_rest(), b"j");
        });
    }

    #[test]
    fn a_read_with_room_compacts_then_grows_once_and_keeps_the_bytes_in_order() {
        futures_lite::future::block_on(async {
            let src: Vec<u8> = (0..=255).cycle().take(100).collect();
            let mut from = &src[..];
            let mut b = ReadBuf::new(8);
            assert_eq!(b.fill(&mut from).await.unwrap(), 8);
            b.consume(5);
            assert_eq!(b.fill_with_room(&mut from, 6).await.unwrap(), 8);
            assert_eq!(b.data(), &src[5..16], "compacted, then grown by a chunk");
            let len = b.buf.len();
            assert_eq!(len, 3 + 8);
            b.consume(11);
            assert_eq!(b.fill_with_room(&mut from, 6).await.unwrap(), len);
            assert_eq!(b.buf.len(), len, "room enough: not grown again");
            assert_eq!(b.data(), &src[16..16 + len]);
            assert_eq!(b.take_rest(), &src[16..16 + len]);
            assert!(b.data().is_empty());
            for room in 1..40 {
                let mut from = &src[..];
                let mut b = ReadBuf::new(8);
                let mut got = Vec::new();
                loop {
                    let n = b.fill_with_room(&mut from, room).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    assert!(b.buf.len() - (b.end - n) >= room, "{room}");
                    let take = b.data().len().min(3);
                    got.extend_from_slice(&b.data()[..take]);
                    b.consume(take);
                }
                got.extend_from_slice(b.data());
                assert_eq!(got, src, "room {room}");
            }
        });
    }
}
