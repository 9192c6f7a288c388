//! What the login server decides for each request. Blocking (SQLite, argon2): the event loop runs
//! it on the blocking pool, and nothing here touches the swarm. An announcement may need a
//! dial-back; [`Service::handle`] returns it and the event loop hands it to the dial-back task
//! ([`crate::dialback`]), which reports the outcome through [`Service::dial_back_outcome`].

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use natter_proto::limits::{MAX_ADDR_LEN, MAX_ANNOUNCED_ADDRS, MAX_PASSWORD_BYTES};
use natter_proto::login::{LoginRequest, LoginResponse, Password, Refusal, RefusalCode};
use natter_proto::revocation::Revocations;
use natter_proto::{Certificate, IssuerSigningKey, UserName};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::accounts::{self, Accounts};
use crate::dialback::{self, Outcome as DialBackOutcome};
use crate::ratelimit::RateLimiter;
use crate::registry::{DialBack, Recheck, Registry};
use crate::revocations::RevocationCache;
use crate::{Config, Registration};
use natter_net::address_key;

/// Who sent a request: the Noise-authenticated peer and, when known, its source IP.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub peer: PeerId,
    pub ip: Option<IpAddr>,
}

/// The login server's state and rules, shared by the request tasks.
#[derive(Debug)]
pub struct Service {
    accounts: Accounts,
    issuer: IssuerSigningKey,
    config: Config,
    /// Register and login attempts per source address ([`address_key`]).
    by_ip: Mutex<RateLimiter<IpAddr>>,
    /// Failed logins per user name and source address.
    by_name: Mutex<RateLimiter<(UserName, Option<IpAddr>)>>,
    /// Every other request per source address.
    by_ip_other: Mutex<RateLimiter<IpAddr>>,
    /// A hash that no password matches, verified for names without an account so that the
    /// answer takes as long as for a real user's wrong password.
    decoy_hash: std::sync::OnceLock<String>,
    registry: Mutex<Registry>,
    /// The signed revocation list.
    revocations: RevocationCache,
    /// Requests by kind and outcome ("ok" or the refusal code), for the metrics endpoint.
    requests: Family<Vec<(String, String)>, Counter>,
    /// Dial-backs by outcome ("reached", "unreached", "dropped").
    dial_backs: Family<Vec<(String, String)>, Counter>,
}

/// Wall-clock time in unix seconds, as certificates use it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Outcome = Result<LoginResponse, Refusal>;

impl Service {
    pub fn new(accounts: Accounts, issuer: IssuerSigningKey, config: Config) -> Self {
        Self {
            accounts,
            issuer,
            by_ip: Mutex::new(RateLimiter::new(
                config.ip_limit,
                config.max_rate_limit_keys,
            )),
            by_name: Mutex::new(RateLimiter::new(
                config.name_limit,
                config.max_rate_limit_keys,
            )),
            by_ip_other: Mutex::new(RateLimiter::new(
                config.request_limit,
                config.max_rate_limit_keys,
            )),
            decoy_hash: std::sync::OnceLock::new(),
            registry: Mutex::new(Registry::new(
                config.announce_ttl,
                config.max_superpeers,
                Recheck {
                    retry_unreached: config.announce_refresh,
                    reverify: config.reverify_after,
                    stale: config.dial_back_timeout.saturating_mul(3),
                },
            )),
            revocations: RevocationCache::default(),
            requests: Family::default(),
            dial_backs: Family::default(),
            config,
        }
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub fn issuer_key(&self) -> natter_proto::IssuerKey {
        self.issuer.public()
    }

    /// Whether a request costs a password hash (so it runs under the tighter concurrency cap).
    pub fn is_expensive(request: &LoginRequest) -> bool {
        matches!(
            request,
            LoginRequest::Register { .. } | LoginRequest::Login { .. }
        )
    }

    /// Decides `request`. The second value is a dial-back to run (an announcement to check
    /// before it is listed); the answer does not wait for it.
    pub fn handle(
        &self,
        request: LoginRequest,
        caller: Caller,
    ) -> (LoginResponse, Option<DialBack>) {
        let kind = request.kind();
        let mut dial_back = None;
        let cheap = !Self::is_expensive(&request);
        let outcome = match request {
            _ if cheap && let Err(refusal) = self.limit_other(caller) => Err(refusal),
            LoginRequest::Register { name, password } => self.register(&name, &password, caller),
            LoginRequest::Login { name, password } => self.login(&name, &password, caller),
            LoginRequest::Renew { cert } => self.renew(&cert, caller),
            LoginRequest::Bootstrap { cert } => self.bootstrap(&cert, caller),
            LoginRequest::Withdraw { cert } => self.withdraw(&cert, caller),
            LoginRequest::Exists { name } => self.exists(&name),
            LoginRequest::Revocations { since } => {
                self.revocation_list()
                    .map(|revocations| LoginResponse::Revocations {
                        list: revocations.list().filter(|l| l.issued_at > since).cloned(),
                    })
            }
            LoginRequest::Announce {
                cert,
                addrs,
                leaves,
                capacity,
            } => self
                .announce(&cert, addrs, leaves, capacity, caller)
                .map(|(response, job)| {
                    dial_back = job;
                    response
                }),
        };
        let label = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(r) => format!("{:?}", r.code).to_lowercase(),
        };
        self.requests
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("outcome".into(), label),
            ])
            .inc();
        let response = match outcome {
            Ok(response) => {
                tracing::debug!(peer = %caller.peer, kind, "request served");
                response
            }
            Err(refusal) => {
                tracing::info!(peer = %caller.peer, ip = ?caller.ip, kind, code = ?refusal.code, "request refused");
                LoginResponse::Refused(refusal)
            }
        };
        (response, dial_back)
    }

    fn internal(&self, e: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "internal error");
        Refusal::new(RefusalCode::Internal, "internal error on the login server")
    }

    fn parse_name(name: &str) -> Result<UserName, Refusal> {
        UserName::parse(name).map_err(|e| Refusal::new(RefusalCode::InvalidName, e.to_string()))
    }

    /// Per-address limit: every register or login attempt counts.
    fn limit_ip(&self, caller: Caller) -> Result<(), Refusal> {
        Self::limit(&self.by_ip, caller)
    }

    /// Per-address limit of the other requests (renew, exists, announce).
    fn limit_other(&self, caller: Caller) -> Result<(), Refusal> {
        Self::limit(&self.by_ip_other, caller)
    }

    fn limit(limiter: &Mutex<RateLimiter<IpAddr>>, caller: Caller) -> Result<(), Refusal> {
        match caller.ip {
            Some(ip) => lock(limiter)
                .acquire(&address_key(ip), Instant::now())
                .map_err(|secs| Refusal::retry_after(RefusalCode::RateLimited, secs)),
            None => Ok(()),
        }
    }

    fn register(&self, name: &str, password: &Password, caller: Caller) -> Outcome {
        if self.config.registration == Registration::Closed {
            return Err(Refusal::new(
                RefusalCode::RegistrationClosed,
                "registration is closed on this login server; ask its operator for an account",
            ));
        }
        self.limit_ip(caller)?;
        let name = Self::parse_name(name)?;
        password
            .check()
            .map_err(|m| Refusal::new(RefusalCode::InvalidPassword, m))?;
        if self.accounts.exists(&name).map_err(|e| self.internal(e))? {
            return Err(name_taken(&name));
        }
        let hash = accounts::hash_password(password).map_err(|e| self.internal(e))?;
        if !self
            .accounts
            .create(&name, &hash, unix_now())
            .map_err(|e| self.internal(e))?
        {
            return Err(name_taken(&name));
        }
        tracing::info!(user = %name, peer = %caller.peer, "account registered");
        self.issue(name, caller.peer)
    }

    fn login(&self, name: &str, password: &Password, caller: Caller) -> Outcome {
        self.limit_ip(caller)?;
        let name = Self::parse_name(name)?;
        if password.expose().len() > MAX_PASSWORD_BYTES {
            return Err(Refusal::new(
                RefusalCode::InvalidPassword,
                "password is too long",
            ));
        }
        // The attempt is taken before the password is checked and given back when it was
        // right: concurrent guesses cannot all pass the check before one is recorded.
        let guess = (name.clone(), caller.ip.map(address_key));
        lock(&self.by_name)
            .acquire(&guess, Instant::now())
            .map_err(|secs| Refusal::retry_after(RefusalCode::RateLimited, secs))?;
        let Some(account) = self.accounts.get(&name).map_err(|e| self.internal(e))? else {
            // As much work as a wrong password: the time does not tell which names exist.
            let decoy = self.decoy_hash.get_or_init(|| {
                accounts::hash_password(&Password::new("natter decoy")).unwrap_or_default()
            });
            let _ = accounts::verify_password(password, decoy);
            return Err(unknown_user(&name));
        };
        if !accounts::verify_password(password, &account.password_hash) {
            return Err(Refusal::new(
                RefusalCode::WrongPassword,
                format!("wrong password for {name}"),
            ));
        }
        lock(&self.by_name).refund(&guess, Instant::now());
        if account.disabled {
            return Err(disabled(&name));
        }
        tracing::info!(user = %name, peer = %caller.peer, "logged in");
        self.issue(name, caller.peer)
    }

    fn renew(&self, cert: &Certificate, caller: Caller) -> Outcome {
        let name = self.check_cert(cert, caller, self.config.renew_grace.as_secs())?;
        tracing::debug!(user = %name, peer = %caller.peer, "renewed");
        self.issue(name, caller.peer)
    }

    /// A bootstrap list and the supply, for a certified device (no new certificate: renewal
    /// is for certificates that are due, not for polling).
    fn bootstrap(&self, cert: &Certificate, caller: Caller) -> Outcome {
        self.check_cert(cert, caller, 0)?;
        let registry = lock(&self.registry);
        let now = Instant::now();
        Ok(LoginResponse::Bootstrap {
            superpeers: registry.bootstrap(now, Some(&caller.peer)),
            supply: registry.supply(now),
        })
    }

    /// A superpeer that demoted or signs off: out of the registry at once. Only the caller's
    /// own entry (by its Noise-authenticated peer id), and only with its own certificate.
    fn withdraw(&self, cert: &Certificate, caller: Caller) -> Outcome {
        let name = self.check_cert(cert, caller, self.config.renew_grace.as_secs())?;
        lock(&self.registry).remove(&caller.peer);
        tracing::info!(user = %name, peer = %caller.peer, "superpeer withdrew");
        Ok(LoginResponse::Withdrawn)
    }

    /// A certificate presented by `caller`: ours, valid (within `grace`), issued to the
    /// caller's own key, for an account that is still active.
    fn check_cert(
        &self,
        cert: &Certificate,
        caller: Caller,
        grace: u64,
    ) -> Result<UserName, Refusal> {
        cert.verify_with_grace(&self.issuer.public(), unix_now(), grace)
            .map_err(|e| Refusal::new(RefusalCode::InvalidCertificate, e.to_string()))?;
        if cert.peer_id() != caller.peer {
            return Err(Refusal::new(
                RefusalCode::NotAuthorized,
                "certificate was issued to another device",
            ));
        }
        let name = cert.username().clone();
        let account = self
            .accounts
            .get(&name)
            .map_err(|e| self.internal(e))?
            .ok_or_else(|| unknown_user(&name))?;
        if account.disabled {
            return Err(disabled(&name));
        }
        if self.revocation_list()?.revokes(cert) {
            return Err(Refusal::new(
                RefusalCode::NotAuthorized,
                "this device's certificate was revoked: log in again with the password",
            ));
        }
        Ok(name)
    }

    /// The signed revocation list ([`RevocationCache`]).
    pub fn revocation_list(&self) -> Result<Revocations, Refusal> {
        let keep = self.config.cert_lifetime + self.config.renew_grace;
        self.revocations
            .get(&self.accounts, &self.issuer, keep)
            .map_err(|e| self.internal(e))
    }

    fn exists(&self, name: &str) -> Outcome {
        let name = Self::parse_name(name)?;
        let exists = self.accounts.exists(&name).map_err(|e| self.internal(e))?;
        Ok(LoginResponse::Exists {
            name: name.to_string(),
            exists,
        })
    }

    /// A superpeer's announcement. Accepted when its certificate holds and one of its
    /// addresses is worth dialing ([`dialback::plausible`]; the others are ignored); it is
    /// listed once the dial-back this returns has reached it.
    fn announce(
        &self,
        cert: &Certificate,
        addrs: Vec<String>,
        leaves: u32,
        capacity: u32,
        caller: Caller,
    ) -> Result<(LoginResponse, Option<DialBack>), Refusal> {
        let account = match self.check_cert(cert, caller, 0) {
            Ok(account) => account,
            Err(refusal) => {
                lock(&self.registry).remove(&caller.peer);
                return Err(refusal);
            }
        };
        if addrs.is_empty() || addrs.len() > MAX_ANNOUNCED_ADDRS {
            return Err(Refusal::new(
                RefusalCode::BadRequest,
                format!("announce 1 to {MAX_ANNOUNCED_ADDRS} addresses"),
            ));
        }
        let mut parsed = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            match addr.parse::<Multiaddr>() {
                Ok(a) if addr.len() <= MAX_ADDR_LEN => parsed.push(a),
                _ => {
                    return Err(Refusal::new(
                        RefusalCode::BadRequest,
                        "announced address is not a valid multiaddr",
                    ));
                }
            }
        }
        let mut dialable: Vec<Multiaddr> = Vec::with_capacity(parsed.len());
        for a in parsed
            .iter()
            .filter_map(|a| dialback::plausible(a, &caller.peer))
            .filter(|a| dialback::from_caller(a, caller.ip))
        {
            if !dialable.contains(&a) {
                dialable.push(a);
            }
        }
        if dialable.is_empty() {
            return Err(Refusal::new(
                RefusalCode::BadRequest,
                "no announced address can be dialed back: announce /ip4 or /ip6 addresses of the \
                 host you connect from, with /tcp or /udp/quic-v1, neither unspecified nor \
                 relayed",
            ));
        }
        let now = Instant::now();
        let mut registry = lock(&self.registry);
        let job = registry
            .announce(&account, caller.peer, dialable, (leaves, capacity), now)
            .map_err(|full| Refusal {
                retry_after_secs: Some(self.config.announce_refresh.as_secs()),
                ..Refusal::new(RefusalCode::Busy, full.to_string())
            })?;
        let response = LoginResponse::Announced {
            refresh_secs: self.config.announce_refresh.as_secs(),
            superpeers: registry.bootstrap(now, Some(&caller.peer)),
            supply: registry.supply(now),
        };
        Ok((response, job))
    }

    /// What a dial-back found, into the registry.
    pub(crate) fn dial_back_outcome(&self, outcome: DialBackOutcome) {
        let count = |label: &str| {
            self.dial_backs
                .get_or_create(&vec![("outcome".into(), label.into())])
                .inc();
        };
        match outcome {
            DialBackOutcome::Reached(job, addr) => {
                if lock(&self.registry).reached(&job, &addr) {
                    tracing::info!(user = %job.account, peer = %job.peer, %addr, "superpeer reached back: listed");
                }
            }
            DialBackOutcome::Finished(job, reached) => {
                let listed = lock(&self.registry).finished(&job, &reached, Instant::now());
                match listed {
                    Some(true) => {
                        count("reached");
                        tracing::debug!(user = %job.account, peer = %job.peer, ?reached, "superpeer reached back");
                    }
                    Some(false) => {
                        count("unreached");
                        tracing::info!(user = %job.account, peer = %job.peer, addrs = ?job.addrs,
                            "superpeer not reached on any announced address: not listed");
                    }
                    // The superpeer announced again meanwhile; its newer check counts.
                    None => {}
                }
            }
            DialBackOutcome::Dropped(job) => {
                count("dropped");
                tracing::debug!(user = %job.account, peer = %job.peer, "dial-back dropped: too many at once");
                lock(&self.registry).dropped(&job);
            }
        }
    }

    /// A dial-back the event loop could not hand over (the task's queue is full).
    pub(crate) fn dial_back_dropped(&self, job: DialBack) {
        self.dial_back_outcome(DialBackOutcome::Dropped(job));
    }

    fn issue(&self, name: UserName, peer: PeerId) -> Outcome {
        let device_key = device_key_of(&peer).ok_or_else(|| {
            Refusal::new(
                RefusalCode::NotAuthorized,
                "device identity must be an ed25519 key",
            )
        })?;
        // Only so many devices per account: a device certified within a certificate's
        // lifetime and grace counts; a known one always renews.
        let now = unix_now();
        let window = self.config.cert_lifetime + self.config.renew_grace;
        let device = natter_proto::revocation::device_hex(&device_key);
        let admitted = self
            .accounts
            .admit_device(
                &name,
                &device,
                now,
                now.saturating_sub(window.as_secs()),
                self.config.max_devices_per_account,
            )
            .map_err(|e| self.internal(e))?;
        if !admitted {
            return Err(Refusal::new(
                RefusalCode::NotAuthorized,
                format!(
                    "{name} already has {} devices signed in; a new one can sign in once one of them has been off for {} h",
                    self.config.max_devices_per_account,
                    window.as_secs().div_ceil(3600)
                ),
            ));
        }
        let serial = self.accounts.next_serial().map_err(|e| self.internal(e))?;
        let cert = self
            .issuer
            .issue(
                name,
                device_key,
                serial,
                now,
                self.config.cert_lifetime.as_secs(),
            )
            .map_err(|e| self.internal(crate::Error::Internal(e.to_string())))?;
        let registry = lock(&self.registry);
        let now = Instant::now();
        Ok(LoginResponse::Issued {
            cert,
            issuer_key: self.issuer.public(),
            superpeers: registry.bootstrap(now, Some(&peer)),
            supply: registry.supply(now),
        })
    }

    /// Registers the login server's counters: requests by kind and outcome (logins,
    /// registrations, renewals, refusals) and live superpeers.
    pub fn register_metrics(
        self: &std::sync::Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register(
            "natter_login_requests",
            "Login protocol requests by kind and outcome",
            self.requests.clone(),
        );
        registry.register(
            "natter_login_dial_backs",
            "Checks of announced superpeers by outcome: reached (listed), unreached, dropped",
            self.dial_backs.clone(),
        );
        let live = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        registry.register(
            "natter_login_live_superpeers",
            "Superpeers in bootstrap lists: announced within their TTL and reached back \
             (sampled every 5 s)",
            live.clone(),
        );
        let service = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("metrics-sampler".into())
            .spawn(move || {
                while let Some(service) = service.upgrade() {
                    live.set(service.live_superpeers() as i64);
                    drop(service);
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
            })
            .ok();
    }

    /// Superpeers bootstrap lists are drawn from: announced within their TTL and reached
    /// back.
    pub fn live_superpeers(&self) -> usize {
        lock(&self.registry).listed_count(Instant::now())
    }

    /// Does a bootstrap list drawn now include `peer`?
    pub fn lists(&self, peer: &PeerId) -> bool {
        lock(&self.registry).is_listed(peer, Instant::now())
    }

    /// The supply bootstrap answers carry now (what promotion by need decides on).
    pub fn supply(&self) -> natter_proto::login::Supply {
        lock(&self.registry).supply(Instant::now())
    }
}

/// The raw ed25519 key behind a PeerId. Ed25519 PeerIds inline the public key (identity
/// multihash), so the key is recovered without any extra exchange.
pub fn device_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let mh = multihash_bytes(peer)?;
    let public = libp2p::identity::PublicKey::try_decode_protobuf(&mh).ok()?;
    public.try_into_ed25519().ok().map(|k| k.to_bytes())
}

fn multihash_bytes(peer: &PeerId) -> Option<Vec<u8>> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // 0x00 = identity hash: the digest is the protobuf-encoded public key itself.
    (mh.code() == 0x00).then(|| mh.digest().to_vec())
}

fn name_taken(name: &UserName) -> Refusal {
    Refusal::new(
        RefusalCode::NameTaken,
        format!("the name {name} is already taken"),
    )
}

fn unknown_user(name: &UserName) -> Refusal {
    Refusal::new(RefusalCode::UnknownUser, format!("no user named {name}"))
}

fn disabled(name: &UserName) -> Refusal {
    Refusal::new(
        RefusalCode::AccountDisabled,
        format!("the account {name} is disabled"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Limit;

    fn service(dir: &tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> Service {
        let mut config = Config::new(dir.path());
        tune(&mut config);
        let accounts = Accounts::open(dir.path()).unwrap();
        Service::new(accounts, IssuerSigningKey::from_bytes(&[7; 32]), config)
    }

    fn from(ip: &str) -> Caller {
        let key = libp2p::identity::Keypair::generate_ed25519();
        Caller {
            peer: key.public().to_peer_id(),
            ip: Some(ip.parse().unwrap()),
        }
    }

    fn login(s: &Service, name: &str, password: &str, caller: Caller) -> LoginResponse {
        let request = LoginRequest::Login {
            name: name.into(),
            password: Password::new(password),
        };
        s.handle(request, caller).0
    }

    fn code(r: &LoginResponse) -> Option<RefusalCode> {
        match r {
            LoginResponse::Refused(refusal) => Some(refusal.code),
            _ => None,
        }
    }

    fn register(s: &Service, name: &str, caller: Caller) {
        let request = LoginRequest::Register {
            name: name.into(),
            password: Password::new("password1"),
        };
        assert_eq!(code(&s.handle(request, caller).0), None);
    }

    fn issued(r: LoginResponse) -> Certificate {
        match r {
            LoginResponse::Issued { cert, .. } => cert,
            other => panic!("not issued: {other:?}"),
        }
    }

    fn revocations(s: &Service, since: u64) -> Option<Revocations> {
        match s
            .handle(LoginRequest::Revocations { since }, from("192.0.2.9"))
            .0
        {
            LoginResponse::Revocations { list } => list.map(|l| l.verify(&s.issuer_key()).unwrap()),
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn a_disabled_account_and_a_revoked_device_are_in_the_signed_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |_| {});
        let (alice, mallory) = (from("192.0.2.1"), from("192.0.2.2"));
        register(&s, "alice", alice);
        register(&s, "mallory", mallory);
        let alice_cert = issued(login(&s, "alice", "password1", alice));
        let mallory_cert = issued(login(&s, "mallory", "password1", mallory));
        let first = revocations(&s, 0).expect("a list");
        assert!(first.is_empty());
        // Nothing new for whoever holds it.
        assert!(revocations(&s, first.issued_at()).is_none());

        // The operator, in another process, while the server runs.
        let db = Accounts::open(dir.path()).unwrap();
        let now = unix_now();
        let name = |n| UserName::parse(n).unwrap();
        assert!(db.set_disabled(&name("mallory"), true, now).unwrap());
        let device = natter_proto::revocation::device_hex(&alice_cert.device_key());
        assert!(db.revoke_device(&name("alice"), &device, now).unwrap());
        // Served from the cache for a moment, then read again.
        s.revocations.expire();
        let list = revocations(&s, first.issued_at()).expect("a newer list");
        assert!(list.issued_at() > first.issued_at());
        assert!(list.revokes(&mallory_cert));
        assert!(list.revokes(&alice_cert));

        // A revoked device cannot renew its way out of the list.
        let renew = LoginRequest::Renew { cert: alice_cert };
        assert_eq!(
            code(&s.handle(renew, alice).0),
            Some(RefusalCode::NotAuthorized)
        );
        // Its owner can log in on it again: the new certificate is not revoked.
        let fresh = {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            issued(login(&s, "alice", "password1", alice))
        };
        assert!(!list.revokes(&fresh));
    }

    #[test]
    fn guesses_from_elsewhere_do_not_lock_the_owner_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |_| {});
        register(&s, "alice", from("192.0.2.1"));
        let burst = s.config.name_limit.burst;
        for _ in 0..burst {
            let r = login(&s, "alice", "guess", from("198.51.100.7"));
            assert_eq!(code(&r), Some(RefusalCode::WrongPassword));
        }
        let r = login(&s, "alice", "guess", from("198.51.100.7"));
        assert_eq!(code(&r), Some(RefusalCode::RateLimited));
        // The owner, from her own address, with her password.
        let r = login(&s, "alice", "password1", from("192.0.2.1"));
        assert_eq!(code(&r), None, "{r:?}");
    }

    #[test]
    fn one_ipv6_64_is_one_address_for_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |c| {
            c.ip_limit = Limit {
                burst: 2,
                refill: std::time::Duration::from_secs(3600),
            }
        });
        for ip in ["2001:db8::1", "2001:db8::2:3"] {
            let r = login(&s, "nobody", "x", from(ip));
            assert_eq!(code(&r), Some(RefusalCode::UnknownUser));
        }
        let r = login(&s, "nobody", "x", from("2001:db8::ffff:1"));
        assert_eq!(code(&r), Some(RefusalCode::RateLimited));
        // The next /64 is another address.
        let r = login(&s, "nobody", "x", from("2001:db8:0:1::1"));
        assert_eq!(code(&r), Some(RefusalCode::UnknownUser));
        assert_eq!(
            address_key("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn every_request_kind_is_throttled_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |c| {
            c.request_limit = Limit {
                burst: 3,
                refill: std::time::Duration::from_secs(3600),
            }
        });
        let exists = || LoginRequest::Exists {
            name: "alice".into(),
        };
        for _ in 0..3 {
            let (r, _) = s.handle(exists(), from("203.0.113.5"));
            assert_eq!(code(&r), None, "{r:?}");
        }
        let (r, _) = s.handle(exists(), from("203.0.113.5"));
        assert_eq!(code(&r), Some(RefusalCode::RateLimited));
        let (r, _) = s.handle(exists(), from("203.0.113.6"));
        assert_eq!(code(&r), None, "{r:?}");
    }

    #[test]
    fn an_account_has_at_most_its_share_of_devices() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |c| c.max_devices_per_account = 2);
        register(&s, "alice", from("192.0.2.1"));
        let second = from("192.0.2.1");
        assert_eq!(code(&login(&s, "alice", "password1", second)), None);
        let third = login(&s, "alice", "password1", from("192.0.2.1"));
        let LoginResponse::Refused(refusal) = third else {
            panic!("a third device was certified: {third:?}");
        };
        assert_eq!(refusal.code, RefusalCode::NotAuthorized);
        assert!(refusal.message.contains("2 devices"), "{}", refusal.message);
        // A device already counted still signs in; another account is not affected.
        assert_eq!(code(&login(&s, "alice", "password1", second)), None);
        register(&s, "bob", from("192.0.2.1"));
    }

    #[test]
    fn concurrent_wrong_guesses_get_exactly_the_burst() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, |_| {});
        register(&s, "alice", from("192.0.2.1"));
        let caller = from("198.51.100.7");
        let answers: Vec<Option<RefusalCode>> = std::thread::scope(|scope| {
            let guesses: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| code(&login(&s, "alice", "guess", caller))))
                .collect();
            guesses.into_iter().map(|g| g.join().unwrap()).collect()
        });
        let wrong = answers
            .iter()
            .filter(|c| **c == Some(RefusalCode::WrongPassword))
            .count();
        assert_eq!(wrong, s.config.name_limit.burst as usize, "{answers:?}");
    }

    #[test]
    fn device_key_is_recovered_from_ed25519_peer_id() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let expected = key.clone().try_into_ed25519().unwrap().public().to_bytes();
        assert_eq!(device_key_of(&key.public().to_peer_id()), Some(expected));
        assert_eq!(device_key_of(&PeerId::random()), None);
    }
}
