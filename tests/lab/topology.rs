//! The lab's network: one public network (a datacenter router without NAT) holding the login
//! server and three public nodes, and users behind the NATs Natter must cope with.
//!
//! ```text
//!                        IX (198.18.0.0/24, "the internet")
//!   ┌─────────────┬────────────┼─────────────┬──────────────────┐
//!   dc (public)   home-a       home-b        carrier            isp (CGNAT, EIM+APDF)
//!   │             (home NAT)   (home NAT)    (symmetric NAT)    │ 100.64.0.0/24
//!   login         alice        bob           carol              home-c (home NAT)
//!   public1..3                                                  dave
//! ```
//!
//! Home NAT is patchbay's `RouterPreset::Home` (endpoint-independent mapping, port-restricted
//! filtering, unsolicited inbound blocked); the symmetric NAT is `IspCgnatSymmetric`
//! (endpoint-dependent mapping with random ports, as mobile carriers do); the CGNAT is
//! `IspCgnat` with the RFC 6598 shared address space on its subscriber side. Every router is
//! IPv4 only: with IPv6 the peers would bypass the NATs under test. No link conditions: the
//! kernel here has no netem qdisc.
//!
//! Every NAT router also drops unsolicited packets arriving on its WAN side in its *input*
//! chain, as real home routers do (DESIGN.md, Lab facts). patchbay filters only the forward
//! chain: an early hole-punch packet for a port the router has not mapped yet would otherwise
//! reach the router itself, conntrack would confirm that flow, and the NAT would then pick a
//! different port for the peer's own outbound packet.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use patchbay::{Device, IpSupport, Ipv4Net, Lab, Router, RouterPreset};

use crate::{prereq, runner};

/// Loading a rule set takes milliseconds; anything near this is a hung `nft`.
pub(crate) const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of network a host sits in; what the report calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    Public,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    HomeNat,
    /// Endpoint-dependent mapping with random ports.
    SymmetricNat,
    /// A home NAT whose WAN side is behind the ISP's carrier-grade NAT.
    CgnatAndHomeNat,
}

impl Network {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Network::Public => "public",
            Network::HomeNat => "home NAT (EIM, port-restricted)",
            Network::SymmetricNat => "symmetric NAT (EDM, random ports)",
            Network::CgnatAndHomeNat => "CGNAT (EIM) + home NAT",
        }
    }

    /// Whether the outermost NAT keeps one external port for every destination.
    pub(crate) fn endpoint_independent(self) -> bool {
        matches!(self, Network::HomeNat | Network::CgnatAndHomeNat)
    }
}

/// A machine with one user of Natter on it.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// Device name in the lab, also the Natter user name of the person using it.
    pub(crate) name: &'static str,
    pub(crate) network: Network,
    pub(crate) device: Device,
    /// The router whose WAN side faces the internet (the IX); `None` for public hosts.
    pub(crate) outer_router: Option<Router>,
}

impl Host {
    pub(crate) fn ip(&self) -> anyhow::Result<Ipv4Addr> {
        self.device
            .ip()
            .with_context(|| format!("{} has no IPv4 address", self.name))
    }

    /// The address the internet sees this host's packets come from.
    pub(crate) fn public_ip(&self) -> anyhow::Result<Ipv4Addr> {
        match &self.outer_router {
            None => self.ip(),
            Some(r) => r
                .uplink_ip()
                .with_context(|| format!("router {} has no uplink address", r.name())),
        }
    }
}

/// The built lab. Dropping it removes every namespace.
pub(crate) struct Topology {
    /// Keeps the namespaces alive.
    pub(crate) _lab: Lab,
    /// The public host of the login server.
    pub(crate) login: Device,
    /// Public hosts first, then the users behind NAT.
    pub(crate) hosts: Vec<Host>,
}

impl Topology {
    pub(crate) fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name} in the lab"))
    }
}

/// Names of the three public nodes (future superpeers).
pub(crate) const PUBLIC_HOSTS: [&str; 3] = ["public1", "public2", "public3"];

pub(crate) async fn build(lab: Lab) -> anyhow::Result<Topology> {
    let dc = lab
        .add_router("dc")
        .preset(RouterPreset::PublicV4)
        .build()
        .await?;
    let login = lab.add_device("login").uplink(dc.id()).build().await?;
    let mut hosts = Vec::new();
    for name in PUBLIC_HOSTS {
        let device = lab.add_device(name).uplink(dc.id()).build().await?;
        hosts.push(Host {
            name,
            network: Network::Public,
            device,
            outer_router: None,
        });
    }

    for (router, user) in [("home-a", "alice"), ("home-b", "bob")] {
        let home = nat_router(&lab, router, RouterPreset::Home).build().await?;
        guard_wan_input(&home).await?;
        let device = lab.add_device(user).uplink(home.id()).build().await?;
        hosts.push(Host {
            name: user,
            network: Network::HomeNat,
            device,
            outer_router: Some(home),
        });
    }

    let carrier = nat_router(&lab, "carrier", RouterPreset::IspCgnatSymmetric)
        .build()
        .await?;
    guard_wan_input(&carrier).await?;
    let device = lab.add_device("carol").uplink(carrier.id()).build().await?;
    hosts.push(Host {
        name: "carol",
        network: Network::SymmetricNat,
        device,
        outer_router: Some(carrier),
    });

    let shared: Ipv4Net = "100.64.0.0/24".parse().context("RFC 6598 prefix")?;
    let isp = nat_router(&lab, "isp", RouterPreset::IspCgnat)
        .downstream_cidr(shared)
        .build()
        .await?;
    guard_wan_input(&isp).await?;
    let home_c = nat_router(&lab, "home-c", RouterPreset::Home)
        .upstream(isp.id())
        .build()
        .await?;
    guard_wan_input(&home_c).await?;
    let behind_cgnat = home_c.uplink_ip().context("home-c has no uplink address")?;
    ensure!(
        shared.contains(&behind_cgnat),
        "home-c's WAN address {behind_cgnat} is not in the CGNAT's {shared}"
    );
    let device = lab.add_device("dave").uplink(home_c.id()).build().await?;
    hosts.push(Host {
        name: "dave",
        network: Network::CgnatAndHomeNat,
        device,
        outer_router: Some(isp),
    });

    Ok(Topology {
        _lab: lab,
        login,
        hosts,
    })
}

fn nat_router(lab: &Lab, name: &str, preset: RouterPreset) -> patchbay::RouterBuilder {
    lab.add_router(name)
        .preset(preset)
        .ip_support(IpSupport::V4Only)
}

/// Drops packets that arrive on the router's WAN interface for the router itself unless they
/// belong to a flow it started: nothing unsolicited is confirmed in conntrack on the router.
async fn guard_wan_input(router: &Router) -> anyhow::Result<()> {
    // patchbay lists the WAN interface ("ix" or "wan") first.
    let wan = router
        .interfaces()
        .first()
        .map(|i| i.name().to_owned())
        .with_context(|| format!("router {} has no interfaces", router.name()))?;
    let rules = format!(
        "table ip natter_wan_guard {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter; policy accept;\n\
         \x20       iif \"{wan}\" ct state established,related accept\n\
         \x20       iif \"{wan}\" drop\n\
         \x20   }}\n\
         }}\n"
    );
    let nft = prereq::nft_program().context("nft not found")?;
    runner::run(
        |cmd| router.spawn_command(cmd),
        &nft,
        &["-f".as_ref(), "-".as_ref()],
        &rules,
        NFT_TIMEOUT,
    )
    .await?
    .success(&format!("nft on router {}", router.name()))?;
    Ok(())
}
