//! Issue 11, item 2, played by the attacker against a real in-process login server: one
//! account with four devices announces four fake superpeers claiming no load and unlimited
//! capacity, next to one honest superpeer. A fresh node's bootstrap list must hold the honest
//! superpeer, at most one superpeer of the attacker's account, and none of the addresses
//! nobody (or somebody else) answers on.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use natter_node::LoginClient;
use natter_proto::login::{LoginRequest, LoginResponse, Password, SuperpeerInfo};
use natter_proto::{Certificate, UserName};
use natter_tests::{Listener, LoginServer, loopback_config};

fn name(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn pw() -> Password {
    Password::new("password1")
}

/// A loopback TCP port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

async fn announce(
    client: &LoginClient,
    cert: &Certificate,
    addrs: Vec<String>,
    leaves: u32,
    capacity: u32,
) {
    let response = client
        .request(LoginRequest::Announce {
            cert: cert.clone(),
            addrs,
            leaves,
            capacity,
        })
        .await
        .unwrap();
    // The wire contract: an announcement with a plausible address is answered at once, before
    // the login server has reached the superpeer back.
    assert!(
        matches!(response, LoginResponse::Announced { .. }),
        "{response:?}"
    );
}

#[tokio::test]
async fn fake_superpeers_of_one_account_do_not_take_over_bootstrap_lists() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;

    // The attacker: one account, four devices, each with its own certificate.
    let devices: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let clients: Vec<LoginClient> = devices
        .iter()
        .map(|k| LoginClient::new(k.clone(), server.addr.clone()).unwrap())
        .collect();
    let mut certs = vec![
        clients[0]
            .register(&name("mallory"), pw())
            .await
            .unwrap()
            .cert,
    ];
    for c in &clients[1..] {
        certs.push(c.login(&name("mallory"), pw()).await.unwrap().cert);
    }
    let mallory: Vec<PeerId> = devices.iter().map(|k| k.public().to_peer_id()).collect();

    // Device 0: a port nobody listens on, plus addresses no one should ever dial.
    let nobody = format!("/ip4/127.0.0.1/tcp/{}", closed_port());
    // Device 1: a real listener, but with another peer id than the device's.
    let decoy = Listener::start(Keypair::generate_ed25519()).await;
    // Devices 2 and 3: real listeners with the devices' own keys: reachable, but one account.
    let reachable_2 = Listener::start(devices[2].clone()).await;
    let reachable_3 = Listener::start(devices[3].clone()).await;
    let fake_addrs = [
        vec![
            nobody.clone(),
            "/ip4/0.0.0.0/tcp/4001".into(),
            format!("{}/p2p/{}/p2p-circuit", decoy.addr, decoy.peer_id),
        ],
        vec![decoy.addr.to_string()],
        vec![reachable_2.addr.to_string()],
        vec![reachable_3.addr.to_string()],
    ];
    for ((client, cert), addrs) in clients.iter().zip(&certs).zip(fake_addrs) {
        announce(client, cert, addrs, 0, u32::MAX).await;
    }

    // The honest superpeer: its own account, a real listener, an honest load.
    let honest_key = Keypair::generate_ed25519();
    let honest_listener = Listener::start(honest_key.clone()).await;
    let honest_client = LoginClient::new(honest_key.clone(), server.addr.clone()).unwrap();
    let honest_cert = honest_client
        .register(&name("honest"), pw())
        .await
        .unwrap()
        .cert;
    announce(
        &honest_client,
        &honest_cert,
        vec![honest_listener.addr.to_string()],
        10,
        100,
    )
    .await;
    let honest = honest_key.public().to_peer_id().to_string();

    // A fresh node logs in; its list fills once the login server has reached the honest
    // superpeer back, which it asks for again by renewing.
    let newbie = LoginClient::new(Keypair::generate_ed25519(), server.addr.clone()).unwrap();
    let mut issued = newbie.register(&name("newbie"), pw()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !issued.superpeers.iter().any(|s| s.peer_id == honest) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the honest superpeer never appeared: {:?}",
            issued.superpeers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        issued = newbie.renew(&issued.cert).await.unwrap();
    }

    // Let every dial-back finish, then look at several lists: from renewals and from a login
    // on a second device.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lists = vec![issued.superpeers.clone()];
    for _ in 0..5 {
        issued = newbie.renew(&issued.cert).await.unwrap();
        lists.push(issued.superpeers.clone());
    }
    let second_device = LoginClient::new(Keypair::generate_ed25519(), server.addr.clone()).unwrap();
    lists.push(
        second_device
            .login(&name("newbie"), pw())
            .await
            .unwrap()
            .superpeers,
    );

    let mallory_ids: HashSet<String> = mallory.iter().map(|p| p.to_string()).collect();
    for list in &lists {
        check_list(list, &honest, &mallory_ids, &mallory, &decoy, &nobody);
    }
    assert!(
        honest_listener.was_dialed(Duration::from_secs(5)).await,
        "the honest superpeer was listed without the login server reaching it"
    );
    // Devices 2 and 3 are both reachable: one of them is listed (the last to announce),
    // never both.
    let last = lists.last().unwrap();
    assert!(
        last.iter().any(|s| s.peer_id == mallory[3].to_string()),
        "the attacker's last reachable device is listed like anyone's: {last:?}"
    );
}

fn check_list(
    list: &[SuperpeerInfo],
    honest: &str,
    mallory_ids: &HashSet<String>,
    mallory: &[PeerId],
    decoy: &Listener,
    nobody: &str,
) {
    assert!(
        list.iter().any(|s| s.peer_id == honest),
        "the honest superpeer is listed: {list:?}"
    );
    let of_mallory: Vec<&SuperpeerInfo> = list
        .iter()
        .filter(|s| mallory_ids.contains(&s.peer_id))
        .collect();
    assert!(
        of_mallory.len() <= 1,
        "at most one superpeer of the attacker's account, got {}: {of_mallory:?}",
        of_mallory.len()
    );
    for unreachable in &mallory[..2] {
        assert!(
            !list.iter().any(|s| s.peer_id == unreachable.to_string()),
            "the fake superpeer {unreachable} (nobody answers as it) is listed: {list:?}"
        );
    }
    for sp in list {
        assert!(sp.capacity < u32::MAX, "capacity is clamped: {sp:?}");
        assert!(sp.leaves <= sp.capacity, "{sp:?}");
        for addr in &sp.addrs {
            assert!(
                !addr.contains("p2p-circuit")
                    && !addr.contains("/0.0.0.0/")
                    && *addr != decoy.addr.to_string()
                    && addr.as_str() != nobody,
                "an address nobody proved is listed: {sp:?}"
            );
        }
    }
}

/// Issue 11, item 6: an account announces a superpeer at another host's address (127.0.0.2,
/// while it connects from 127.0.0.1). Before, the login server dialed any announced address
/// on the announcer's word, internal hosts included; now only the announcer's own IP.
#[tokio::test]
async fn the_login_server_dials_back_only_the_announcers_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start(loopback_config(dir.path())).await;
    let victim = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let target = format!("/ip4/127.0.0.2/tcp/{}", victim.local_addr().unwrap().port());
    let client = LoginClient::new(Keypair::generate_ed25519(), server.addr.clone()).unwrap();
    let cert = client.register(&name("mallory"), pw()).await.unwrap().cert;
    let response = client
        .request(LoginRequest::Announce {
            cert,
            addrs: vec![target],
            leaves: 0,
            capacity: 100,
        })
        .await
        .unwrap();
    let dialed = tokio::time::timeout(Duration::from_secs(5), victim.accept()).await;
    assert!(
        dialed.is_err(),
        "the login server connected to another host ({response:?})"
    );
    assert!(
        matches!(&response, LoginResponse::Refused(r) if r.message.contains("host you connect from")),
        "{response:?}"
    );
}
