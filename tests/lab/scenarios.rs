//! What the lab checks about the network and the login server, one scenario per function; the
//! overlay's scenarios are in overlay.rs, messaging and hole punching in messaging.rs, and the
//! faults (a superpeer killed, the login server stopped, a home's link cut) in faults.rs. Each
//! writes what it measured into the report as it goes, so a failure still shows how far it got.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use patchbay::Device;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::nodes::{LoginServer, Net};
use crate::report::Report;
use crate::runner::{self, Daemon};
use crate::topology::{Network, Topology};

/// UDP ports of the probes (plus the host's index, so no two probes share a mapping).
const REFLECTOR_PORT: u16 = 3478;
const STRANGER_PORT: u16 = 3479;
const PROBE_PORT_BASE: u16 = 40100;
const EARLY_PORT_BASE: u16 = 40200;
/// How long an unsolicited packet is given to (wrongly) arrive.
const SILENCE: Duration = Duration::from_millis(300);

/// The routers behave as the report says they do. From each host, one UDP socket asks
/// reflectors on public1 and public2 which address they see:
/// - public hosts are seen at their own address and port;
/// - endpoint-independent NATs show one mapping to both, from the outermost router's address;
/// - the symmetric NAT shows a different port to each.
///
/// Then, for every NATed host, a public host it never contacted (public3) sends to its mapping:
/// nothing may arrive (port-restricted filtering). And for the endpoint-independent NATs, public3
/// first sends an unsolicited packet to the router's address and a port that is not mapped yet,
/// after which the host sends from that very port to public3: the router must keep the port,
/// which it only does when it dropped the early packet in its input chain (the WAN guard).
pub(crate) async fn nat_behaviour(topo: &Topology, report: &mut Report) -> anyhow::Result<()> {
    let [r1, r2, r3] = ["public1", "public2", "public3"].map(|n| topo.host(n));
    let (r1, r2, stranger_host) = (r1?, r2?, r3?);
    let reflectors = [
        SocketAddr::from((r1.ip()?, REFLECTOR_PORT)),
        SocketAddr::from((r2.ip()?, REFLECTOR_PORT)),
    ];
    let _reflectors = [
        r1.device.spawn_reflector(reflectors[0]).await?,
        r2.device.spawn_reflector(reflectors[1]).await?,
    ];
    let stranger = udp_socket(&stranger_host.device, STRANGER_PORT)?;
    let stranger_addr = SocketAddr::from((stranger_host.ip()?, STRANGER_PORT));

    for (i, host) in topo.hosts.iter().enumerate() {
        let offset = u16::try_from(i).context("host index")?;
        let local_port = PROBE_PORT_BASE + offset;
        let sock = udp_socket(&host.device, local_port)?;
        let probing = || format!("probing from {}", host.name);
        let seen = [
            observed(&sock, reflectors[0]).await.with_context(probing)?,
            observed(&sock, reflectors[1]).await.with_context(probing)?,
        ];
        if let Some(row) = report.row(host.name) {
            row.seen = Some(seen);
        }
        let name = host.name;
        let public_ip = host.public_ip()?;
        for s in seen {
            ensure!(
                s.ip() == public_ip,
                "{name} is seen from {}, expected its public address {public_ip}",
                s.ip()
            );
        }
        match host.network {
            Network::Public => ensure!(
                seen.iter().all(|s| s.port() == local_port),
                "{name} is public but its port {local_port} is seen as {seen:?}"
            ),
            Network::HomeNat | Network::CgnatAndHomeNat => ensure!(
                seen[0] == seen[1],
                "{name}: endpoint-independent mapping expected, seen as {seen:?}"
            ),
            Network::SymmetricNat => ensure!(
                seen[0].port() != seen[1].port(),
                "{name}: symmetric NAT expected, but both reflectors see {}",
                seen[0]
            ),
        }
        if host.network == Network::Public {
            continue;
        }

        // Port-restricted filtering: a stranger cannot reach an existing mapping.
        for _ in 0..3 {
            stranger.send_to(b"unsolicited", seen[0]).await?;
        }
        expect_silence(&sock, stranger_addr, SILENCE)
            .await
            .with_context(|| format!("{name}'s NAT let an unsolicited packet in"))?;

        if host.network.endpoint_independent() {
            let port = EARLY_PORT_BASE + offset;
            let early_target = SocketAddr::from((public_ip, port));
            stranger.send_to(b"early punch", early_target).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sock = udp_socket(&host.device, port)?;
            let hello = format!("hello from {name}");
            sock.send_to(hello.as_bytes(), stranger_addr).await?;
            let from = sender_of(&stranger, hello.as_bytes(), Duration::from_secs(2))
                .await
                .with_context(|| format!("{name}'s packet to public3 did not arrive"))?;
            ensure!(
                from == early_target,
                "{name}: after an unsolicited packet to {early_target}, the router mapped \
                 port {port} to {from} (does it drop unsolicited WAN input?)"
            );
        }
    }
    Ok(())
}

/// Registration and login with the real binaries, from every host: `natter-login serve` on the
/// public login host, `natter register` over TCP and `natter login` over QUIC from each user's
/// own namespace, through its NATs. The login server keeps running for the later scenarios.
pub(crate) async fn login(
    topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    const READY_TIMEOUT: Duration = Duration::from_secs(20);
    const CLI_TIMEOUT: Duration = Duration::from_secs(30);
    const PASSWORD: &str = "password1\n";

    let ip = topo.login.ip().context("the login host has no address")?;
    let tcp = format!("/ip4/{ip}/tcp/4747");
    let quic = format!("/ip4/{ip}/udp/4747/quic-v1");
    let data_dir = net.work.join("login-data");
    let args: [&OsStr; 7] = [
        "--data-dir".as_ref(),
        data_dir.as_ref(),
        "serve".as_ref(),
        "--listen".as_ref(),
        tcp.as_ref(),
        "--listen".as_ref(),
        quic.as_ref(),
    ];
    let mut daemon = Daemon::start(
        |cmd| topo.login.spawn_command(cmd),
        "natter-login",
        &net.bins.natter_login,
        &args,
        &net.work,
    )?;
    let mut tcp_addr = None;
    let mut quic_addr = None;
    while tcp_addr.is_none() || quic_addr.is_none() {
        let line = daemon.next_line(READY_TIMEOUT).await?;
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("natter-login printed {line:?}"))?
            .to_owned();
        ensure!(addr.contains("/p2p/12D3Koo"), "no peer id in {addr}");
        if addr.starts_with(&tcp) {
            tcp_addr = Some(addr);
        } else if addr.starts_with(&quic) {
            quic_addr = Some(addr);
        } else {
            bail!("natter-login listens on {addr}, which was not asked for");
        }
    }
    let mut server = LoginServer {
        daemon,
        tcp: tcp_addr.unwrap_or_default(),
        quic: quic_addr.unwrap_or_default(),
    };

    for host in &topo.hosts {
        let name = host.name;
        let home = net.home(name);
        for (command, addr, expect) in [
            ("register", &server.tcp, format!("registered {name};")),
            ("login", &server.quic, format!("logged in as {name};")),
        ] {
            let args: [&OsStr; 6] = [
                "--home".as_ref(),
                home.as_ref(),
                command.as_ref(),
                name.as_ref(),
                "--login".as_ref(),
                addr.as_ref(),
            ];
            let what = format!("natter {command} {name} --login {addr} (on {name})");
            let out = runner::run(
                |cmd| host.device.spawn_command(cmd),
                &net.bins.natter,
                &args,
                PASSWORD,
                CLI_TIMEOUT,
            )
            .await
            .with_context(|| what.clone())?;
            let elapsed = out.elapsed;
            let ok = out.status.success() && out.stdout.starts_with(&expect);
            if !ok {
                bail!(
                    "{what}: {}, expected exit 0 and {expect:?}\n  stdout: {}\n  stderr: {}\n{}",
                    out.status,
                    out.stdout.trim(),
                    out.stderr.trim(),
                    server.daemon.diagnosis()
                );
            }
            if let Some(row) = report.row(name) {
                match command {
                    "register" => row.register = Some(elapsed),
                    _ => row.login = Some(elapsed),
                }
            }
        }
        server.daemon.check_running()?;
    }
    net.login = Some(server);
    Ok(())
}

/// A UDP socket bound to `0.0.0.0:port` inside `device`'s namespace, driven by the lab's
/// runtime (a socket keeps the namespace it was created in).
fn udp_socket(device: &Device, port: u16) -> anyhow::Result<UdpSocket> {
    let sock = device.run_sync(move || {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    })?;
    Ok(UdpSocket::from_std(sock)?)
}

/// Our address as a patchbay reflector sees it (`OBSERVED ip:port`), three tries.
async fn observed(sock: &UdpSocket, reflector: SocketAddr) -> anyhow::Result<SocketAddr> {
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send_to(b"PROBE", reflector).await?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            let (n, from) = got?;
            if from != reflector {
                continue;
            }
            let text = std::str::from_utf8(&buf[..n])?;
            let addr = text
                .strip_prefix("OBSERVED ")
                .with_context(|| format!("reflector said {text:?}"))?;
            return Ok(addr.parse()?);
        }
    }
    bail!("no answer from the reflector at {reflector}")
}

/// Fails if a packet from `from` arrives within `window`; other senders are ignored.
async fn expect_silence(
    sock: &UdpSocket,
    from: SocketAddr,
    window: Duration,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + window;
    while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let (_, sender) = got?;
        if sender == from {
            bail!("a packet from {from} arrived");
        }
    }
    Ok(())
}

/// The sender of the next packet carrying `payload`, within `timeout`.
async fn sender_of(
    sock: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + timeout;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .context("timed out")??;
        if &buf[..n] == payload {
            return Ok(from);
        }
    }
}
