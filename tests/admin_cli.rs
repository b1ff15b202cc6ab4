//! The admin commands against a scripted admin API (the approvals, budgets
//! and audit-stream routes are served by other parts of clavis): what
//! `clavis approvals|budgets|audit` ask, and what they print. A running
//! clavis's own routes are exercised in `tests/e2e_agents/run.sh`.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "scripted-admin-token-0123456789";

/// One request as the scripted API saw it.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    auth: Option<String>,
    body: String,
}

/// An answer: status and body, or an event stream (SSE) that stays open.
#[derive(Clone)]
enum Answer {
    Json(u16, String),
    Stream(Vec<String>),
}

/// A one-thread HTTP/1.1 server answering by request line prefix.
struct Api {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn serve(routes: Vec<(&'static str, Answer)>) -> Api {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let routes = routes.clone();
            let log = log.clone();
            std::thread::spawn(move || answer(conn, &routes, &log));
        }
    });
    Api { url, seen }
}

fn answer(conn: TcpStream, routes: &[(&str, Answer)], log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let (mut auth, mut length) = (None, 0usize);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "authorization" => auth = Some(v.trim().to_owned()),
            "content-length" => length = v.trim().parse().unwrap(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let line = line.trim().to_owned();
    log.lock().unwrap().push(Seen {
        line: line.clone(),
        auth,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let route = routes.iter().find(|(prefix, _)| line.starts_with(prefix));
    let mut conn = conn;
    match route.map(|(_, a)| a.clone()) {
        Some(Answer::Json(status, body)) => {
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Some(Answer::Stream(events)) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n: hello\n\n"
            );
            for e in events {
                let _ = write!(conn, "event: audit\ndata: {e}\n\n");
                let _ = conn.flush();
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_secs(30));
        }
        None => {
            let body = r#"{"error":{"type":"clavis_not_found","message":"no such route"}}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 404 X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

fn command(api: &Api, args: &[&str]) -> Command {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clavis"));
    cmd.args(args)
        .args(["--admin", &api.url])
        .current_dir(dir)
        .env("CLAVIS_ADMIN_TOKEN", TOKEN);
    cmd
}

fn run(api: &Api, args: &[&str]) -> Output {
    command(api, args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Reads the child's stdout until `want` shows up (or `wait` passes), then
/// stops it; what it printed.
fn follow_until(mut child: Child, want: &str, wait: Duration) -> String {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + wait;
    let mut text = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            text.push_str(&line);
            text.push('\n');
            if line.contains(want) {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}

const APPROVAL: &str = r#"{"id":"ap_1","status":"pending","agent":"codex","service":"stripe","method":"POST","url":"https://api.stripe.com/v1/refunds","rule":"large","body_sha256":"ab","body_preview":"{}","created_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T00:15:00Z","decided_by":null,"reason":null}"#;

#[test]
fn approvals_list_approve_and_deny() {
    let api = serve(vec![
        (
            "GET /v1/approvals?status=pending ",
            Answer::Json(200, format!("[{APPROVAL}]")),
        ),
        (
            "POST /v1/approvals/ap_1/approve ",
            Answer::Json(200, APPROVAL.replace("pending", "approved")),
        ),
        (
            "POST /v1/approvals/ap_1/deny ",
            Answer::Json(200, APPROVAL.replace("pending", "denied")),
        ),
    ]);
    let out = run(&api, &["approvals", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = stdout(&out);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("ap_1") && table.contains("POST https://api.stripe.com/v1/refunds"));
    let out = run(
        &api,
        &["approvals", "approve", "ap_1", "--reason", "ok by me"],
    );
    assert_eq!(stdout(&out), "approval ap_1: approved\n");
    let out = run(
        &api,
        &["approvals", "deny", "ap_1", "--reason", "too large"],
    );
    assert_eq!(stdout(&out), "approval ap_1: denied\n");
    // deny needs a reason
    let out = run(&api, &["approvals", "deny", "ap_1"]);
    assert_eq!(out.status.code(), Some(2));
    let seen = api.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|s| s.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    let bodies: Vec<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["", r#"{"reason":"ok by me"}"#, r#"{"reason":"too large"}"#]
    );
}

#[test]
fn budgets_list_as_table_and_json() {
    let budget = r#"[{"name":"codex-llm","agent":"codex","service":"openai","window":"1d","limit":{"tokens":2000000},"used":1200,"reserved":300,"resets_at":"2026-01-02T00:00:00Z"}]"#;
    let api = serve(vec![("GET /v1/budgets ", Answer::Json(200, budget.into()))]);
    let table = stdout(&run(&api, &["budgets", "list"]));
    let row = table.lines().nth(1).unwrap();
    for cell in [
        "codex-llm",
        "codex",
        "openai",
        "1d",
        "tokens 2000000",
        "1200",
        "300",
    ] {
        assert!(row.contains(cell), "{cell}: {table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&api, &["budgets", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["used"], 1200);
}

#[test]
fn an_api_error_is_named_with_its_call() {
    let api = serve(vec![]);
    let out = run(&api, &["budgets", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GET /v1/budgets: 404 no such route"), "{err}");
    assert!(!err.contains(TOKEN));
}

#[test]
fn audit_follow_reads_the_event_stream_where_it_is_served() {
    let old = r#"{"time":"2026-01-01T00:00:00.000Z","action":"store","entry":"gh","actor":"admin","detail":{}}"#;
    let new = r#"{"time":"2026-01-01T00:00:01.000Z","action":"inject","entry":"gh","actor":"proxy:codex","detail":{"method":"GET","host":"api.github.com","path":"/streamed","status":200}}"#;
    let api = serve(vec![
        ("GET /v1/audit/stream ", Answer::Stream(vec![new.into()])),
        ("GET /v1/audit?", Answer::Json(200, format!("[{old}]"))),
    ]);
    let child = command(&api, &["audit", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let text = follow_until(child, "/streamed", Duration::from_secs(20));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains(r#""action":"store""#));
    assert!(lines[1].contains("/streamed"));
}

#[test]
fn audit_follow_polls_when_there_is_no_stream() {
    // Each poll answers the same two events: the newest is printed once
    // (--limit 1), the older one never (it was there before --follow).
    let newest = r#"{"time":"2026-01-01T00:00:02.000Z","action":"inject","entry":"gh","actor":"proxy:codex","detail":{"method":"GET","host":"api.github.com","path":"/polled","status":200}}"#;
    let older = r#"{"time":"2026-01-01T00:00:01.000Z","action":"store","entry":"gh","actor":"admin","detail":{}}"#;
    let api = serve(vec![
        (
            "GET /v1/audit?limit=1 ",
            Answer::Json(200, format!("[{newest}]")),
        ),
        (
            "GET /v1/audit?limit=200 ",
            Answer::Json(200, format!("[{newest},{older}]")),
        ),
    ]);
    let child = command(&api, &["audit", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Two polls' worth: nothing new may appear.
    let text = follow_until(child, "never printed", Duration::from_millis(2500));
    assert!(text.starts_with("TIME  ACTION"), "{text}");
    assert_eq!(text.matches("/polled").count(), 1, "{text}");
    assert!(!text.contains("store"), "{text}");
    let polls = api
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.line.starts_with("GET /v1/audit?limit=200 "))
        .count();
    assert!(polls >= 2, "{polls}");
}
