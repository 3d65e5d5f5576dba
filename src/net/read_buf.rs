//! A socket read buffer for plain HTTP/1.1 readers (the mock upstream's server side and the load
//! generator's SSE client): bytes read past what was consumed stay for the next parse.

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

    /// Reads more bytes from `stream`; 0 at end of stream. Moves unconsumed bytes to the front
    /// when the buffer's end is reached, and grows it by one chunk when it is full of them.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                let grown = self.buf.len() + self.chunk;
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
}
