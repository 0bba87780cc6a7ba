//! A small blocking HTTP/1.1 client for the admin port (`croupier admin ...` and tests): plain or TLS
//! (trusting the given CA), with an optional bearer token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

#[derive(Clone, Debug, Default)]
pub struct AdminTarget {
    /// `host:port`, or `http://host:port` / `https://host:port`.
    pub addr: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM CA certificate(s): connect over TLS and trust only these.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

pub struct AdminResponse {
    pub status: u16,
    pub body: String,
}

impl AdminTarget {
    fn host_port(&self) -> (&str, bool) {
        if let Some(rest) = self.addr.strip_prefix("https://") {
            (rest.trim_end_matches('/'), true)
        } else if let Some(rest) = self.addr.strip_prefix("http://") {
            (rest.trim_end_matches('/'), self.tls_ca_pem.is_some())
        } else {
            (self.addr.as_str(), self.tls_ca_pem.is_some())
        }
    }

    pub fn get(&self, path: &str) -> Result<AdminResponse, String> {
        self.request("GET", path)
    }

    pub fn post(&self, path: &str) -> Result<AdminResponse, String> {
        self.request("POST", path)
    }

    pub fn request(&self, method: &str, path: &str) -> Result<AdminResponse, String> {
        let (host_port, tls) = self.host_port();
        let timeout = self.timeout.unwrap_or(Duration::from_secs(30));
        let tcp = connect(host_port, timeout)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        let raw = if tls {
            let ca = self.tls_ca_pem.as_deref().ok_or_else(|| {
                format!(
                    "{host_port}: https needs the CA that signed the server certificate (--tls-ca)"
                )
            })?;
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let config = client_config(ca)?;
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: not a valid TLS server name: {e}"))?;
            let conn = rustls::ClientConnection::new(Arc::new(config), name)
                .map_err(|e| format!("TLS to {host_port}: {e}"))?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            exchange(&mut stream, &head)
                .map_err(|e| format!("{method} https://{host_port}{path}: {e}"))?
        } else {
            let mut stream = tcp;
            exchange(&mut stream, &head)
                .map_err(|e| format!("{method} http://{host_port}{path}: {e}"))?
        };
        parse_response(&raw).map_err(|e| format!("{method} {host_port}{path}: {e}"))
    }
}

fn connect(host_port: &str, timeout: Duration) -> Result<TcpStream, String> {
    use std::net::ToSocketAddrs;
    let addrs = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{host_port}: {e}"))?;
    let mut last = format!("{host_port}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout)).ok();
                s.set_write_timeout(Some(timeout)).ok();
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {host_port}: {e}"),
        }
    }
    Err(last)
}

/// A rustls client configuration trusting only the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("reading the CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("adding the CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no CERTIFICATE".into());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn exchange(stream: &mut (impl Read + Write), head: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // Some servers close TLS without close_notify; what arrived is complete (Connection: close).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<AdminResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(if raw.is_empty() {
            "no HTTP response (if the admin port uses TLS, pass --tls-ca)"
        } else {
            "incomplete HTTP response (if the admin port uses TLS, pass --tls-ca)"
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(AdminResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunked body".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
    }
}
