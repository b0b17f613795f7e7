//! A canned HTTP/1.1 upstream for what the simulator does not do: an engine's recorded
//! `/metrics` and `/health` answers, or an answer with exactly these headers. Keep-alive, one
//! task per connection; answers come from a function of method and path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer: status, extra headers, body (sent with Content-Length, or chunked when a
/// `transfer-encoding: chunked` header is among the headers).
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, content_type: &str, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&str, &str) -> Answer + Send + Sync>;

/// A request as it arrived: its head (request line and headers) and its body.
#[derive(Clone)]
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

pub struct Canned {
    pub addr: SocketAddr,
    /// Requests answered, by any path.
    pub requests: Arc<AtomicU64>,
    /// Every request, in arrival order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Canned {
    /// Serves `handler(method, path)` on a free loopback port until the test ends.
    pub async fn start(handler: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(handler);
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (counted, log) = (requests.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, handler.clone(), counted.clone(), log.clone()));
            }
        });
        Self {
            addr,
            requests,
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    handler: Handler,
    requests: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // One request: the head, then Content-Length bytes of body.
        let (head_end, length) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        seen.lock().unwrap().push(Seen {
            head: head.clone(),
            body,
        });
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        requests.fetch_add(1, Ordering::Relaxed);
        let answer = handler(method, path);
        let chunked = answer
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
        let mut out = format!("HTTP/1.1 {} X\r\n", answer.status);
        for (k, v) in &answer.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if chunked {
            out.push_str("\r\n");
            if !answer.body.is_empty() {
                out.push_str(&format!("{:x}\r\n{}\r\n", answer.body.len(), answer.body));
            }
            out.push_str("0\r\n\r\n");
        } else {
            out.push_str(&format!(
                "content-length: {}\r\n\r\n{}",
                answer.body.len(),
                answer.body
            ));
        }
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
