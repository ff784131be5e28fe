//! The session table: which sessions exist (initiator name, ISID, target → TSIH), TSIH
//! allocation, and session reinstatement — a new login with the ISID of a live session
//! (firmware hand-over to the OS, or a reconnect after a dead link) stops the old one and
//! waits for its in-flight commands before the new one starts (RFC 7143 §6.3.5).
//!
//! Also who may keep a session: limits in all, per initiator name and per target (so one
//! initiator cannot take every session), and revocation — `apply` is given the exports as
//! they are now and stops every session they would no longer admit (export removed,
//! initiator dropped from its list, CHAP secrets changed), handing back a way to wait until
//! those sessions have ended.
//!
//! Also the CmdSN arithmetic (RFC 1982 serial numbers) used for command windowing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::exports::Export;
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

/// Why a session's connection is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Another login with the same ISID replaced it.
    Reinstated,
    /// Its export was removed, or no longer admits it (initiator list or CHAP changed).
    Revoked,
}

/// How many sessions may exist: in all, per initiator name, per target. Discovery sessions
/// count towards the total and their initiator's share.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_sessions: usize,
    pub per_initiator: usize,
    pub per_target: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 1024,
            per_initiator: 8,
            per_target: 8,
        }
    }
}

struct Entry {
    /// Which admission made this entry: a reinstatement that keeps the TSIH (the initiator
    /// asked for it) replaces the entry under the same TSIH, so only this tells them apart.
    id: u64,
    tsih: u16,
    cid: u16,
    stop: watch::Sender<Stop>,
    alive: watch::Receiver<()>,
    /// The export as it was when the session logged in (ACL and CHAP secrets included).
    export: Export,
    peer: SocketAddr,
    since: SystemTime,
}

/// A live session, as `strata export ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub volume: String,
    pub target: String,
    pub initiator: String,
    pub tsih: u16,
    pub peer: String,
    /// Seconds since the Unix epoch when the session logged in.
    pub since: u64,
}

/// Held by a session's connection for its whole life; dropping it removes the session.
pub struct SessionGuard<'a> {
    table: &'a SessionTable,
    key: SessionKey,
    id: u64,
    pub tsih: u16,
    /// Changes when another login reinstates this session or its export is revoked.
    pub stop: watch::Receiver<Stop>,
    _alive: watch::Sender<()>,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock();
        // Only its own entry: a session that outlived the wait of the login reinstating it
        // must not remove the entry of its successor (which may have the same TSIH).
        if t.sessions.get(&self.key).is_some_and(|e| e.id == self.id) {
            t.sessions.remove(&self.key);
        }
    }
}

/// Held by a discovery session's connection: its place in the limits.
pub struct DiscoveryGuard<'a> {
    table: &'a SessionTable,
    initiator: String,
}

impl Drop for DiscoveryGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock();
        if let Some(n) = t.discovery.get_mut(&self.initiator) {
            *n -= 1;
            if *n == 0 {
                t.discovery.remove(&self.initiator);
            }
        }
    }
}

struct Inner {
    next_tsih: u16,
    next_id: u64,
    sessions: HashMap<SessionKey, Entry>,
    /// Discovery sessions per initiator name (lower case).
    discovery: HashMap<String, usize>,
    /// The exports sessions are admitted against: the last ones `apply` was given.
    exports: Arc<Vec<Export>>,
}

impl Inner {
    fn count(&self, initiator: &str, target: Option<&str>) -> (usize, usize, usize) {
        let disc: usize = self.discovery.values().sum();
        let by_initiator = self
            .sessions
            .keys()
            .filter(|k| k.initiator == initiator)
            .count()
            + self.discovery.get(initiator).copied().unwrap_or(0);
        let by_target = target.map_or(0, |t| {
            self.sessions.keys().filter(|k| k.target == t).count()
        });
        (self.sessions.len() + disc, by_initiator, by_target)
    }
}

pub struct SessionTable {
    inner: Mutex<Inner>,
    limits: SessionLimits,
    /// `REINSTATE_WAIT`; shorter in tests.
    reinstate_wait: Duration,
}

/// How long a reinstating login waits for the old session's commands to finish.
const REINSTATE_WAIT: Duration = Duration::from_secs(30);

/// Whether `exports` still admit a session that logged in to `old` as `initiator`: the same
/// target and volume, the initiator still listed, the same CHAP credentials both ways.
pub fn still_admitted(exports: &[Export], old: &Export, initiator: &str) -> bool {
    exports.iter().any(|e| {
        e.iqn.eq_ignore_ascii_case(&old.iqn)
            && e.volume == old.volume
            && e.allows(initiator)
            && e.chap == old.chap
            && e.mutual_chap == old.mutual_chap
    })
}

fn out_of_resources(reason: String) -> LoginFailure {
    LoginFailure {
        class: status::OUT_OF_RESOURCES.0,
        detail: status::OUT_OF_RESOURCES.1,
        reason,
    }
}

impl SessionTable {
    pub fn new(limits: SessionLimits) -> SessionTable {
        SessionTable {
            inner: Mutex::new(Inner {
                next_tsih: 1,
                next_id: 0,
                sessions: HashMap::new(),
                discovery: HashMap::new(),
                exports: Arc::new(Vec::new()),
            }),
            limits,
            reinstate_wait: REINSTATE_WAIT,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live normal sessions.
    pub fn list(&self) -> Vec<SessionInfo> {
        let t = self.inner.lock();
        let mut v: Vec<SessionInfo> = t
            .sessions
            .iter()
            .map(|(k, e)| SessionInfo {
                volume: e.export.volume.clone(),
                target: e.export.iqn.clone(),
                initiator: k.initiator.clone(),
                tsih: e.tsih,
                peer: e.peer.to_string(),
                since: e
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect();
        v.sort_by(|a, b| (&a.volume, a.tsih).cmp(&(&b.volume, b.tsih)));
        v
    }

    /// Makes `exports` the ones sessions are admitted against, and tells every session
    /// they would not admit to stop. Returns, for each, a receiver that closes when the
    /// session has ended (its connection closed and its commands finished).
    pub fn apply(&self, exports: Arc<Vec<Export>>) -> Vec<(String, watch::Receiver<()>)> {
        let mut t = self.inner.lock();
        t.exports = exports;
        let mut ended = Vec::new();
        for (k, e) in t.sessions.iter() {
            if !still_admitted(&t.exports, &e.export, &k.initiator)
                && *e.stop.borrow() != Stop::Revoked
            {
                let _ = e.stop.send(Stop::Revoked);
                ended.push((
                    format!("{} on {}", k.initiator, e.export.iqn),
                    e.alive.clone(),
                ));
            }
        }
        ended
    }

    /// Whether the exports last applied are `exports` (the same table, not just equal).
    pub fn applied(&self, exports: &Arc<Vec<Export>>) -> bool {
        Arc::ptr_eq(&self.inner.lock().exports, exports)
    }

    /// Admits a discovery session of `initiator`, within the limits.
    pub fn admit_discovery(&self, initiator: &str) -> Result<DiscoveryGuard<'_>, LoginFailure> {
        let initiator = initiator.to_ascii_lowercase();
        let mut t = self.inner.lock();
        let (all, mine, _) = t.count(&initiator, None);
        if all >= self.limits.max_sessions {
            return Err(out_of_resources(format!(
                "too many sessions ({all}; --max-sessions)"
            )));
        }
        if mine >= self.limits.per_initiator {
            return Err(out_of_resources(format!(
                "{initiator} has {mine} sessions already (--max-sessions-per-initiator)"
            )));
        }
        *t.discovery.entry(initiator.clone()).or_insert(0) += 1;
        Ok(DiscoveryGuard {
            table: self,
            initiator,
        })
    }

    /// Admits a session to `export`: a new one (`requested_tsih` 0) or the reinstatement of
    /// one. Waits (bounded) for a replaced session to end. Refused when the exports applied
    /// by then no longer admit it, or a limit is reached (a reinstatement takes the place of
    /// the session it replaces).
    pub async fn admit(
        &self,
        key: SessionKey,
        requested_tsih: u16,
        cid: u16,
        export: &Export,
        peer: SocketAddr,
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
            if old.is_none() {
                let (all, mine, theirs) = t.count(&key.initiator, Some(&key.target));
                let refusal = if all >= self.limits.max_sessions {
                    Some(format!("too many sessions ({all}; --max-sessions)"))
                } else if mine >= self.limits.per_initiator {
                    Some(format!(
                        "{} has {mine} sessions already (--max-sessions-per-initiator)",
                        key.initiator
                    ))
                } else if theirs >= self.limits.per_target {
                    Some(format!(
                        "{} has {theirs} sessions already (--max-sessions-per-target)",
                        key.target
                    ))
                } else {
                    None
                };
                if let Some(r) = refusal {
                    return Err(out_of_resources(r));
                }
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
            let _ = old.stop.send(Stop::Reinstated);
            let mut alive = old.alive;
            let _ = tokio::time::timeout(self.reinstate_wait, async {
                while alive.changed().await.is_ok() {}
            })
            .await;
        }
        let (stop_tx, stop_rx) = watch::channel(Stop::Running);
        let (alive_tx, alive_rx) = watch::channel(());
        let mut t = self.inner.lock();
        // Checked here, under the lock `apply` takes: a session is either admitted against
        // the exports applied last, or seen (and revoked) by the next `apply`.
        if !still_admitted(&t.exports, export, &key.initiator) {
            return Err(LoginFailure {
                class: status::AUTHORIZATION_FAILURE.0,
                detail: status::AUTHORIZATION_FAILURE.1,
                reason: format!("the export of {} changed during the login", export.iqn),
            });
        }
        t.next_id += 1;
        let id = t.next_id;
        if let Some(e) = t.sessions.insert(
            key.clone(),
            Entry {
                id,
                tsih,
                cid,
                stop: stop_tx,
                alive: alive_rx,
                export: export.clone(),
                peer,
                since: SystemTime::now(),
            },
        ) {
            // A concurrent login for the same ISID slipped in: it loses.
            let _ = e.stop.send(Stop::Reinstated);
        }
        drop(t);
        Ok(SessionGuard {
            table: self,
            key,
            id,
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

    fn export(vol: &str, initiators: &[&str]) -> Export {
        Export {
            volume: vol.into(),
            iqn: format!("iqn.t:{vol}"),
            initiators: initiators.iter().map(|s| s.to_string()).collect(),
            chap: None,
            mutual_chap: None,
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn table(limits: SessionLimits, exports: Vec<Export>) -> &'static SessionTable {
        let t: &'static SessionTable = Box::leak(Box::new(SessionTable::new(limits)));
        t.apply(Arc::new(exports));
        t
    }

    #[tokio::test]
    async fn reinstatement_stops_the_old_session_and_waits_for_it() {
        let e = export("t", &["iqn.x:a"]);
        let t = table(SessionLimits::default(), vec![e.clone()]);
        let k = SessionKey::new("iqn.x:a", [1, 2, 3, 4, 5, 6], &e.iqn);
        let old = t.admit(k.clone(), 0, 0, &e, peer()).await.unwrap();
        let old_tsih = old.tsih;
        let mut stop = old.stop.clone();
        let h = tokio::spawn(async move {
            stop.changed().await.unwrap();
            assert_eq!(*stop.borrow(), Stop::Reinstated);
            drop(old);
        });
        let new = t.admit(k.clone(), 0, 0, &e, peer()).await.unwrap();
        h.await.unwrap();
        assert_ne!(new.tsih, old_tsih);
        assert_eq!(t.len(), 1);
        drop(new);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_session_outliving_its_reinstatement_leaves_its_successor_in_the_table() {
        let e = export("t", &["iqn.x:a"]);
        let mut t = SessionTable::new(SessionLimits::default());
        t.reinstate_wait = Duration::from_millis(50);
        let t: &'static SessionTable = Box::leak(Box::new(t));
        t.apply(Arc::new(vec![e.clone()]));
        let k = SessionKey::new("iqn.x:a", [1; 6], &e.iqn);
        let old = t.admit(k.clone(), 0, 7, &e, peer()).await.unwrap();
        // The initiator logs in again on the same CID with the session's TSIH; the old
        // session does not end within the wait, so the new one starts beside it.
        let new = t.admit(k.clone(), old.tsih, 7, &e, peer()).await.unwrap();
        assert_eq!(new.tsih, old.tsih);
        assert_eq!(*old.stop.borrow(), Stop::Reinstated);
        drop(old);
        // The new session is still counted, listed and revocable.
        assert_eq!(t.list().len(), 1);
        assert_eq!(t.apply(Arc::new(Vec::new())).len(), 1);
        assert_eq!(*new.stop.borrow(), Stop::Revoked);
        drop(new);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_login_naming_an_ended_or_replaced_session_is_told_it_does_not_exist() {
        let e: &'static Export = Box::leak(Box::new(export("t", &["iqn.x:a"])));
        let t = table(SessionLimits::default(), vec![e.clone()]);
        let k = SessionKey::new("iqn.x:a", [2; 6], &e.iqn);
        let refused = |tsih| {
            let k = k.clone();
            async move {
                let err = t.admit(k, tsih, 0, e, peer()).await.err().unwrap();
                assert_eq!((err.class, err.detail), status::SESSION_DOES_NOT_EXIST);
            }
        };
        // Ended: its connection closed.
        let ended = t.admit(k.clone(), 0, 0, e, peer()).await.unwrap();
        let ended_tsih = ended.tsih;
        drop(ended);
        refused(ended_tsih).await;
        // Taken over by a new login (TSIH 0, same ISID): the old TSIH names nothing while
        // the takeover waits for the old session to end, nor once the new one runs.
        let old = t.admit(k.clone(), 0, 0, e, peer()).await.unwrap();
        let old_tsih = old.tsih;
        let mut stop = old.stop.clone();
        let k2 = k.clone();
        let takeover = tokio::spawn(async move { t.admit(k2, 0, 0, e, peer()).await });
        stop.changed().await.unwrap();
        refused(old_tsih).await;
        drop(old);
        let new = takeover.await.unwrap().unwrap();
        assert_ne!(new.tsih, old_tsih);
        refused(old_tsih).await;
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn unknown_tsih_is_refused_and_limits_hold() {
        let e = export("t", &["iqn.x:a", "iqn.x:b"]);
        let limits = SessionLimits {
            max_sessions: 1,
            ..SessionLimits::default()
        };
        let t = table(limits, vec![e.clone()]);
        let k = SessionKey::new("iqn.x:a", [0; 6], &e.iqn);
        let err = t.admit(k.clone(), 42, 0, &e, peer()).await.err().unwrap();
        assert_eq!((err.class, err.detail), status::SESSION_DOES_NOT_EXIST);
        let _a = t.admit(k, 0, 0, &e, peer()).await.unwrap();
        let k2 = SessionKey::new("iqn.x:b", [0; 6], &e.iqn);
        let err = t.admit(k2, 0, 0, &e, peer()).await.err().unwrap();
        assert_eq!((err.class, err.detail), status::OUT_OF_RESOURCES);
        assert!(t.admit_discovery("iqn.x:b").is_err());
    }

    #[tokio::test]
    async fn one_initiator_cannot_take_every_session() {
        let exports: Vec<Export> = (0..4)
            .map(|i| export(&format!("v{i}"), &["iqn.x:greedy", "iqn.x:modest"]))
            .collect();
        let limits = SessionLimits {
            max_sessions: 100,
            per_initiator: 3,
            per_target: 2,
        };
        let t = table(limits, exports.clone());
        let mut held = Vec::new();
        for (i, e) in exports.iter().enumerate().take(3) {
            let k = SessionKey::new("iqn.x:greedy", [0, 0, 0, 0, 0, i as u8], &e.iqn);
            held.push(t.admit(k, 0, 0, e, peer()).await.unwrap());
        }
        // The fourth of the same initiator is refused, discovery too...
        let k = SessionKey::new("iqn.x:greedy", [0, 0, 0, 0, 1, 0], &exports[3].iqn);
        let err = t.admit(k, 0, 0, &exports[3], peer()).await.err().unwrap();
        assert!(err.reason.contains("per-initiator"), "{}", err.reason);
        assert!(t.admit_discovery("iqn.x:GREEDY").is_err());
        // ...while another initiator still gets in, up to the per-target limit.
        let k = SessionKey::new("iqn.x:modest", [9; 6], &exports[0].iqn);
        let _m = t.admit(k, 0, 0, &exports[0], peer()).await.unwrap();
        let k = SessionKey::new("iqn.x:modest", [8; 6], &exports[0].iqn);
        let err = t.admit(k, 0, 0, &exports[0], peer()).await.err().unwrap();
        assert!(err.reason.contains("per-target"), "{}", err.reason);
        let _d = t.admit_discovery("iqn.x:modest").unwrap();
        // A reinstatement takes the place of the session it replaces.
        let k = SessionKey::new("iqn.x:greedy", [0; 6], &exports[0].iqn);
        let old = held.remove(0);
        let mut stop = old.stop.clone();
        let h = tokio::spawn(async move {
            let _ = stop.changed().await;
            drop(old);
        });
        held.push(t.admit(k, 0, 0, &exports[0], peer()).await.unwrap());
        h.await.unwrap();
    }

    #[tokio::test]
    async fn apply_revokes_exactly_the_sessions_the_new_exports_refuse() {
        let a = export("a", &["iqn.x:1", "iqn.x:2"]);
        let b = export("b", &["iqn.x:1"]);
        let t = table(SessionLimits::default(), vec![a.clone(), b.clone()]);
        let s1 = t
            .admit(SessionKey::new("iqn.x:1", [1; 6], &a.iqn), 0, 0, &a, peer())
            .await
            .unwrap();
        let s2 = t
            .admit(SessionKey::new("iqn.x:2", [2; 6], &a.iqn), 0, 0, &a, peer())
            .await
            .unwrap();
        let s3 = t
            .admit(SessionKey::new("iqn.x:1", [3; 6], &b.iqn), 0, 0, &b, peer())
            .await
            .unwrap();
        assert_eq!(t.list().len(), 3);
        // a now admits only iqn.x:1; b gets a CHAP secret.
        let mut a2 = a.clone();
        a2.initiators = vec!["iqn.x:1".into()];
        let mut b2 = b.clone();
        b2.chap = Some(super::super::exports::Chap {
            user: "u".into(),
            secret: "twelve-bytes".into(),
        });
        let ending = t.apply(Arc::new(vec![a2.clone(), b2.clone()]));
        assert_eq!(ending.len(), 2);
        assert_eq!(*s1.stop.borrow(), Stop::Running);
        assert_eq!(*s2.stop.borrow(), Stop::Revoked);
        assert_eq!(*s3.stop.borrow(), Stop::Revoked);
        // Applying the same again revokes nothing new; a login against the old export
        // (its ACL checked before the change) is refused at admission.
        assert!(t.apply(Arc::new(vec![a2.clone(), b2])).is_empty());
        let late = t
            .admit(SessionKey::new("iqn.x:2", [4; 6], &a.iqn), 0, 0, &a, peer())
            .await;
        assert!(late.is_err());
        drop((s1, s2, s3));
        assert!(t.is_empty());
    }
}
