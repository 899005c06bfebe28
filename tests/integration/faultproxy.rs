//! An HTTP/1.1 proxy between `cairn` and an S3 server that injects faults:
//! 503 SlowDown, connections reset before the answer, stalled responses and
//! bodies cut short, on a chosen fraction of requests; or the whole store
//! gone. It counts every request it sees and records each one's method,
//! path, headers and answer. It can also play an identity that may not
//! delete: every `DELETE` and multi-object delete answered 403 AccessDenied.
//!
//! Each forwarded request goes to the server on a new connection with
//! `Connection: close`, so responses end at EOF and need no parsing beyond
//! the header block. Listens on 127.0.0.1 port 0; threads stop with the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::XorShift as Rng;

/// What went wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    SlowDown,
    Reset,
    Stall,
    CutBody,
}

const FAULTS: [Fault; 4] = [Fault::SlowDown, Fault::Reset, Fault::Stall, Fault::CutBody];

struct State {
    upstream: SocketAddr,
    /// Fraction of requests that fail, in millionths.
    fault_ppm: AtomicU64,
    /// Every request fails (connection dropped at once).
    down: AtomicBool,
    /// After this many pack uploads have been answered, the store goes down.
    down_after_pack_puts: AtomicU64,
    pack_puts: AtomicU64,
    requests: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    stall: Duration,
    rng: Mutex<Rng>,
    refuse_deletes: AtomicBool,
    recorded: Mutex<Vec<Recorded>>,
}

/// A request the proxy saw and what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The status sent back (0 when none was).
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running proxy.
pub struct FaultProxy {
    pub url: String,
    state: Arc<State>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`) that stalls for `stall`
    /// when it stalls (longer than the client's attempt timeout).
    pub fn start(upstream: &str, stall: Duration, seed: u64) -> Self {
        let addr: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            upstream: addr,
            fault_ppm: AtomicU64::new(0),
            down: AtomicBool::new(false),
            down_after_pack_puts: AtomicU64::new(u64::MAX),
            pack_puts: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            stall,
            rng: Mutex::new(Rng::new(seed)),
            refuse_deletes: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = accept_state.clone();
                std::thread::spawn(move || serve_connection(conn, &state));
            }
        });
        Self { url, state }
    }

    /// Fails this fraction of requests from now on.
    pub fn set_fault_rate(&self, rate: f64) {
        self.state
            .fault_ppm
            .store((rate * 1e6) as u64, Ordering::SeqCst);
    }

    /// The store is gone (every connection dropped) or back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        if !down {
            self.state
                .down_after_pack_puts
                .store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// The store goes down once `n` pack uploads have succeeded.
    pub fn go_down_after_pack_puts(&self, n: u64) {
        self.state.down_after_pack_puts.store(n, Ordering::SeqCst);
    }

    /// Requests seen so far (each attempt of each call).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The faults injected so far.
    pub fn faults(&self) -> Vec<Fault> {
        self.state.faults.lock().expect("faults").clone()
    }

    /// From now on, answer every delete with 403 AccessDenied (or not).
    pub fn refuse_deletes(&self, refuse: bool) {
        self.state.refuse_deletes.store(refuse, Ordering::SeqCst);
    }

    /// Every request seen so far, in order, and forgets them.
    pub fn take_recorded(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.state.recorded.lock().expect("recorded"))
    }

    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.faults.lock().expect("faults").clear();
    }
}

struct Request {
    method: String,
    path: String,
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut head = vec![first.trim_end().to_string()];
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                length = value.trim().parse().ok()?;
            }
            // Chunked uploads are not used by the client; refuse rather than misframe.
            if name == "transfer-encoding" {
                return None;
            }
            if name == "connection" || name == "expect" {
                continue;
            }
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        head,
        body,
    })
}

fn serve_connection(conn: TcpStream, state: &State) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut client = conn;
    while let Some(request) = read_request(&mut reader) {
        state.requests.fetch_add(1, Ordering::SeqCst);
        let record = |status: u16| {
            let headers = request.head[1..]
                .iter()
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            state.recorded.lock().expect("recorded").push(Recorded {
                method: request.method.clone(),
                path: request.path.clone(),
                headers,
                status,
            });
        };
        let is_delete = request.method == "DELETE"
            || (request.method == "POST" && request.path.contains("?delete"));
        if is_delete && state.refuse_deletes.load(Ordering::SeqCst) {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            record(403);
            if client.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let is_pack_put = request.method == "PUT" && request.path.contains("/packs/");
        if state.down.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let fault = {
            let mut rng = state.rng.lock().expect("rng");
            let roll = rng.next_u64() % 1_000_000;
            let pick = FAULTS[(rng.next_u64() % FAULTS.len() as u64) as usize];
            (roll < state.fault_ppm.load(Ordering::SeqCst)).then_some(pick)
        };
        if let Some(f) = fault {
            state.faults.lock().expect("faults").push(f);
        }
        match fault {
            Some(Fault::SlowDown) => {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::Reset) => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Stall) => {
                std::thread::sleep(state.stall);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::CutBody) | None => {}
        }
        let Some(response) = forward(state.upstream, &request) else {
            record(0);
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        record(
            std::str::from_utf8(response.get(9..12).unwrap_or_default())
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        );
        if is_pack_put && response.starts_with(b"HTTP/1.1 200") {
            let puts = state.pack_puts.fetch_add(1, Ordering::SeqCst) + 1;
            if puts >= state.down_after_pack_puts.load(Ordering::SeqCst) {
                state.down.store(true, Ordering::SeqCst);
            }
        }
        let send = if fault == Some(Fault::CutBody) {
            // The answer's header and half its body, or nothing at all when
            // there is no body (the server did the work; the client never
            // hears of it).
            let head_end = find(&response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
            let body_len = response.len() - head_end;
            if body_len == 0 {
                0
            } else {
                head_end + body_len / 2
            }
        } else {
            response.len()
        };
        let _ = client.write_all(&response[..send]);
        let _ = client.flush();
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
}

fn forward(upstream: SocketAddr, request: &Request) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)).ok()?;
    server
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut head = request.head.join("\r\n");
    head.push_str("\r\nConnection: close\r\n\r\n");
    server.write_all(head.as_bytes()).ok()?;
    // A server may answer before it has read the body (a failed
    // precondition) and close: the answer still counts.
    let _ = server.write_all(&request.body);
    let mut response = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    (!response.is_empty()).then_some(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
