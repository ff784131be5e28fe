//! The budget of connections that have not finished logging in, kept apart from logged-in
//! sessions so that a flood of idle or half-open connections cannot lock initiators out.
//!
//! Each accepted connection takes a place here until its login ends (in success or not).
//! Places are limited per source address (IPv4 address, or IPv6 /64) and in all. When a
//! new connection finds its budget full, the least recently active pre-login connection in
//! that budget (the one whose last login PDU, or accept, is oldest: an idle one before one
//! in the middle of a login) is told to close, and the new one takes its place: a flood
//! from one address evicts itself, never a login in progress elsewhere. The connection
//! also has a short deadline for its whole login (`--login-timeout`).
//!
//! Nothing here does I/O; the connection closes itself when `PreLoginGuard::evicted` fires.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The limits: places per source address and in all.
#[derive(Debug, Clone, Copy)]
pub struct PreLoginLimits {
    pub per_address: usize,
    pub global: usize,
}

impl Default for PreLoginLimits {
    fn default() -> Self {
        PreLoginLimits {
            per_address: 16,
            global: 128,
        }
    }
}

/// What a source address is counted as: IPv4 addresses one by one, IPv6 by /64 (one host
/// usually has a whole /64 to pick from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(peer: &SocketAddr) -> Source {
        match peer.ip() {
            IpAddr::V4(a) => Source(IpAddr::V4(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = a.segments();
                    Source(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

struct Entry {
    source: Source,
    last_active: Instant,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        Some(e)
    }

    /// Evicts the least recently active connection (of `source` only, if given).
    fn evict_oldest(&mut self, source: Option<Source>) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| source.is_none_or(|s| e.source == s))
            .min_by_key(|(id, e)| (e.last_active, **id))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.remove(id)) {
            Some(e) => {
                e.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

pub struct PreLoginTable {
    inner: Mutex<Inner>,
    limits: PreLoginLimits,
    /// Connections closed to make room, since the start.
    pub evicted: AtomicU64,
}

/// A connection's place in the budget; dropping it (login over) frees the place.
pub struct PreLoginGuard {
    table: Arc<PreLoginTable>,
    id: u64,
    /// Fires when the connection was evicted to make room: it must close.
    pub evicted: Arc<Notify>,
}

impl PreLoginGuard {
    /// Marks the connection active (a login PDU arrived): it is evicted after idle ones.
    pub fn touch(&self) {
        if let Some(e) = self.table.inner.lock().conns.get_mut(&self.id) {
            e.last_active = Instant::now();
        }
    }
}

impl Drop for PreLoginGuard {
    fn drop(&mut self) {
        self.table.inner.lock().remove(self.id);
    }
}

impl PreLoginTable {
    pub fn new(limits: PreLoginLimits) -> PreLoginTable {
        PreLoginTable {
            inner: Mutex::new(Inner::default()),
            limits: PreLoginLimits {
                per_address: limits.per_address.max(1),
                global: limits.global.max(1),
            },
            evicted: AtomicU64::new(0),
        }
    }

    /// Gives a newly accepted connection from `peer` its place, evicting the least recently
    /// active one of its address (budget per address full) or of all (global budget full).
    pub fn admit(self: &Arc<Self>, peer: &SocketAddr) -> PreLoginGuard {
        let source = Source::of(peer);
        let mut t = self.inner.lock();
        let mut evicted = 0;
        if t.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_address
            && t.evict_oldest(Some(source))
        {
            evicted += 1;
        }
        if t.conns.len() >= self.limits.global && t.evict_oldest(None) {
            evicted += 1;
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        t.conns.insert(
            id,
            Entry {
                source,
                last_active: Instant::now(),
                evict: evict.clone(),
            },
        );
        *t.per_source.entry(source).or_insert(0) += 1;
        drop(t);
        if evicted > 0 {
            let n = self.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            // Logged sparingly: a flood makes one of these per connection.
            if n == 1 || n.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    evicted_so_far = n,
                    "pre-login budget full: closed the least recently active connection"
                );
            }
        }
        PreLoginGuard {
            table: self.clone(),
            id,
            evicted: evict,
        }
    }

    /// Connections in the budget now.
    pub fn len(&self) -> usize {
        self.inner.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Whether the guard was told to close (without waiting).
    fn was_evicted(g: &PreLoginGuard) -> bool {
        let n = g.evicted.notified();
        tokio::pin!(n);
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        n.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn a_full_address_budget_evicts_its_own_oldest_idle_connection() {
        let t = Arc::new(PreLoginTable::new(PreLoginLimits {
            per_address: 3,
            global: 100,
        }));
        let other = t.admit(&addr("10.0.0.2:5000"));
        let a: Vec<_> = (0..3)
            .map(|i| t.admit(&addr(&format!("10.0.0.1:{}", 1000 + i))))
            .collect();
        // The first is mid-login (active just now), so the second is the oldest idle one.
        a[0].touch();
        let b = t.admit(&addr("10.0.0.1:2000"));
        assert!(!was_evicted(&a[0]));
        assert!(was_evicted(&a[1]));
        assert!(!was_evicted(&a[2]) && !was_evicted(&b));
        assert!(
            !was_evicted(&other),
            "another address is never evicted for this one"
        );
        assert_eq!(t.len(), 4);
        drop(a);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_full_global_budget_evicts_the_oldest_of_all() {
        let t = Arc::new(PreLoginTable::new(PreLoginLimits {
            per_address: 100,
            global: 2,
        }));
        let a = t.admit(&addr("10.0.0.1:1"));
        let b = t.admit(&addr("10.0.0.2:1"));
        let c = t.admit(&addr("10.0.0.3:1"));
        assert!(was_evicted(&a) && !was_evicted(&b) && !was_evicted(&c));
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            Source::of(&addr("[2001:db8:1:2:aaaa::1]:1")),
            Source::of(&addr("[2001:db8:1:2:bbbb::7]:9"))
        );
        assert_ne!(
            Source::of(&addr("[2001:db8:1:2::1]:1")),
            Source::of(&addr("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            Source::of(&addr("[::ffff:10.0.0.1]:1")),
            Source::of(&addr("10.0.0.1:2"))
        );
    }
}
