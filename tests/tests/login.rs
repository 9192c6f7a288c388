//! The login protocol end to end, in-process over real loopback sockets: registration, login,
//! renewal, refusals, rate limits, restarts.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use libp2p::identity::Keypair;
use natter_login_server::accounts::Accounts;
use natter_login_server::{Limit, Registration, keys};
use natter_node::{LoginClient, LoginError};
use natter_proto::login::{LoginRequest, LoginResponse, Password, RefusalCode};
use natter_proto::{CertError, Certificate, UserName};
use natter_tests::{Listener, LoginServer, loopback_config};

fn name(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn pw(s: &str) -> Password {
    Password::new(s)
}

fn client(server: &LoginServer) -> LoginClient {
    LoginClient::new(Keypair::generate_ed25519(), server.addr.clone()).unwrap()
}

fn now() -> u64 {
    natter_login_server::service::unix_now()
}

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, LoginError>, code: RefusalCode) -> String {
    match result {
        Err(LoginError::Refused(r)) if r.code == code => r.message,
        other => panic!("expected refusal {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn register_login_verify_and_renew_without_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let laptop = client(&server);
    let phone = client(&server);

    let first = laptop
        .register(&name("Alice"), pw("correct horse"))
        .await
        .unwrap();
    assert_eq!(first.cert.username().as_str(), "alice");
    assert_eq!(first.issuer_key, server.issuer_key);
    first.cert.verify(&server.issuer_key, now()).unwrap();

    let second = phone
        .login(&name("alice"), pw("correct horse"))
        .await
        .unwrap();
    second.cert.verify(&server.issuer_key, now()).unwrap();
    assert_ne!(
        first.cert.peer_id(),
        second.cert.peer_id(),
        "one certificate per device"
    );

    let renewed = laptop.renew(&first.cert).await.unwrap();
    renewed.cert.verify(&server.issuer_key, now()).unwrap();
    assert_eq!(renewed.cert.peer_id(), first.cert.peer_id());
    assert!(renewed.cert.serial() > second.cert.serial());

    // A certificate is only renewed for the device it names.
    let msg = refused(phone.renew(&first.cert).await, RefusalCode::NotAuthorized);
    assert!(msg.contains("another device"), "{msg}");

    assert!(laptop.exists(&name("alice")).await.unwrap());
    assert!(!laptop.exists(&name("nobody")).await.unwrap());
}

#[tokio::test]
async fn disabled_account_can_neither_log_in_nor_renew() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let device = client(&server);
    let issued = device
        .register(&name("bob"), pw("password1"))
        .await
        .unwrap();

    // The operator disables the account while the server runs, as `natter-login user disable`.
    assert!(
        Accounts::open(dir.path())
            .unwrap()
            .set_disabled(&name("bob"), true, natter_login_server::service::unix_now())
            .unwrap()
    );

    let msg = refused(
        device.renew(&issued.cert).await,
        RefusalCode::AccountDisabled,
    );
    assert!(msg.contains("disabled"), "{msg}");
    refused(
        device.login(&name("bob"), pw("password1")).await,
        RefusalCode::AccountDisabled,
    );
}

#[tokio::test]
async fn expired_and_tampered_certificates_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path());
    config.renew_grace = Duration::from_secs(60);
    let server = LoginServer::start(config).await;
    let key = Keypair::generate_ed25519();
    let device = LoginClient::new(key.clone(), server.addr.clone()).unwrap();
    let issued = device
        .register(&name("carol"), pw("password1"))
        .await
        .unwrap();

    // A certificate signed by the real issuer key, expired longer ago than the grace window.
    let issuer = keys::load_or_create_issuer_key(dir.path()).unwrap();
    let device_key = key.clone().try_into_ed25519().unwrap().public().to_bytes();
    let expired = issuer
        .issue(name("carol"), device_key, 999, now() - 7200, 3600)
        .unwrap();
    assert!(matches!(
        expired.verify(&server.issuer_key, now()),
        Err(CertError::Expired { .. })
    ));
    let msg = refused(
        device.renew(&expired).await,
        RefusalCode::InvalidCertificate,
    );
    assert!(msg.contains("expired"), "{msg}");

    // Expired within the grace window: renewable without a password.
    let recent = issuer
        .issue(name("carol"), device_key, 1000, now() - 3630, 3600)
        .unwrap();
    device.renew(&recent).await.unwrap();

    // One flipped bit in the signature.
    let mut bytes = issued.cert.to_bytes();
    *bytes.last_mut().unwrap() ^= 0x01;
    let tampered = Certificate::from_bytes(&bytes).unwrap();
    assert_eq!(
        tampered.verify(&server.issuer_key, now()),
        Err(CertError::BadSignature)
    );
    let msg = refused(
        device.renew(&tampered).await,
        RefusalCode::InvalidCertificate,
    );
    assert!(msg.contains("signature"), "{msg}");

    // A certificate of another login server.
    let other = natter_proto::IssuerSigningKey::from_bytes(&[9; 32])
        .issue(name("carol"), device_key, 1, now(), 3600)
        .unwrap();
    refused(device.renew(&other).await, RefusalCode::InvalidCertificate);
}

#[tokio::test]
async fn each_bad_input_gets_its_clear_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let c = client(&server);
    c.register(&name("dave"), pw("password1")).await.unwrap();

    let msg = refused(
        client(&server)
            .register(&name("DAVE"), pw("password2"))
            .await,
        RefusalCode::NameTaken,
    );
    assert_eq!(msg, "the name dave is already taken");
    let msg = refused(
        c.login(&name("dave"), pw("password2")).await,
        RefusalCode::WrongPassword,
    );
    assert_eq!(msg, "wrong password for dave");
    let msg = refused(
        c.login(&name("erin"), pw("password1")).await,
        RefusalCode::UnknownUser,
    );
    assert_eq!(msg, "no user named erin");
    let msg = refused(
        c.register(&name("frank"), pw("short")).await,
        RefusalCode::InvalidPassword,
    );
    assert!(msg.contains("too short"), "{msg}");

    // A name the client did not validate still gets a precise answer from the server.
    let raw = c
        .request(LoginRequest::Register {
            name: "9lives".into(),
            password: pw("password1"),
        })
        .await
        .unwrap();
    match raw {
        LoginResponse::Refused(r) => {
            assert_eq!(r.code, RefusalCode::InvalidName);
            assert!(r.message.contains("start with a letter"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }

    // An oversized request is cut off at the size limit; the server keeps serving.
    let huge = c
        .request(LoginRequest::Login {
            name: "dave".into(),
            password: pw(&"x".repeat(64 * 1024)),
        })
        .await;
    assert!(
        !matches!(huge, Ok(LoginResponse::Issued { .. })),
        "{huge:?}"
    );
    c.login(&name("dave"), pw("password1")).await.unwrap();
}

#[tokio::test]
async fn unreachable_server_and_wrong_address_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let addr = server.addr.clone();
    server.stop().await;
    let c = LoginClient::new(Keypair::generate_ed25519(), addr)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let err = c.login(&name("dave"), pw("password1")).await.unwrap_err();
    assert!(matches!(err, LoginError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");

    let err = LoginClient::new(
        Keypair::generate_ed25519(),
        "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(err, LoginError::AddressWithoutPeerId(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn closed_registration_refuses_but_operator_accounts_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path());
    config.registration = Registration::Closed;
    let server = LoginServer::start(config).await;
    let c = client(&server);
    refused(
        c.register(&name("gina"), pw("password1")).await,
        RefusalCode::RegistrationClosed,
    );

    let db = Accounts::open(dir.path()).unwrap();
    let hash = natter_login_server::accounts::hash_password(&pw("password1")).unwrap();
    assert!(db.create(&name("gina"), &hash, now()).unwrap());
    c.login(&name("gina"), pw("password1")).await.unwrap();
}

#[tokio::test]
async fn rate_limits_trigger_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path());
    config.ip_limit = Limit {
        burst: 4,
        refill: Duration::from_secs(2),
    };
    config.name_limit = Limit {
        burst: 2,
        refill: Duration::from_secs(2),
    };
    let server = LoginServer::start(config).await;
    let c = client(&server);
    c.register(&name("hank"), pw("password1")).await.unwrap();

    // Per name: two failures, then even the right password waits.
    refused(
        c.login(&name("hank"), pw("wrong-pass")).await,
        RefusalCode::WrongPassword,
    );
    refused(
        c.login(&name("hank"), pw("wrong-pass")).await,
        RefusalCode::WrongPassword,
    );
    match c.login(&name("hank"), pw("password1")).await {
        Err(LoginError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::RateLimited);
            let secs = r.retry_after_secs.expect("retry hint");
            assert!((1..=2).contains(&secs), "{secs}");
            assert_eq!(r.message, format!("rate limited, retry in {secs} s"));
        }
        other => panic!("{other:?}"),
    }
    // Per IP: the burst of 4 attempts is now spent.
    refused(
        client(&server).login(&name("zed"), pw("password1")).await,
        RefusalCode::RateLimited,
    );

    // Both recover once the retry time has passed.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    c.login(&name("hank"), pw("password1")).await.unwrap();
}

#[tokio::test]
async fn restart_keeps_accounts_peer_id_and_issuer_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let (peer_id, issuer_key) = (server.peer_id, server.issuer_key);
    let key = Keypair::generate_ed25519();
    let c = LoginClient::new(key.clone(), server.addr.clone()).unwrap();
    let issued = c.register(&name("ivan"), pw("password1")).await.unwrap();
    server.stop().await;

    let server = LoginServer::start(loopback_config(dir.path())).await;
    assert_eq!(server.peer_id, peer_id);
    assert_eq!(server.issuer_key, issuer_key);
    let c = LoginClient::new(key, server.addr.clone()).unwrap();
    c.login(&name("ivan"), pw("password1")).await.unwrap();
    let renewed = c.renew(&issued.cert).await.unwrap();
    assert!(
        renewed.cert.serial() > issued.cert.serial(),
        "serials never repeat"
    );
    refused(
        client(&server)
            .register(&name("ivan"), pw("password1"))
            .await,
        RefusalCode::NameTaken,
    );
}

#[tokio::test]
async fn superpeers_announce_and_appear_in_bootstrap_lists() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let sp_key = Keypair::generate_ed25519();
    // The superpeer really listens (with its own key), so the login server can reach it back.
    let listener = Listener::start(sp_key.clone()).await;
    let sp = LoginClient::new(sp_key.clone(), server.addr.clone()).unwrap();
    let sp_cert = sp
        .register(&name("seed"), pw("password1"))
        .await
        .unwrap()
        .cert;
    // Next to its real address, one nobody answers on (TEST-NET-1) and one never dialed.
    let announce = LoginRequest::Announce {
        cert: sp_cert.clone(),
        addrs: vec![
            "/ip4/192.0.2.1/tcp/4001".into(),
            listener.addr.to_string(),
            "/ip4/0.0.0.0/tcp/4001".into(),
        ],
        leaves: 3,
        capacity: 100,
    };
    assert!(matches!(
        sp.request(announce.clone()).await.unwrap(),
        LoginResponse::Announced {
            refresh_secs: 60,
            ..
        }
    ));

    // Listed once the login server has reached it, with only the address that answered.
    let user = client(&server);
    let mut issued = user.register(&name("judy"), pw("password1")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while issued.superpeers.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the superpeer was never listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        issued = user.renew(&issued.cert).await.unwrap();
    }
    assert!(
        listener.was_dialed(Duration::from_secs(5)).await,
        "listed without being reached back"
    );
    assert_eq!(issued.superpeers.len(), 1);
    assert_eq!(
        issued.superpeers[0].peer_id,
        sp_key.public().to_peer_id().to_string()
    );
    assert_eq!(issued.superpeers[0].addrs, vec![listener.addr.to_string()]);
    assert_eq!(
        (issued.superpeers[0].leaves, issued.superpeers[0].capacity),
        (3, 100)
    );

    // Someone else's certificate cannot announce, nor can garbage addresses, nor addresses
    // that cannot be dialed back.
    match user.request(announce).await.unwrap() {
        LoginResponse::Refused(r) => assert_eq!(r.code, RefusalCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    for addrs in [
        vec!["not an address".to_string()],
        vec![
            "/ip4/0.0.0.0/tcp/4001".into(),
            format!("{}/p2p-circuit", server.addr),
        ],
    ] {
        let bad = LoginRequest::Announce {
            cert: sp_cert.clone(),
            addrs,
            leaves: 0,
            capacity: 1,
        };
        match sp.request(bad).await.unwrap() {
            LoginResponse::Refused(r) => assert_eq!(r.code, RefusalCode::BadRequest),
            other => panic!("{other:?}"),
        }
    }
}

/// 260 idle TCP sockets from one address (they connect and never start the handshake) used
/// to hold all 256 of the server's pending-connection slots, and nobody else could log in
/// until they timed out. One source address now gets at most 16 of them (issue 12).
#[tokio::test]
async fn idle_sockets_from_one_address_do_not_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let port = server
        .addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    // The attacker's source address is another loopback address than the user's.
    let mut idle = Vec::new();
    for _ in 0..260 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registered = tokio::time::timeout(
        Duration::from_secs(20),
        client(&server).register(&name("ivy"), pw("password1")),
    )
    .await;
    assert!(
        matches!(registered, Ok(Ok(_))),
        "with 260 idle sockets held: {registered:?}"
    );
    drop(idle);
}
