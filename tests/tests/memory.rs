//! Memory before authentication, played by the attacker: throwaway identities (no account,
//! no introduction) open msg streams to a node and stall each one with 1 MiB of a request,
//! which the node must read whole before it can check the sender's certificate. Before the
//! read budget, two identities with 128 streams each took a leaf from 21 MB to 554 MB; now
//! every stalled request together holds at most the budget (32 MiB), and the node still takes
//! an honest message once the stalled streams have timed out.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io;
use std::time::{Duration, Instant};

use futures::prelude::*;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use natter_tests::{TestNet, natter, wait_for};

/// Identities the attacker uses, and stalled requests per identity.
const IDENTITIES: usize = 8;
const STREAMS: usize = 128;
/// What each stalled request sends before it stops: just under the msg request limit.
const STALLED_BYTES: usize = 1024 * 1024;

/// Writes most of a maximal request (JSON whitespace) and never finishes it.
#[derive(Clone, Default)]
struct Staller;

impl request_response::Codec for Staller {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the attacker serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        future::pending().await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&vec![b' '; STALLED_BYTES]).await?;
        io.flush().await?;
        future::pending().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// One throwaway identity: connects to `to` and opens [`STREAMS`] stalled requests, until
/// dropped.
async fn attack(to: PeerId, addr: Multiaddr) {
    let tcp_only = natter_net::TransportConfig {
        quic: None,
        ..Default::default()
    };
    let mut swarm = natter_net::build_swarm(Keypair::generate_ed25519(), &tcp_only, |_| {
        request_response::Behaviour::<Staller>::new(
            [(
                StreamProtocol::new(natter_proto::protocol::MSG),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(120))
                .with_max_concurrent_streams(STREAMS * 2),
        )
    })
    .unwrap();
    swarm.dial(addr).unwrap();
    loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await
            && peer_id == to
        {
            for _ in 0..STREAMS {
                swarm.behaviour_mut().send_request(&to, ());
            }
        }
    }
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn stalled_requests_of_throwaway_identities_hold_a_bounded_amount_of_memory() {
    let net = TestNet::new();
    let seed = net.node("seed", &["--role", "superpeer"]);
    seed.wait_role("superpeer", Duration::from_secs(30));
    let bob = net.node("bob", &["--role", "leaf"]);
    wait_for("bob attached", Duration::from_secs(30), || {
        bob.is_attached().then_some(())
    });
    let (peer, addr) = bob.tcp_endpoint();
    let at_rest = rss(bob.pid());

    let attackers: Vec<_> = (0..IDENTITIES)
        .map(|_| net.rt.spawn(attack(peer, addr.clone())))
        .collect();
    // The attacker sends 1 GiB in all; sample bob's memory while it arrives.
    let started = Instant::now();
    let mut peak = at_rest;
    while started.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss(bob.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "memory: bob at rest {:.1} MiB, peak {:.1} MiB under {IDENTITIES} identities x {STREAMS} \
         stalled 1 MiB requests",
        mib(at_rest),
        mib(peak)
    );
    assert!(
        peak <= 100 * 1024 * 1024,
        "bob peaked at {:.1} MiB (at rest {:.1} MiB)",
        mib(peak),
        mib(at_rest)
    );
    for attacker in attackers {
        attacker.abort();
    }

    // The honest path still works once the stalled streams are gone.
    let out = natter(&seed.home, &["send", "bob", "still here", "--json"], "");
    assert!(out.status.success());
    wait_for("the honest message", Duration::from_secs(60), || {
        let out = natter(&bob.home, &["inbox", "--json"], "");
        String::from_utf8_lossy(&out.stdout)
            .contains("still here")
            .then_some(())
    });
}
