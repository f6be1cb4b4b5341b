//! The TLS side of `echo-floor --tls CERT,KEY`: one connection's TLS echo
//! on the system's OpenSSL (the library Python's `ssl` module runs), so the
//! floor pays the same crypto as the servers under test and nothing else.
//!
//! TLS 1.3 only, as `bench/io/servers.py --tls`. OpenSSL works on memory
//! buffers, as `ssl.SSLObject` over `ssl.MemoryBIO`s does: per readiness
//! event one `read` of up to 256 KiB of ciphertext, every whole record
//! decrypted, the plaintext encrypted back, and one `write` of the result.
//! (OpenSSL on the socket itself reads a record header and body per call
//! and writes a record per call: several syscalls per message, more than
//! the servers it is the floor of.)

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, Ssl, SslContext, SslFiletype, SslMethod,
    SslStream, SslVersion,
};

/// The server context: TLS 1.3, CERT chain and KEY from PEM files.
pub fn server_context(cert: &str, key: &str) -> Result<SslContext, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let mut b = SslContext::builder(SslMethod::tls_server()).map_err(e)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(e)?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(e)?;
    b.set_certificate_chain_file(cert).map_err(e)?;
    b.set_private_key_file(key, SslFiletype::PEM).map_err(e)?;
    b.check_private_key().map_err(e)?;
    Ok(b.build())
}

/// What OpenSSL reads from and writes to: ciphertext that came from the
/// socket (`input[pos..]`), and ciphertext to send (`output[sent..]`).
struct Buffers {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    sent: usize,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.input.len() - self.pos).min(buf.len());
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    Handshaking(MidHandshakeSslStream<Buffers>),
    Open(SslStream<Buffers>),
    Done,
}

impl State {
    fn buffers(&mut self) -> Option<&mut Buffers> {
        match self {
            State::Handshaking(m) => Some(m.get_mut()),
            State::Open(s) => Some(s.get_mut()),
            State::Done => None,
        }
    }
}

/// What the caller does with the connection after an event.
pub enum Next {
    /// Wait for readable.
    Read,
    /// Wait for writable (ciphertext is waiting to go out).
    Write,
    Close,
}

/// One TLS connection echoing what it reads.
pub struct TlsConn {
    sock: TcpStream,
    state: State,
    /// The socket read buffer, and the plaintext buffer.
    rbuf: Vec<u8>,
    plain: Vec<u8>,
}

impl TlsConn {
    pub fn accept(ctx: &SslContext, sock: TcpStream, buf_len: usize) -> io::Result<Self> {
        let ssl = Ssl::new(ctx).map_err(io::Error::other)?;
        let bufs = Buffers {
            input: Vec::with_capacity(buf_len),
            pos: 0,
            output: Vec::with_capacity(buf_len),
            sent: 0,
        };
        let state = match ssl.accept(bufs) {
            Ok(s) => State::Open(s),
            Err(HandshakeError::WouldBlock(m)) => State::Handshaking(m),
            Err(_) => return Err(io::Error::other("TLS setup failed")),
        };
        Ok(TlsConn {
            sock,
            state,
            rbuf: vec![0; buf_len],
            plain: vec![0; buf_len],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends what is waiting; false while some is left.
    fn send(&mut self) -> io::Result<bool> {
        let Some(b) = self.state.buffers() else {
            return Ok(true);
        };
        // Bounded: each pass writes >= 1 byte or leaves.
        while b.sent < b.output.len() {
            match self.sock.write(&b.output[b.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => b.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        b.output.clear();
        b.sent = 0;
        Ok(true)
    }

    /// Runs what the socket's readiness allows: at most one read and one
    /// write syscall.
    pub fn on_event(&mut self) -> Next {
        match self.send() {
            Ok(true) => {}
            Ok(false) => return Next::Write,
            Err(_) => return Next::Close,
        }
        let n = match self.sock.read(&mut self.rbuf) {
            Ok(0) => return Next::Close,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
            Err(_) => return Next::Close,
        };
        if let Some(b) = self.state.buffers() {
            // What OpenSSL took goes; a partial record stays at the front.
            b.input.drain(..b.pos);
            b.pos = 0;
            b.input.extend_from_slice(&self.rbuf[..n]);
        }
        if let State::Handshaking(_) = self.state {
            let State::Handshaking(m) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!()
            };
            self.state = match m.handshake() {
                Ok(s) => State::Open(s),
                Err(HandshakeError::WouldBlock(m)) => State::Handshaking(m),
                Err(_) => return Next::Close,
            };
        }
        if let State::Open(s) = &mut self.state {
            // Every whole record in, then the plaintext back out (bounded
            // by the input held: each read consumes a record).
            let mut got = 0;
            loop {
                if got == self.plain.len() {
                    self.plain.resize(got * 2, 0);
                }
                match s.ssl_read(&mut self.plain[got..]) {
                    Ok(k) => got += k,
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(_) => return Next::Close, // close_notify, bad record
                }
            }
            let mut put = 0;
            while put < got {
                match s.ssl_write(&self.plain[put..got]) {
                    Ok(k) => put += k,
                    Err(_) => return Next::Close, // memory output never blocks
                }
            }
        }
        match self.send() {
            Ok(true) => Next::Read,
            Ok(false) => Next::Write,
            Err(_) => Next::Close,
        }
    }
}
