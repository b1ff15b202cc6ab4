//! A DNS server for tests: answers A and AAAA questions over UDP from a
//! fixed table, NXDOMAIN for any other name, so clavis's real resolution
//! path (`upstream.nameserver`) can be driven without the system resolver.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub struct Dns {
    pub addr: SocketAddr,
    /// Questions seen, as (name, type).
    pub asked: Arc<std::sync::Mutex<Vec<(String, u16)>>>,
}

impl Dns {
    /// Serves `table` (name → addresses; a name may have both families).
    pub async fn start(table: &[(&str, &str)]) -> Dns {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in table {
            map.entry(name.to_ascii_lowercase())
                .or_default()
                .push(ip.parse().unwrap());
        }
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some((answer, name, qtype)) = respond(&buf[..n], &map) {
                    seen.lock().unwrap().push((name, qtype));
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        Dns { addr, asked }
    }
}

fn respond(q: &[u8], map: &HashMap<String, Vec<IpAddr>>) -> Option<(Vec<u8>, String, u16)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let ips: Vec<&IpAddr> = map
        .get(&name)
        .map(|v| {
            v.iter()
                .filter(|ip| (qtype == 1) == ip.is_ipv4() && matches!(qtype, 1 | 28))
                .collect()
        })
        .unwrap_or_default();
    let mut m = q.get(..question_end)?.to_vec();
    let rcode = if map.contains_key(&name) { 0 } else { 3 };
    m[2] = 0x81;
    m[3] = 0x80 | rcode;
    m[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
    m[8..12].copy_from_slice(&[0, 0, 0, 0]);
    for ip in ips {
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
        let data = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(&data);
    }
    Some((m, name, qtype))
}
