//! A stub resolver for `upstream.nameserver`: A and AAAA questions to one
//! DNS server (UDP, TCP when the answer is truncated), for deployments that
//! pin a resolver and for tests that must prove a name resolving to a
//! private address is refused on every dialing path (threat model T10,
//! HM-13) without touching the system resolver. It only finds addresses:
//! the dialer checks them exactly as it checks the system resolver's, so
//! pointing clavis at a resolver never lets a private answer through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const A: u16 = 1;
const AAAA: u16 = 28;
const IN: u16 = 1;
/// The largest UDP answer read (EDNS is not asked for: 512 is the rule,
/// this is room to spare).
const MAX_UDP: usize = 4096;

/// Why a name found no address.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("{0} is not a name DNS can carry")]
    Name(String),
    #[error("nameserver {0}: {1}")]
    Io(SocketAddr, std::io::ErrorKind),
    #[error("nameserver {0} sent an answer that does not parse")]
    Malformed(SocketAddr),
    #[error("nameserver {ns} answered rcode {rcode}")]
    Refused { ns: SocketAddr, rcode: u8 },
    #[error("the system random generator failed")]
    Random,
}

/// The A and AAAA addresses of `name` according to `ns`, with `port`.
pub(crate) async fn lookup(
    ns: SocketAddr,
    name: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, DnsError> {
    let mut found = Vec::new();
    let mut last_error = None;
    for qtype in [A, AAAA] {
        match ask(ns, name, qtype).await {
            Ok(ips) => found.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port))),
            Err(e) => last_error = Some(e),
        }
    }
    match (found.is_empty(), last_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(found),
    }
}

async fn ask(ns: SocketAddr, name: &str, qtype: u16) -> Result<Vec<IpAddr>, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(ns, e.kind());
    let id = random_id()?;
    let query = question(id, name, qtype)?;
    let local: SocketAddr = if ns.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(ns).await.map_err(io)?;
    socket.send(&query).await.map_err(io)?;
    let mut buf = vec![0u8; MAX_UDP];
    // Answers to other questions (late, spoofed) are skipped; the dial's
    // timeout bounds the wait.
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        match parse(&buf[..n], id, qtype) {
            Ok(Parsed::Addresses(ips)) => return Ok(ips),
            Ok(Parsed::Truncated) => return ask_tcp(ns, &query, id, qtype).await,
            Ok(Parsed::Refused(rcode)) => return Err(DnsError::Refused { ns, rcode }),
            Err(Skip) => continue,
        }
    }
}

async fn ask_tcp(
    ns: SocketAddr,
    query: &[u8],
    id: u16,
    qtype: u16,
) -> Result<Vec<IpAddr>, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(ns, e.kind());
    let mut tcp = TcpStream::connect(ns).await.map_err(io)?;
    let len = u16::try_from(query.len()).map_err(|_| DnsError::Malformed(ns))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    tcp.write_all(&framed).await.map_err(io)?;
    let answer_len = tcp.read_u16().await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(answer_len)];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match parse(&answer, id, qtype) {
        Ok(Parsed::Addresses(ips)) => Ok(ips),
        Ok(Parsed::Refused(rcode)) => Err(DnsError::Refused { ns, rcode }),
        Ok(Parsed::Truncated) | Err(Skip) => Err(DnsError::Malformed(ns)),
    }
}

fn random_id() -> Result<u16, DnsError> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 2];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| DnsError::Random)?;
    Ok(u16::from_be_bytes(id))
}

/// A recursive query for `name` (`qtype`, class IN).
fn question(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let bad = || DnsError::Name(name.to_owned());
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).map_err(|_| bad())?;
        if len == 0 || len > 63 {
            return Err(bad());
        }
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() > 12 + 255 {
        return Err(bad());
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&IN.to_be_bytes());
    Ok(q)
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Addresses(Vec<IpAddr>),
    Truncated,
    Refused(u8),
}

/// Not the answer to this question (or not parseable): keep waiting.
#[derive(Debug, PartialEq, Eq)]
struct Skip;

/// Reads an answer to question `id`: the addresses of type `qtype` in its
/// answer section (CNAMEs the server followed are skipped over).
fn parse(msg: &[u8], id: u16, qtype: u16) -> Result<Parsed, Skip> {
    let u16_at = |at: usize| -> Result<u16, Skip> {
        msg.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Skip)
    };
    if u16_at(0)? != id {
        return Err(Skip);
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err(Skip); // a query, not an answer
    }
    if flags & 0x0200 != 0 {
        return Ok(Parsed::Truncated);
    }
    let rcode = (flags & 0x000f) as u8;
    if rcode == 3 {
        return Ok(Parsed::Addresses(Vec::new())); // no such name
    }
    if rcode != 0 {
        return Ok(Parsed::Refused(rcode));
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (rtype, class) = (u16_at(at)?, u16_at(at + 2)?);
        let len = usize::from(u16_at(at + 8)?);
        let data = msg.get(at + 10..at + 10 + len).ok_or(Skip)?;
        at += 10 + len;
        if class != IN || rtype != qtype {
            continue;
        }
        let ip = match (rtype, data.len()) {
            (A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return Err(Skip),
        };
        ips.push(ip);
    }
    Ok(Parsed::Addresses(ips))
}

/// The offset after a (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, Skip> {
    loop {
        let len = *msg.get(at).ok_or(Skip)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return Err(Skip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with `records` as (type, rdata), each named by a
    /// pointer to the question.
    fn answer(q: &[u8], flags: u16, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&IN.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 60]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    mod parse {
        use super::*;

        #[test]
        fn reads_addresses_of_the_asked_type_past_a_cname() {
            let q = question(7, "evil.test.example", A).unwrap();
            let cname: &[u8] = &[3, b'w', b'w', b'w', 0xc0, 12];
            let m = answer(
                &q,
                0x8180,
                &[(5, cname), (A, &[10, 0, 0, 1]), (AAAA, &[0; 16])],
            );
            assert_eq!(
                parse(&m, 7, A),
                Ok(Parsed::Addresses(vec!["10.0.0.1".parse().unwrap()]))
            );
            let m = answer(&q, 0x8180, &[(AAAA, &Ipv6Addr::LOCALHOST.octets())]);
            assert_eq!(
                parse(&m, 7, AAAA),
                Ok(Parsed::Addresses(vec!["::1".parse().unwrap()]))
            );
        }

        #[test]
        fn skips_other_ids_and_queries_and_refuses_garbage() {
            let q = question(7, "a.example", A).unwrap();
            let m = answer(&q, 0x8180, &[(A, &[1, 2, 3, 4])]);
            assert_eq!(parse(&m, 8, A), Err(Skip));
            assert_eq!(parse(&q, 7, A), Err(Skip), "a query is no answer");
            assert_eq!(parse(&m[..m.len() - 2], 7, A), Err(Skip));
            assert_eq!(parse(&[], 7, A), Err(Skip));
            let bad_len = answer(&q, 0x8180, &[(A, &[1, 2, 3])]);
            assert_eq!(parse(&bad_len, 7, A), Err(Skip));
            assert_eq!(
                parse(&answer(&q, 0x8183, &[]), 7, A),
                Ok(Parsed::Addresses(vec![]))
            );
            assert_eq!(
                parse(&answer(&q, 0x8182, &[]), 7, A),
                Ok(Parsed::Refused(2))
            );
            assert_eq!(parse(&answer(&q, 0x8380, &[]), 7, A), Ok(Parsed::Truncated));
        }
    }

    mod question {
        use super::*;

        #[test]
        fn encodes_labels_and_refuses_impossible_names() {
            let q = question(0x1234, "a.bc.", AAAA).unwrap();
            assert_eq!(
                q,
                [
                    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28, 0,
                    1
                ]
            );
            assert!(question(1, "a..b", A).is_err());
            assert!(question(1, &"x".repeat(64), A).is_err());
        }
    }
}
