//! A minimal fake registry (HTTP/1.1, one request per connection) for what a real
//! `docker-registry` cannot be made to do on demand: bearer tokens, 500s, short reads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Behaviour {
    /// Require `Authorization: Bearer <token>` obtained from /token with these Basic creds.
    pub bearer: Option<String>,
    /// Answer this many blob requests with 500 first.
    pub fail_blobs: usize,
    /// Cut this many blob responses short (connection closed mid-body).
    pub short_blobs: usize,
    /// The token realm named in challenges (default: this server's `/token`).
    pub realm: Option<String>,
}

pub struct FakeRegistry {
    pub host: String,
    pub requests: Arc<AtomicUsize>,
    pub token_requests: Arc<AtomicUsize>,
    /// The `Authorization` header of every token request ("" when there was none).
    pub token_auth: Arc<Mutex<Vec<String>>>,
    /// Blob requests (paths with `/blobs/`).
    pub blob_requests: Arc<AtomicUsize>,
}

/// Serves `manifest` under any tag of any repository and `blobs` by digest.
pub fn serve(manifest: Vec<u8>, blobs: Vec<Vec<u8>>, b: Behaviour) -> FakeRegistry {
    serve_at("127.0.0.1:0", manifest, blobs, b)
}

/// As [`serve`], listening on `addr`.
pub fn serve_at(addr: &str, manifest: Vec<u8>, blobs: Vec<Vec<u8>>, b: Behaviour) -> FakeRegistry {
    let listener = TcpListener::bind(addr).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let by_digest: HashMap<String, Vec<u8>> =
        blobs.into_iter().map(|d| (super::sha(&d), d)).collect();
    let requests = Arc::new(AtomicUsize::new(0));
    let token_requests = Arc::new(AtomicUsize::new(0));
    let token_auth = Arc::new(Mutex::new(Vec::new()));
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let (rq, tq) = (requests.clone(), token_requests.clone());
    let (ta, bq) = (token_auth.clone(), blob_requests.clone());
    let fails = Arc::new(AtomicUsize::new(b.fail_blobs));
    let shorts = Arc::new(AtomicUsize::new(b.short_blobs));
    let h = host.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            rq.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut auth = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some(v) = l
                    .strip_prefix("Authorization: ")
                    .or_else(|| l.strip_prefix("authorization: "))
                {
                    auth = v.trim().to_string();
                }
            }
            let respond =
                |s: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8]| {
                    let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                    let _ = s.write_all(body);
                };
            if path.starts_with("/token") {
                tq.fetch_add(1, Ordering::SeqCst);
                ta.lock().unwrap().push(auth.clone());
                let ok = b.bearer.as_ref().is_some_and(|want| auth == *want)
                    && path.contains("scope=repository");
                if ok {
                    respond(
                        &mut stream,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        br#"{"token":"tok-123"}"#,
                    );
                } else {
                    respond(&mut stream, "401 Unauthorized", "", b"");
                }
                continue;
            }
            if b.bearer.is_some() && auth != "Bearer tok-123" {
                let realm = b
                    .realm
                    .clone()
                    .unwrap_or_else(|| format!("http://{h}/token"));
                let hdr = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:t/app:pull\"\r\n");
                respond(&mut stream, "401 Unauthorized", &hdr, b"");
                continue;
            }
            if path.contains("/manifests/") {
                respond(
                    &mut stream,
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
                    &manifest,
                );
                continue;
            }
            if path.contains("/blobs/") {
                bq.fetch_add(1, Ordering::SeqCst);
            }
            let digest = path.rsplit('/').next().unwrap_or_default().to_string();
            let Some(blob) = by_digest.get(&digest) else {
                respond(&mut stream, "404 Not Found", "", b"");
                continue;
            };
            if fails.load(Ordering::SeqCst) > 0 {
                fails.fetch_sub(1, Ordering::SeqCst);
                respond(&mut stream, "500 Internal Server Error", "", b"oops");
                continue;
            }
            if blob.len() > 1000 && shorts.load(Ordering::SeqCst) > 0 {
                shorts.fetch_sub(1, Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    blob.len()
                );
                let _ = stream.write_all(&blob[..blob.len() / 2]);
                continue; // dropped: the client sees a short body
            }
            respond(
                &mut stream,
                "200 OK",
                "Content-Type: application/octet-stream\r\n",
                blob,
            );
        }
    });
    FakeRegistry {
        host,
        requests,
        token_requests,
        token_auth,
        blob_requests,
    }
}
