//! Where a v2 decryptor gets its sealed chunks: straight from the reader, or from a read-ahead
//! thread that reads the next chunk while the current one is being decrypted.
//!
//! Reading a chunk costs a copy of every byte (from the page cache or a socket); decrypting costs
//! AES-GCM. On one thread the two add up; with read-ahead the copy overlaps the decryption, and the
//! decrypting thread does nothing but AES-GCM. Buffers are handed over, not copied, and at most
//! three chunk buffers exist at once: the one being decrypted, one waiting, one being filled.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::{self, JoinHandle};

use zeroize::Zeroizing;

use crate::v2::{read_full, Header, TAG_LEN};

type Buffer = Zeroizing<Vec<u8>>;

/// What the read-ahead thread sends.
enum Message {
    /// A chunk's sealed bytes: `got` bytes of the `buf`, fewer than asked only at end of input.
    Chunk { buf: Buffer, got: usize },
    /// After the last chunk: whether any byte follows it.
    End { trailing: bool },
    /// Reading failed.
    Failed(io::Error),
}

/// Sealed chunks from a read-ahead thread.
pub(crate) struct ReadAhead<R> {
    filled: Option<Receiver<Message>>,
    free: Sender<Buffer>,
    thread: Option<JoinHandle<R>>,
}

impl<R: Read + Send + 'static> ReadAhead<R> {
    /// Starts reading the chunks that `header` announces from `reader` (positioned just after the
    /// header).
    pub(crate) fn start(reader: R, header: Header) -> io::Result<Self> {
        // A capacity of one: one chunk waits while the next is read, no more.
        let (filled_tx, filled_rx) = sync_channel(1);
        let (free_tx, free_rx) = channel();
        let thread = thread::Builder::new()
            .name("adyton-read-ahead".into())
            .spawn(move || read_chunks(reader, &header, &filled_tx, &free_rx))?;
        Ok(Self {
            filled: Some(filled_rx),
            free: free_tx,
            thread: Some(thread),
        })
    }
}

impl<R> ReadAhead<R> {
    /// Swaps the next sealed chunk into `buf` (whose old contents go back to the thread) and
    /// returns how many bytes it holds.
    pub(crate) fn next_into(&mut self, buf: &mut Buffer) -> io::Result<usize> {
        match self.receive()? {
            Message::Chunk {
                buf: mut filled,
                got,
            } => {
                std::mem::swap(buf, &mut filled);
                // The thread may have finished; then the buffer is simply dropped (and zeroized).
                let _ = self.free.send(filled);
                Ok(got)
            }
            Message::End { .. } => Err(io::Error::other("read-ahead ended before the last chunk")),
            Message::Failed(e) => Err(e),
        }
    }

    /// After the last chunk: whether the input goes on.
    pub(crate) fn has_trailing_bytes(&mut self) -> io::Result<bool> {
        match self.receive()? {
            Message::End { trailing } => Ok(trailing),
            Message::Failed(e) => Err(e),
            Message::Chunk { .. } => Err(io::Error::other("read-ahead sent a chunk past the last")),
        }
    }

    fn receive(&mut self) -> io::Result<Message> {
        self.filled
            .as_ref()
            .and_then(|rx| rx.recv().ok())
            .ok_or_else(|| io::Error::other("the read-ahead thread stopped"))
    }

    /// Stops the thread and returns the reader.
    pub(crate) fn into_inner(mut self) -> Option<R> {
        // Dropping the receiver makes a blocked send fail, so the thread ends.
        self.filled = None;
        self.thread.take().and_then(|t| t.join().ok())
    }
}

/// The thread's loop: fill buffers in chunk order, then probe for trailing bytes.
fn read_chunks<R: Read>(
    mut reader: R,
    header: &Header,
    filled: &SyncSender<Message>,
    free: &Receiver<Buffer>,
) -> R {
    let capacity = header.chunk_size as usize + TAG_LEN;
    let mut allocated = 0;
    for index in 0..header.chunk_count() {
        let sealed_len = header.chunk_plaintext_len(index) + TAG_LEN;
        let mut buf = match free.try_recv() {
            Ok(buf) => buf,
            // Two buffers of its own are enough for the thread; after that it reuses returned ones.
            Err(_) if allocated < 2 => {
                allocated += 1;
                Zeroizing::new(vec![0u8; capacity])
            }
            Err(_) => match free.recv() {
                Ok(buf) => buf,
                Err(_) => return reader,
            },
        };
        let message = match read_full(&mut reader, &mut buf[..sealed_len]) {
            Ok(got) => Message::Chunk { buf, got },
            Err(e) => Message::Failed(e),
        };
        let stop = !matches!(&message, Message::Chunk { got, .. } if *got == sealed_len);
        if filled.send(message).is_err() || stop {
            return reader;
        }
    }
    let mut probe = [0u8; 1];
    let message = match read_full(&mut reader, &mut probe) {
        Ok(got) => Message::End { trailing: got > 0 },
        Err(e) => Message::Failed(e),
    };
    let _ = filled.send(message);
    reader
}
