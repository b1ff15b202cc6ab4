//! The one dialer for every path that opens a socket (MITM upstreams, tunnels,
//! plain HTTP): `upstream.resolve` overrides, then DNS (the system resolver,
//! or `upstream.nameserver`), then a check of every
//! resolved address, so a name that resolves to loopback, a private range,
//! link-local (cloud metadata) or clavis itself is refused at dial time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::host::{canonical, IpNet};

/// Loopback, private, link-local, CGNAT, ULA, unspecified, broadcast and
/// multicast, also inside IPv6 (mapped, NAT64, 6to4; Teredo refused whole):
/// addresses an agent must not reach through clavis.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 ULA
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
                || s[..6] == [0, 0, 0, 0, 0, 0] // ::a.b.c.d IPv4-compatible
                || (s[0] == 0x2001 && s[1] == 0) // 2001::/32 Teredo: tunnels to any IPv4
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("{host} resolves to {addr}, a private or local address clavis does not dial")]
    Private { host: String, addr: IpAddr },
    #[error("{host}:{port} is clavis itself")]
    OwnPort { host: String, port: u16 },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("connecting to {host}:{port} timed out after {after:?}")]
    Timeout {
        host: String,
        port: u16,
        after: Duration,
    },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
}

#[derive(Debug)]
pub(crate) struct Dialer {
    pub(crate) resolve: HashMap<(String, u16), SocketAddr>,
    /// `upstream.nameserver`: asked instead of the system resolver. Its
    /// answers are checked like the system's; it grants no exception.
    pub(crate) nameserver: Option<SocketAddr>,
    pub(crate) allow_private: Vec<IpNet>,
    /// clavis's own listeners: never a destination.
    pub(crate) own: Vec<SocketAddr>,
    pub(crate) connect_timeout: Duration,
}

impl Dialer {
    /// Resolves and connects within `connect_timeout`; every resolved address
    /// is checked before it is dialed.
    pub(crate) async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let after = self.connect_timeout;
        let timeout = || DialError::Timeout {
            host: host.to_owned(),
            port,
            after,
        };
        tokio::time::timeout(after, self.dial_inner(host, port))
            .await
            .map_err(|_| timeout())?
    }

    async fn dial_inner(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        // Operator-set overrides are trusted as they are (tests, split DNS).
        if let Some(addr) = self.resolve.get(&(host.to_owned(), port)) {
            return connect(host, *addr).await;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = self.resolve_name(host, bare, port).await?;
        let mut last = None;
        for addr in addrs {
            self.check(host, addr)?;
            match connect(host, addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DialError::Resolve {
            host: host.to_owned(),
            reason: "no addresses".into(),
        }))
    }

    /// Every address of `bare` (an IP literal is its own), from the
    /// configured nameserver or the system resolver.
    async fn resolve_name(
        &self,
        host: &str,
        bare: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DialError> {
        let failed = |reason: String| DialError::Resolve {
            host: host.to_owned(),
            reason,
        };
        match self.nameserver {
            Some(ns) => match bare.parse::<IpAddr>() {
                Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                Err(_) => super::dns::lookup(ns, bare, port)
                    .await
                    .map_err(|e| failed(e.to_string())),
            },
            None => Ok(tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| failed(e.to_string()))?
                .collect()),
        }
    }

    fn check(&self, host: &str, addr: SocketAddr) -> Result<(), DialError> {
        let ip = canonical(addr.ip());
        let is_own = self.own.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == ip || own.ip().is_unspecified() || ip.is_loopback())
        });
        if is_own {
            return Err(DialError::OwnPort {
                host: host.to_owned(),
                port: addr.port(),
            });
        }
        if is_private(ip) && !self.allow_private.iter().any(|n| n.contains(ip)) {
            return Err(DialError::Private {
                host: host.to_owned(),
                addr: ip,
            });
        }
        Ok(())
    }
}

async fn connect(host: &str, addr: SocketAddr) -> Result<TcpStream, DialError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| DialError::Connect {
            host: host.to_owned(),
            port: addr.port(),
            reason: e.kind().to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    mod is_private {
        use super::*;

        #[test]
        fn classifies_the_dangerous_ranges() {
            for ip in [
                "127.0.0.1",
                "10.1.2.3",
                "172.16.0.1",
                "192.168.1.1",
                "169.254.169.254",
                "100.64.0.1",
                "0.0.0.0",
                "::1",
                "fd00::1",
                "fe80::1",
                "::ffff:127.0.0.1",
                "::ffff:169.254.169.254",
                "64:ff9b::a9fe:a9fe",
                "2002:a9fe:a9fe::",
                "2002:7f00:1::1",
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "::",
            ] {
                assert!(is_private(ip.parse().unwrap()), "{ip}");
            }
            for ip in [
                "1.1.1.1",
                "104.18.7.192",
                "2606:4700::1111",
                "2002:0101:0101::1",
                "2001:4860::8888",
            ] {
                assert!(!is_private(ip.parse().unwrap()), "{ip}");
            }
        }
    }

    mod dial {
        use super::*;

        fn dialer() -> Dialer {
            Dialer {
                resolve: HashMap::new(),
                nameserver: None,
                allow_private: Vec::new(),
                own: vec!["127.0.0.1:8080".parse().unwrap()],
                connect_timeout: Duration::from_secs(2),
            }
        }

        #[tokio::test]
        async fn refuses_loopback_and_metadata() {
            let d = dialer();
            assert!(matches!(
                d.dial("127.0.0.1", 9).await,
                Err(DialError::Private { .. })
            ));
            assert!(matches!(
                d.dial("localhost", 9).await,
                Err(DialError::Private { .. })
            ));
            assert!(matches!(
                d.dial("169.254.169.254", 80).await,
                Err(DialError::Private { .. })
            ));
            assert!(matches!(
                d.dial("127.0.0.1", 8080).await,
                Err(DialError::OwnPort { .. })
            ));
        }

        #[tokio::test]
        async fn allow_private_opens_a_range_but_never_clavis() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut d = dialer();
            d.allow_private = vec![IpNet::parse("127.0.0.0/8").unwrap()];
            assert!(d.dial("127.0.0.1", port).await.is_ok());
            assert!(matches!(
                d.dial("127.0.0.1", 8080).await,
                Err(DialError::OwnPort { .. })
            ));
        }
    }
}
