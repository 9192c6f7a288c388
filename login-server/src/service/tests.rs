#![allow(clippy::unwrap_used)]

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
