//! The `login` suite: certificate issue and verify, argon2id alone, and password logins and
//! renewals per second through the real login protocol, against the login server running in
//! this process over real loopback sockets (clients are separate swarms).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use natter_login_server::{Limit, accounts};
use natter_node::LoginClient;
use natter_node::login_client::build_swarm;
use natter_proto::login::{LoginRequest, LoginResponse, Password};
use natter_proto::{IssuerSigningKey, UserName};

use super::{How, Mode, Report};
use crate::{LoginServer, loopback_config};

/// Runs the suite on its own runtime.
pub fn run(mode: Mode) -> anyhow::Result<Report> {
    tokio::runtime::Runtime::new()?.block_on(login_suite(mode))
}

async fn login_suite(mode: Mode) -> anyhow::Result<Report> {
    let window = mode.pick(
        Duration::from_millis(300),
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut report = Report::default();

    // Pure CPU, one core: the cost of the signature work itself.
    let issuer = IssuerSigningKey::from_bytes(&rand::random());
    let device = Keypair::generate_ed25519()
        .try_into_ed25519()
        .expect("ed25519")
        .public()
        .to_bytes();
    let name = UserName::parse("bench")?;
    let issue = per_second(window / 2, || {
        issuer
            .issue(name.clone(), device, 1, 1_800_000_000, 86_400)
            .map(|_| ())
            .map_err(anyhow::Error::from)
    })?;
    let cert = issuer.issue(name.clone(), device, 1, 1_800_000_000, 86_400)?;
    let public = issuer.public();
    let verify = per_second(window / 2, || {
        cert.verify(&public, 1_800_000_001)
            .map_err(anyhow::Error::from)
    })?;
    report.add(
        "login.cert.issue",
        "certificate issue, 1 core",
        issue,
        "ops/s",
        0,
        How::Local,
    );
    report.add(
        "login.cert.verify",
        "certificate verify, 1 core",
        verify,
        "ops/s",
        0,
        How::Local,
    );

    // Floor for logins: argon2id alone, same parameters, on every core.
    let password = Password::new("correct horse battery");
    let phc = accounts::hash_password(&password)?;
    let argon_alone = parallel_per_second(cores, window, {
        let (password, phc) = (password.clone(), phc.clone());
        move || {
            assert!(accounts::verify_password(&password, &phc));
        }
    });
    report.add(
        "login.floor.argon2",
        &format!("floor: argon2id verify alone, {cores} threads"),
        argon_alone,
        "ops/s",
        0,
        How::Local,
    );

    // The real server on loopback, rate limits lifted (they would measure the limiter).
    let dir = tempfile::tempdir()?;
    let mut config = loopback_config(dir.path());
    let generous = Limit {
        burst: u32::MAX,
        refill: Duration::from_nanos(1),
    };
    config.ip_limit = generous;
    config.name_limit = generous;
    config.request_limit = generous;
    config.max_inflight = 4096;
    let server = LoginServer::start(config).await;

    let clients = 4;
    let depth = 16;
    let mut certs = Vec::new();
    for i in 0..clients {
        let key = Keypair::generate_ed25519();
        let user = UserName::parse(&format!("bench{i}"))?;
        let issued = LoginClient::new(key.clone(), server.addr.clone())?
            .register(&user, password.clone())
            .await?;
        certs.push((key, user, issued.cert));
    }

    let logins = load(&server, &certs, clients, cores.max(2), window, {
        let password = password.clone();
        move |_, user, _| LoginRequest::Login {
            name: user.to_string(),
            password: password.clone(),
        }
    })
    .await?;
    report.add(
        "login.logins",
        "password logins through the protocol",
        logins,
        "logins/s",
        0,
        How::InProcess,
    );
    report.floor("login.logins", "login.floor.argon2");
    report.target("login.logins", "within 10% of argon2id alone", |v, f| {
        f.is_some_and(|f| v >= 0.9 * f)
    });

    let renewals = load(&server, &certs, clients, depth, window, |_, _, cert| {
        LoginRequest::Renew { cert: cert.clone() }
    })
    .await?;
    report.add(
        "login.renewals",
        &format!("renewals, {clients} connections x {depth} in flight"),
        renewals,
        "renew/s",
        0,
        How::InProcess,
    );
    report.floor("login.renewals", "login.cert.issue");
    report.target("login.renewals", ">= 5,000 renewals/s", |v, _| v >= 5000.0);

    // What a one-shot CLI command pays: a fresh connection (TCP + Noise + Yamux) per renewal.
    let (key, _, cert) = &certs[0];
    let one_shot = LoginClient::new(key.clone(), server.addr.clone())?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window / 2 {
        one_shot.renew(cert).await?;
        n += 1;
    }
    report.add(
        "login.renewals.oneshot",
        "renewals, new connection each, sequential",
        n as f64 / start.elapsed().as_secs_f64(),
        "renew/s",
        n,
        How::InProcess,
    );
    server.stop().await;
    Ok(report)
}

fn per_second(window: Duration, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            op()?;
        }
        n += 64;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn parallel_per_second(
    threads: usize,
    window: Duration,
    op: impl Fn() + Send + Sync + 'static,
) -> f64 {
    let op = Arc::new(op);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (op, count, stop) = (op.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

type Cred = (Keypair, UserName, natter_proto::Certificate);

/// Keeps `depth` requests in flight on each of `clients` persistent connections for `window`
/// and returns completed (successful) requests per second.
async fn load(
    server: &LoginServer,
    creds: &[Cred],
    clients: usize,
    depth: usize,
    window: Duration,
    make: impl Fn(&Keypair, &UserName, &natter_proto::Certificate) -> LoginRequest
    + Clone
    + Send
    + 'static,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for (key, user, cert) in creds.iter().take(clients) {
        let (key, user, cert) = (key.clone(), user.clone(), cert.clone());
        let addr = server.addr.clone();
        let peer = server.peer_id;
        let make = make.clone();
        tasks.spawn(async move {
            let mut swarm = build_swarm(key.clone())?;
            swarm.dial(addr)?;
            let mut done = 0u64;
            let mut in_flight = 0usize;
            let mut connected = false;
            loop {
                if connected && tokio::time::Instant::now() < deadline {
                    while in_flight < depth {
                        swarm
                            .behaviour_mut()
                            .send_request(&peer, make(&key, &user, &cert));
                        in_flight += 1;
                    }
                } else if connected && in_flight == 0 {
                    return anyhow::Ok(done);
                }
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => connected = true,
                    SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial: {error}"),
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => {
                        in_flight -= 1;
                        match response {
                            LoginResponse::Issued { .. } => done += 1,
                            other => bail!("unexpected answer under load: {other:?}"),
                        }
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        error,
                        ..
                    }) => {
                        bail!("request failed under load: {error}")
                    }
                    _ => {}
                }
            }
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
