//! TLS 1.3 client side of the load client (`tls:HOST:PORT`), with rustls.
//!
//! The server under test runs Python's `ssl` (OpenSSL) with its own
//! context; this side only has to speak TLS 1.3 cheaply. The server's
//! certificate is not verified (a loopback benchmark against a certificate
//! made for the run; the signature over the handshake is still checked).
//!
//! Nonblocking use after a blocking handshake: [`TlsStream::write`] hands
//! plaintext to rustls, which encrypts it, and sends the records it can;
//! what the socket did not take waits for [`TlsStream::flush_records`]
//! (called on EPOLLOUT). [`TlsStream::read`] reads records until plaintext
//! is available, or `WouldBlock`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

pub struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
}

/// Accepts the server's certificate, checks the handshake signature.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config() -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl TlsStream {
    /// Completes the handshake on the connected (blocking) `sock`, then
    /// makes it nonblocking.
    pub fn handshake(mut sock: TcpStream) -> io::Result<TlsStream> {
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let mut conn = ClientConnection::new(config()?, name).map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        // Bounded by the server: each pass moves handshake bytes or fails.
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        sock.set_nonblocking(true)?;
        Ok(TlsStream { conn, sock })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends encrypted records until none is left (true) or the socket
    /// would block (false).
    pub fn flush_records(&mut self) -> io::Result<bool> {
        // Bounded: each pass sends >= 1 byte or leaves.
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Takes all of `buf` (encrypted at once) unless records of an earlier
    /// write are still waiting for the socket (`WouldBlock`).
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.flush_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        self.flush_records()?;
        Ok(n)
    }

    /// Plaintext into `buf`: 0 at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded by the socket: each pass reads records or returns.
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.conn.read_tls(&mut self.sock)? == 0 {
                return Ok(0);
            }
            self.conn.process_new_packets().map_err(io::Error::other)?;
            self.flush_records()?;
        }
    }
}
