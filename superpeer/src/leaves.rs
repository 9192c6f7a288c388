//! The leaves a superpeer serves: admitted only with a valid certificate naming the
//! connection's key, capped, and refused with alternatives when full.

use std::collections::HashMap;

use libp2p::PeerId;
use natter_proto::limits::MAX_LEAVES_PER_ACCOUNT;
use natter_proto::{CertError, Certificate, IssuerKey, PresenceRecord, UserName};

/// One attached leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub user: UserName,
    pub cert: Certificate,
    /// The leaf's newest record, re-published while it stays attached.
    pub record: Option<PresenceRecord>,
}

/// Outcome of an attach request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Already attached: a repeated request is harmless.
    AlreadyAttached,
    Full,
    /// This account already has [`MAX_LEAVES_PER_ACCOUNT`] devices attached here; the device
    /// is sent elsewhere like a leaf finding the table full.
    AccountFull,
    Refused(String),
}

#[derive(Debug)]
pub struct LeafTable {
    capacity: usize,
    leaves: HashMap<PeerId, Leaf>,
    /// Leaves per account, for [`MAX_LEAVES_PER_ACCOUNT`].
    per_account: HashMap<UserName, usize>,
}

impl LeafTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            leaves: HashMap::new(),
            per_account: HashMap::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.leaves.contains_key(peer)
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Leaf> {
        self.leaves.get(peer)
    }

    /// Admits `peer` if `cert` is valid now, names `peer`'s key, and there is room.
    pub fn admit(
        &mut self,
        peer: PeerId,
        cert: &Certificate,
        issuer: &IssuerKey,
        now: u64,
    ) -> Admission {
        if let Err(e) = check_cert(peer, cert, issuer, now) {
            return Admission::Refused(e);
        }
        match self.leaves.get_mut(&peer) {
            Some(leaf) if leaf.user == *cert.username() => {
                leaf.cert = cert.clone();
                return Admission::AlreadyAttached;
            }
            // The device now belongs to another account: admitted afresh, counted for it.
            Some(_) => {
                self.remove(&peer);
            }
            None => {}
        }
        if self.leaves.len() >= self.capacity {
            return Admission::Full;
        }
        let devices = self.per_account.entry(cert.username().clone()).or_insert(0);
        if *devices >= MAX_LEAVES_PER_ACCOUNT {
            return Admission::AccountFull;
        }
        *devices += 1;
        self.leaves.insert(
            peer,
            Leaf {
                user: cert.username().clone(),
                cert: cert.clone(),
                record: None,
            },
        );
        Admission::Admitted
    }

    /// Stores the record a leaf published. The record must be the leaf's own.
    pub fn set_record(&mut self, peer: &PeerId, record: PresenceRecord) -> Result<(), String> {
        let leaf = self
            .leaves
            .get_mut(peer)
            .ok_or_else(|| "not attached".to_string())?;
        if record.body.cert.peer_id() != *peer {
            return Err("record is not this leaf's own".into());
        }
        leaf.cert = record.body.cert.clone();
        leaf.record = Some(record);
        Ok(())
    }

    pub fn remove(&mut self, peer: &PeerId) -> Option<Leaf> {
        let leaf = self.leaves.remove(peer)?;
        if let Some(devices) = self.per_account.get_mut(&leaf.user) {
            *devices -= 1;
            if *devices == 0 {
                self.per_account.remove(&leaf.user);
            }
        }
        Some(leaf)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.leaves.keys()
    }

    /// Removes the leaves whose certificate `revocations` revokes, and names them: they are
    /// to be disconnected.
    pub fn revoked(&mut self, revocations: &natter_proto::Revocations) -> Vec<PeerId> {
        let revoked: Vec<PeerId> = self
            .leaves
            .iter()
            .filter(|(_, l)| revocations.revokes(&l.cert))
            .map(|(p, _)| *p)
            .collect();
        for peer in &revoked {
            self.remove(peer);
        }
        revoked
    }

    /// Leaves whose certificate expired since they attached: they must renew and re-attach.
    pub fn expired(&self, issuer: &IssuerKey, now: u64) -> Vec<PeerId> {
        self.leaves
            .iter()
            .filter(|(_, l)| l.cert.verify(issuer, now).is_err())
            .map(|(p, _)| *p)
            .collect()
    }
}

fn check_cert(
    peer: PeerId,
    cert: &Certificate,
    issuer: &IssuerKey,
    now: u64,
) -> Result<(), String> {
    cert.verify(issuer, now)
        .map_err(|e: CertError| e.to_string())?;
    if cert.peer_id() != peer {
        return Err("certificate was issued to another device".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use natter_proto::IssuerSigningKey;

    const NOW: u64 = 1_800_000_000;

    fn issuer() -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[5; 32])
    }

    fn device(name: &str) -> (PeerId, Certificate) {
        let key = Keypair::generate_ed25519();
        let raw = key.clone().try_into_ed25519().unwrap().public().to_bytes();
        let cert = issuer()
            .issue(UserName::parse(name).unwrap(), raw, 1, NOW - 5, 3600)
            .unwrap();
        (key.public().to_peer_id(), cert)
    }

    #[test]
    fn admits_up_to_capacity_then_full() {
        let mut t = LeafTable::new(2);
        let public = issuer().public();
        let (a, ca) = device("alice");
        let (b, cb) = device("bob");
        let (c, cc) = device("carol");
        assert_eq!(t.admit(a, &ca, &public, NOW), Admission::Admitted);
        assert_eq!(t.admit(a, &ca, &public, NOW), Admission::AlreadyAttached);
        assert_eq!(t.admit(b, &cb, &public, NOW), Admission::Admitted);
        assert_eq!(t.admit(c, &cc, &public, NOW), Admission::Full);
        t.remove(&a);
        assert_eq!(t.admit(c, &cc, &public, NOW), Admission::Admitted);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn one_account_gets_at_most_its_share_of_the_table() {
        let mut t = LeafTable::new(100);
        let public = issuer().public();
        let devices: Vec<_> = (0..=MAX_LEAVES_PER_ACCOUNT)
            .map(|_| device("mallory"))
            .collect();
        for (p, c) in &devices[..MAX_LEAVES_PER_ACCOUNT] {
            assert_eq!(t.admit(*p, c, &public, NOW), Admission::Admitted);
        }
        let (extra, cert) = &devices[MAX_LEAVES_PER_ACCOUNT];
        assert_eq!(t.admit(*extra, cert, &public, NOW), Admission::AccountFull);
        let (b, cb) = device("bob");
        assert_eq!(t.admit(b, &cb, &public, NOW), Admission::Admitted);
        // A device that leaves makes room for another of the account.
        t.remove(&devices[0].0);
        assert_eq!(t.admit(*extra, cert, &public, NOW), Admission::Admitted);
    }

    #[test]
    fn refuses_invalid_or_borrowed_certificates() {
        let mut t = LeafTable::new(10);
        let public = issuer().public();
        let (a, ca) = device("alice");
        let (b, _) = device("bob");
        assert!(
            matches!(t.admit(b, &ca, &public, NOW), Admission::Refused(m) if m.contains("another device"))
        );
        assert!(
            matches!(t.admit(a, &ca, &public, NOW + 7200), Admission::Refused(m) if m.contains("expired"))
        );
        let other = IssuerSigningKey::from_bytes(&[6; 32]).public();
        assert!(matches!(
            t.admit(a, &ca, &other, NOW),
            Admission::Refused(_)
        ));
        assert!(t.is_empty());
        assert_eq!(t.admit(a, &ca, &public, NOW), Admission::Admitted);
        assert_eq!(t.expired(&public, NOW + 7200), vec![a]);
    }
}
