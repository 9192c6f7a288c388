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
mod tests;
