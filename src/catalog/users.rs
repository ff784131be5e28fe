//! Local users and their login sessions.
//!
//! Passwords are kept only as argon2id PHC strings (random salt each); they are never
//! returned, listed or logged. A session is a random 256-bit token handed to the client
//! once; the catalog keeps only its SHA-256, so reading the catalog gives no one a live
//! session. Sessions expire after an idle timeout: each use moves the expiry forward, and
//! an expired session cannot be revived.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use sha2::{Digest, Sha256};

use super::backend::{SessionRow, User};
use super::{now_timestamp, Catalog, CatalogError};

type Result<T> = std::result::Result<T, CatalogError>;

/// A live session: who, and until when (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub expires: i64,
}

/// What [`Catalog::peek_session`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPeek {
    /// Live, and its expiry within the slack of where a use would move it: nothing to write.
    Live(Session),
    /// Expired, ended or unknown.
    Gone,
    /// Live, but its expiry has fallen behind: [`Catalog::session`] moves it (a write).
    Due,
}

fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lower-case hex digits (every API request hashes its token: no `format!` per byte).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CatalogError::Hash(e.to_string()))
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).ok().is_some_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, checked for unknown users so that a login for a name
/// that does not exist takes as long as one with a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&crate::catalog::new_id()).unwrap_or_default())
}

/// A user name: 1 to 64 characters, letters, digits and `._@-`.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "user name {name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

impl Catalog {
    /// Adds a local user with this password (hashed with argon2id).
    pub fn add_user(&self, name: &str, password: &str) -> Result<()> {
        check_user_name(name)?;
        if password.is_empty() {
            return Err(CatalogError::Invalid("the password is empty".into()));
        }
        let h = hash_password(password)?;
        self.backend().insert_user(name, &h, &now_timestamp())
    }

    /// Removes a user and ends its sessions; `NotFound` when there is none.
    pub fn remove_user(&self, name: &str) -> Result<()> {
        if self.backend().delete_user(name)? {
            Ok(())
        } else {
            Err(CatalogError::NotFound {
                what: "user",
                key: name.into(),
            })
        }
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.backend().list_users()
    }

    /// Checks the password and opens a session lasting `idle` past its last use; None for
    /// a wrong name or password (which of the two is not said).
    pub fn login(&self, name: &str, password: &str, idle: Duration) -> Result<Option<String>> {
        let ok = match self.backend().password_hash(name)? {
            Some(h) => verify(password, &h),
            None => {
                verify(password, decoy_hash());
                false
            }
        };
        if !ok {
            return Ok(None);
        }
        let now = now_ms();
        self.backend().purge_sessions(now)?;
        let token = new_token();
        self.backend().insert_session(&SessionRow {
            token_hash: hash_token(&token),
            user: name.into(),
            created: now,
            expires: now.saturating_add(millis(idle)),
        })?;
        Ok(Some(token))
    }

    /// The session of this token if it is live, its expiry moved to `idle` from now.
    ///
    /// Moving the expiry is a write, and every API request checks its session: a client
    /// making many requests would write the catalog at each. So the expiry is moved only
    /// when it has fallen behind `now + idle` by more than [`touch_slack`] (1/64 of the
    /// idle time, a minute at most); a session may thus end that much before a full idle
    /// time after its last use, never later.
    pub fn session(&self, token: &str, idle: Duration) -> Result<Option<Session>> {
        let hash = hash_token(token);
        match self.peek(&hash, idle)? {
            SessionPeek::Live(s) => Ok(Some(s)),
            SessionPeek::Gone => Ok(None),
            SessionPeek::Due => {
                let now = now_ms();
                let wanted = now.saturating_add(millis(idle));
                Ok(self
                    .backend()
                    .touch_session(&hash, now, Some(wanted))?
                    .map(|row| Session {
                        user: row.user,
                        expires: row.expires,
                    }))
            }
        }
    }

    /// The read-only half of [`Catalog::session`]: whether this token's session is live
    /// and needs no write (`Live`), is gone, or is due its expiry's move (`Due`: call
    /// `session`). It writes nothing, so a caller may run it where a write could not wait.
    pub fn peek_session(&self, token: &str, idle: Duration) -> Result<SessionPeek> {
        self.peek(&hash_token(token), idle)
    }

    fn peek(&self, hash: &str, idle: Duration) -> Result<SessionPeek> {
        let now = now_ms();
        let Some(row) = self.backend().touch_session(hash, now, None)? else {
            return Ok(SessionPeek::Gone);
        };
        let wanted = now.saturating_add(millis(idle));
        Ok(
            if row.expires < wanted.saturating_sub(millis(touch_slack(idle))) {
                SessionPeek::Due
            } else {
                SessionPeek::Live(Session {
                    user: row.user,
                    expires: row.expires,
                })
            },
        )
    }

    /// Ends a session; false when it was not live.
    pub fn logout(&self, token: &str) -> Result<bool> {
        let h = hash_token(token);
        let live = self.backend().touch_session(&h, now_ms(), None)?.is_some();
        let gone = self.backend().delete_session(&h)?;
        Ok(live && gone)
    }
}

/// How far a session's expiry may fall behind before a use moves it (see
/// [`Catalog::session`]).
fn touch_slack(idle: Duration) -> Duration {
    (idle / 64).min(Duration::from_secs(60))
}

/// Now in Unix milliseconds (sessions' clock).
fn now_ms() -> i64 {
    let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// 32 random bytes as 64 hex digits.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn login_takes_the_right_password_only(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.add_user("admin", "s3cret pass").unwrap();
        assert!(c.login("admin", "wrong", HOUR).unwrap().is_none());
        assert!(c.login("nobody", "s3cret pass", HOUR).unwrap().is_none());
        let t = c.login("admin", "s3cret pass", HOUR).unwrap().unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(c.session(&t, HOUR).unwrap().unwrap().user, "admin");
        assert!(c.session("not-a-token", HOUR).unwrap().is_none());
    }

    #[test]
    fn a_use_moves_the_expiry_only_once_it_has_fallen_behind_by_the_slack() {
        let c = Catalog::memory().unwrap();
        c.add_user("u", "pw").unwrap();
        let t = c.login("u", "pw", HOUR).unwrap().unwrap();
        let first = c.session(&t, HOUR).unwrap().unwrap().expires;
        // A longer idle time is more than the slack behind: moved.
        let moved = c.session(&t, 2 * HOUR).unwrap().unwrap().expires;
        assert!(moved >= first + 3600 * 1000 - 1000, "{first} {moved}");
        // Used again a millisecond later: within the slack, not written.
        let at = now_ms();
        while now_ms() == at {
            std::hint::spin_loop();
        }
        assert_eq!(c.session(&t, 2 * HOUR).unwrap().unwrap().expires, moved);
        assert_eq!(touch_slack(2 * HOUR), Duration::from_secs(60));
        assert_eq!(touch_slack(Duration::from_secs(64)), Duration::from_secs(1));
    }

    #[test]
    fn a_peek_writes_nothing_and_says_when_the_expiry_is_due() {
        let c = Catalog::memory().unwrap();
        c.add_user("u", "pw").unwrap();
        let t = c.login("u", "pw", HOUR).unwrap().unwrap();
        let SessionPeek::Live(s) = c.peek_session(&t, HOUR).unwrap() else {
            panic!("a new session is live");
        };
        assert_eq!(s.user, "u");
        // A longer idle time: the expiry is due a move, and peeking does not move it.
        assert_eq!(c.peek_session(&t, 2 * HOUR).unwrap(), SessionPeek::Due);
        assert_eq!(c.peek_session(&t, 2 * HOUR).unwrap(), SessionPeek::Due);
        assert!(c.session(&t, 2 * HOUR).unwrap().unwrap().expires > s.expires);
        assert!(matches!(
            c.peek_session(&t, 2 * HOUR).unwrap(),
            SessionPeek::Live(_)
        ));
        assert_eq!(c.peek_session("nope", HOUR).unwrap(), SessionPeek::Gone);
        assert_eq!(hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
    }

    #[test]
    fn the_catalog_holds_no_password_and_no_token() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path()).unwrap();
        c.add_user("admin", "plain-text-password").unwrap();
        let t = c
            .login("admin", "plain-text-password", HOUR)
            .unwrap()
            .unwrap();
        drop(c);
        let conn = rusqlite::Connection::open(d.path().join(super::super::FILE_NAME)).unwrap();
        let hash: String = conn
            .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
            .unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("plain-text-password"));
        let th: String = conn
            .query_row("SELECT token_hash FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_ne!(th, t);
        assert_eq!(th, hash_token(&t));
    }

    fn logout_and_expiry_end_a_session(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.add_user("u", "pw").unwrap();
        let t = c.login("u", "pw", HOUR).unwrap().unwrap();
        assert!(c.logout(&t).unwrap());
        assert!(c.session(&t, HOUR).unwrap().is_none());
        assert!(!c.logout(&t).unwrap());
        // Seen two hours on, a one-hour session is expired, and the lookup that finds it
        // expired does not extend it.
        let t = c.login("u", "pw", HOUR).unwrap().unwrap();
        let later = now_ms() + 2 * 3600 * 1000;
        let b = c.backend();
        assert!(b
            .touch_session(&hash_token(&t), later, Some(later + 3600 * 1000))
            .unwrap()
            .is_none());
        assert!(b
            .touch_session(&hash_token(&t), later, None)
            .unwrap()
            .is_none());
        // Now it is still live, and each use moves its expiry on.
        let s = c.session(&t, HOUR).unwrap().unwrap();
        assert!(s.expires >= now_ms() + 3599 * 1000 && s.expires < later);
    }

    fn removing_a_user_ends_its_sessions_and_names_are_checked(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.add_user("u", "pw").unwrap();
        let t = c.login("u", "pw", HOUR).unwrap().unwrap();
        assert!(matches!(
            c.add_user("u", "other"),
            Err(CatalogError::Conflict { .. })
        ));
        c.remove_user("u").unwrap();
        assert!(c.session(&t, HOUR).unwrap().is_none());
        assert!(matches!(
            c.remove_user("u"),
            Err(CatalogError::NotFound { .. })
        ));
        assert!(c.add_user("bad name", "pw").is_err());
        assert!(c.add_user("ok", "").is_err());
        assert!(c.users().unwrap().is_empty());
    }

    crate::catalog::testing::conformance!(
        login_takes_the_right_password_only,
        logout_and_expiry_end_a_session,
        removing_a_user_ends_its_sessions_and_names_are_checked,
    );
}
