//! A bare HTTP/1.1 client for talking to `reel-api` and push-mode stages as an outside
//! caller would: one request per connection, any headers, status and body back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `(status, body)` of one request to `127.0.0.1:port` with `headers`. Of a chunked
/// body, the JSON part is kept.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let headers: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    (status, body)
}

/// Wait until `GET /healthz` answers 200 (panics after 30 s).
pub fn wait_healthy(port: u16) {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && request(port, "GET", "/healthz", &[], "").0 == 200 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no healthy server on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
