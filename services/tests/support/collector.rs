//! A tiny HTTP collector on 127.0.0.1 for tests of exporters (Sentry, OTLP): it answers every
//! request `200 {}` and keeps `(request line, body)`.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// Requests received so far: the request line and the body (lossy UTF-8: protobuf bodies keep
/// their string fields readable).
pub type Received = Arc<Mutex<Vec<(String, String)>>>;

/// Starts a collector; returns its port and what it received.
pub fn start() -> (u16, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let kept = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock().unwrap().push((
                    request.trim_end().to_owned(),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    (port, received)
}
