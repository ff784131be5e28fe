//! The session table: which sessions exist (initiator name, ISID, target → TSIH), TSIH
//! allocation, and session reinstatement — a new login with the ISID of a live session
//! (firmware hand-over to the OS, or a reconnect after a dead link) stops the old one and
//! waits for its in-flight commands before the new one starts (RFC 7143 §6.3.5).
//!
//! Also the CmdSN arithmetic (RFC 1982 serial numbers) used for command windowing.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::login::{status, LoginFailure};

/// Serial-number "less than" on 32-bit sequence numbers.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

pub fn sn_gt(a: u32, b: u32) -> bool {
    sn_lt(b, a)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
}

impl SessionKey {
    pub fn new(initiator: &str, isid: [u8; 6], target: &str) -> SessionKey {
        SessionKey {
            initiator: initiator.to_ascii_lowercase(),
            isid,
            target: target.to_ascii_lowercase(),
        }
    }
}

struct Entry {
    tsih: u16,
    cid: u16,
    stop: watch::Sender<bool>,
    alive: watch::Receiver<()>,
}

/// Held by a session's connection for its whole life; dropping it removes the session.
pub struct SessionGuard<'a> {
    table: &'a SessionTable,
    key: SessionKey,
    pub tsih: u16,
    /// Becomes true when another login reinstates this session.
    pub stop: watch::Receiver<bool>,
    _alive: watch::Sender<()>,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock();
        if t.sessions
            .get(&self.key)
            .is_some_and(|e| e.tsih == self.tsih)
        {
            t.sessions.remove(&self.key);
        }
    }
}

struct Inner {
    next_tsih: u16,
    sessions: HashMap<SessionKey, Entry>,
}

pub struct SessionTable {
    inner: Mutex<Inner>,
    max_sessions: usize,
}

/// How long a reinstating login waits for the old session's commands to finish.
const REINSTATE_WAIT: Duration = Duration::from_secs(30);

impl SessionTable {
    pub fn new(max_sessions: usize) -> SessionTable {
        SessionTable {
            inner: Mutex::new(Inner {
                next_tsih: 1,
                sessions: HashMap::new(),
            }),
            max_sessions,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a session: a new one (`requested_tsih` 0) or the reinstatement of one.
    /// Waits (bounded) for a replaced session to end.
    pub async fn admit(
        &self,
        key: SessionKey,
        requested_tsih: u16,
        cid: u16,
    ) -> Result<SessionGuard<'_>, LoginFailure> {
        let (old, tsih) = {
            let mut t = self.inner.lock();
            let old = match t.sessions.get(&key) {
                Some(e) if requested_tsih == 0 || (e.tsih == requested_tsih && e.cid == cid) => {
                    t.sessions.remove(&key)
                }
                Some(e) if e.tsih == requested_tsih => {
                    return Err(LoginFailure {
                        class: status::TOO_MANY_CONNECTIONS.0,
                        detail: status::TOO_MANY_CONNECTIONS.1,
                        reason: "MaxConnections is 1".into(),
                    })
                }
                _ if requested_tsih != 0 => {
                    return Err(LoginFailure {
                        class: status::SESSION_DOES_NOT_EXIST.0,
                        detail: status::SESSION_DOES_NOT_EXIST.1,
                        reason: format!("no session with TSIH {requested_tsih}"),
                    })
                }
                _ => None,
            };
            if old.is_none() && t.sessions.len() >= self.max_sessions {
                return Err(LoginFailure {
                    class: status::OUT_OF_RESOURCES.0,
                    detail: status::OUT_OF_RESOURCES.1,
                    reason: "too many sessions".into(),
                });
            }
            let tsih = match &old {
                Some(e) if requested_tsih != 0 => e.tsih,
                _ => loop {
                    let cand = t.next_tsih;
                    t.next_tsih = t.next_tsih.checked_add(1).unwrap_or(1);
                    if cand != 0 && !t.sessions.values().any(|e| e.tsih == cand) {
                        break cand;
                    }
                },
            };
            (old, tsih)
        };
        if let Some(old) = old {
            tracing::info!(initiator = %key.initiator, tsih = old.tsih, "reinstating session");
            let _ = old.stop.send(true);
            let mut alive = old.alive;
            let _ = tokio::time::timeout(REINSTATE_WAIT, async {
                while alive.changed().await.is_ok() {}
            })
            .await;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, alive_rx) = watch::channel(());
        let mut t = self.inner.lock();
        if let Some(e) = t.sessions.insert(
            key.clone(),
            Entry {
                tsih,
                cid,
                stop: stop_tx,
                alive: alive_rx,
            },
        ) {
            // A concurrent login for the same ISID slipped in: it loses.
            let _ = e.stop.send(true);
        }
        drop(t);
        Ok(SessionGuard {
            table: self,
            key,
            tsih,
            stop: stop_rx,
            _alive: alive_tx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_number_comparison_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_gt(3, 0xffff_ffff));
        assert!(!sn_lt(7, 7));
    }

    #[tokio::test]
    async fn reinstatement_stops_the_old_session_and_waits_for_it() {
        let t: &'static SessionTable = Box::leak(Box::new(SessionTable::new(8)));
        let k = SessionKey::new("iqn.x:a", [1, 2, 3, 4, 5, 6], "iqn.t");
        let old = t.admit(k.clone(), 0, 0).await.unwrap();
        let old_tsih = old.tsih;
        let mut stop = old.stop.clone();
        let h = tokio::spawn(async move {
            stop.changed().await.unwrap();
            assert!(*stop.borrow());
            drop(old);
        });
        let new = t.admit(k.clone(), 0, 0).await.unwrap();
        h.await.unwrap();
        assert_ne!(new.tsih, old_tsih);
        assert_eq!(t.len(), 1);
        drop(new);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn unknown_tsih_is_refused_and_limits_hold() {
        let t = SessionTable::new(1);
        let k = SessionKey::new("iqn.x:a", [0; 6], "iqn.t");
        let e = t.admit(k.clone(), 42, 0).await.err().unwrap();
        assert_eq!((e.class, e.detail), status::SESSION_DOES_NOT_EXIST);
        let _a = t.admit(k, 0, 0).await.unwrap();
        let k2 = SessionKey::new("iqn.x:b", [0; 6], "iqn.t");
        let e = t.admit(k2, 0, 0).await.err().unwrap();
        assert_eq!((e.class, e.detail), status::OUT_OF_RESOURCES);
    }
}
