//! The TLS side of `echo-floor --tls CERT,KEY`: one connection's TLS echo
//! on the system's OpenSSL (the library Python's `ssl` module runs), so the
//! floor pays the same crypto as the servers under test and nothing else.
//!
//! TLS 1.3 only, as `bench/io/servers.py --tls`. Read-ahead is on (OpenSSL
//! reads the socket in large chunks instead of a header and a body per
//! record), so a readiness event drains `ssl_read` until it would block:
//! level-triggered epoll cannot see records OpenSSL already holds.

use std::io;
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
    b.set_read_ahead(true);
    Ok(b.build())
}

enum State {
    Handshaking(MidHandshakeSslStream<TcpStream>),
    Open(SslStream<TcpStream>),
    Done,
}

/// What the caller does with the connection after an event.
pub enum Next {
    /// Wait for readable.
    Read,
    /// Wait for writable (encrypted bytes are waiting to go out).
    Write,
    Close,
}

/// One TLS connection echoing what it reads.
pub struct TlsConn {
    state: State,
    fd: RawFd,
    buf: Vec<u8>,
    /// Plaintext `buf[start..end]` read but not written back yet.
    start: usize,
    end: usize,
}

impl TlsConn {
    pub fn accept(ctx: &SslContext, s: TcpStream, buf_len: usize) -> io::Result<Self> {
        let fd = s.as_raw_fd();
        let ssl = Ssl::new(ctx).map_err(io::Error::other)?;
        let mut c = TlsConn {
            state: State::Done,
            fd,
            buf: vec![0; buf_len],
            start: 0,
            end: 0,
        };
        c.state = match ssl.accept(s) {
            Ok(s) => State::Open(s),
            Err(HandshakeError::WouldBlock(m)) => State::Handshaking(m),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        Ok(c)
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Runs what the socket's readiness allows.
    pub fn on_event(&mut self) -> Next {
        if let State::Handshaking(_) = self.state {
            let State::Handshaking(m) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!()
            };
            match m.handshake() {
                Ok(s) => self.state = State::Open(s),
                Err(HandshakeError::WouldBlock(m)) => {
                    self.state = State::Handshaking(m);
                    return Next::Read;
                }
                Err(_) => return Next::Close,
            }
        }
        let State::Open(s) = &mut self.state else {
            return Next::Close;
        };
        // Bounded: every pass sends what it read; it reads again only when
        // the buffer filled up (else the next readiness event says when).
        let mut more = true;
        loop {
            while self.start < self.end {
                match s.ssl_write(&self.buf[self.start..self.end]) {
                    Ok(n) => self.start += n,
                    Err(e) if e.code() == ErrorCode::WANT_WRITE => return Next::Write,
                    Err(e) if e.code() == ErrorCode::WANT_READ => return Next::Read,
                    Err(_) => return Next::Close,
                }
            }
            self.start = 0;
            self.end = 0;
            if !more {
                return Next::Read;
            }
            // Drain what OpenSSL and the socket hold, up to a full buffer.
            more = false;
            loop {
                if self.end == self.buf.len() {
                    more = true;
                    break;
                }
                match s.ssl_read(&mut self.buf[self.end..]) {
                    Ok(n) => self.end += n,
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(_) => return Next::Close, // close_notify, reset, error
                }
            }
            if self.end == 0 {
                return Next::Read;
            }
        }
    }
}
