//! A tiny HTTP/1.1 collector on 127.0.0.1 for tests of exporters (Sentry, OTLP): it answers every
//! request `200 {}` and keeps `(request line, body)`.
//!
//! A connection is served until the client closes it: exporters keep connections alive, and a
//! collector that closed each one after its first answer would lose a request the client had
//! already written on it (the Sentry client does not send such a request again).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
            let Ok(stream) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || serve(stream, &kept));
        }
    });
    (port, received)
}

/// Answers the requests of one connection, in order, until the client closes it.
fn serve(mut stream: TcpStream, kept: &Received) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
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
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        kept.lock().unwrap().push((
            request.trim_end().to_owned(),
            String::from_utf8_lossy(&body).into_owned(),
        ));
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            .is_err()
        {
            return;
        }
    }
}
