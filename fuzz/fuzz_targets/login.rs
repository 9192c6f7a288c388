//! The login protocol as both ends decode it (JSON, libp2p's request-response json codec):
//!
//! - the server: `LoginRequest`, then the real `login_server::service::Service::handle` for
//!   renew, exists, announce and revocations (certificate checks, address parsing, `dialback::plausible`,
//!   the registry). Register and login go only through their input checks (name and password
//!   rules): their argon2 hash takes tens of milliseconds and would starve the fuzzer.
//! - the client: `LoginResponse`, then what `LoginClient` checks of an issued certificate, the
//!   superpeer lists it learns, and a revocation list a superpeer fetches; and `parse_login_addr`, the `--login` address a user types.

#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p::{Multiaddr, PeerId};
use natter_fuzz::{ALICE, ISSUED_AT, ISSUER_SECRET, NOW, issuer, name, peer, revocations};
use natter_login_server::accounts::Accounts;
use natter_login_server::service::{Caller, Service};
use natter_login_server::{Config, dialback};
use natter_proto::login::{LoginRequest, LoginResponse, SuperpeerInfo};
use natter_proto::{IssuerSigningKey, UserName};

/// One login server per fuzzing process, whose database (in a temporary directory) knows
/// alice, the owner of the fixture certificates.
struct Server {
    service: Service,
    _dir: tempfile::TempDir,
}

thread_local! {
    static SERVER: Server = {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let accounts = Accounts::open(dir.path()).expect("a fresh accounts database");
        accounts
            .create(&name("alice"), "not a password hash: alice never logs in", ISSUED_AT)
            .expect("alice's account");
        let config = Config::new(dir.path());
        Server {
            service: Service::new(accounts, IssuerSigningKey::from_bytes(&ISSUER_SECRET), config),
            _dir: dir,
        }
    };
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<LoginRequest>(data) {
        let again = serde_json::to_vec(&request).expect("requests encode");
        assert_eq!(
            serde_json::from_slice::<LoginRequest>(&again).ok(),
            Some(request.clone())
        );
        serve(request);
    }
    if let Ok(response) = serde_json::from_slice::<LoginResponse>(data) {
        client_checks(response);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(addr) = natter_node::login_client::parse_login_addr(text)
    {
        assert!(natter_node::login_client::server_peer_id(&addr).is_ok());
    }
});

fn serve(request: LoginRequest) {
    let _ = request.kind();
    match &request {
        LoginRequest::Register { name, password } | LoginRequest::Login { name, password } => {
            assert!(Service::is_expensive(&request));
            let _ = UserName::parse(name);
            let _ = password.check();
            let _ = format!("{request:?}");
        }
        // Renew, exists, announce, revocations, bootstrap, withdraw, and whatever cheap
        // request comes next.
        _ => {
            // Alice's device asks, over a connection with no known source address (so the
            // per-address limits never refuse the rest of the run).
            let caller = Caller {
                peer: peer(ALICE),
                ip: None,
            };
            let (response, _dial_back) = SERVER.with(|s| s.service.handle(request, caller));
            let _ = serde_json::to_vec(&response).expect("responses encode");
        }
    }
}

/// `LoginClient::expect_issued`, and the superpeer lists a node learns. Their addresses also
/// go through the server's plausibility rule, which otherwise needs a valid certificate.
fn client_checks(response: LoginResponse) {
    let superpeers: &[SuperpeerInfo] = match &response {
        LoginResponse::Issued {
            cert,
            issuer_key,
            superpeers,
            ..
        } => {
            let _ = cert.verify(issuer_key, NOW);
            let _ = cert.peer_id() == peer(ALICE);
            let _ = cert.username() == &name("alice");
            superpeers
        }
        LoginResponse::Announced { superpeers, .. }
        | LoginResponse::Bootstrap { superpeers, .. } => superpeers,
        // What a superpeer does with the list it fetched (`daemon/revocation.rs`).
        LoginResponse::Revocations { list: Some(list) } => {
            if let Ok(fetched) = list.verify(issuer()) {
                let _ = revocations().clone().update(fetched);
            }
            &[]
        }
        _ => &[],
    };
    for info in superpeers {
        let Ok(id) = info.peer_id.parse::<PeerId>() else {
            continue;
        };
        for addr in &info.addrs {
            if let Ok(addr) = addr.parse::<Multiaddr>() {
                let _ = dialback::plausible(&addr, &id);
            }
        }
    }
}
