//! `status`, `lookup`, `netcheck`, `set-status`, `down` and `ping`: they need the daemon.

use anyhow::bail;
use natter_node::Home;
use natter_node::control::ControlClient;
use natter_node::daemon::api::{
    ControlRequest, ControlResponse, LookupView, NetcheckView, PingProbe, StatusView,
};
use natter_node::outln;
use natter_node::terminal::escape;
use natter_proto::Status;

use super::{call, connect, parse_name, print_done, unexpected};

pub(crate) async fn status(home: &Home, json: bool) -> anyhow::Result<()> {
    let view: StatusView = match call(home, ControlRequest::Status).await? {
        ControlResponse::Status(v) => v,
        other => return unexpected(other),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    outln!("user:         {}", view.user);
    outln!("peer id:      {}", view.peer_id);
    outln!(
        "role:         {} ({})",
        view.role,
        escape(&view.role_reason)
    );
    outln!("reachability: {}", view.reachability);
    outln!("presence:     {}", view.presence);
    if view.role == "superpeer" {
        outln!("leaves:       {} of {}", view.leaves, view.max_leaves);
    } else {
        let since = |at: Option<u64>| {
            at.map(|ms| format!(" (since {})", super::format_ms(ms)))
                .unwrap_or_default()
        };
        outln!(
            "primary:      {}{}",
            view.primary.as_deref().unwrap_or("none"),
            since(view.primary_since)
        );
        outln!(
            "standby:      {}{}",
            view.standby.as_deref().unwrap_or("none"),
            since(view.standby_since)
        );
        outln!(
            "record held:  {}{}",
            view.home
                .as_deref()
                .map_or("not yet (publishing)", |_| "by the primary"),
            since(view.home_since)
        );
    }
    Ok(())
}

/// What follows "offline" for a user this node has never seen online: a user who signed
/// on moments ago may not be in the directory yet.
pub(crate) const NOT_SEEN_YET: &str = " (not seen online yet; someone who just signed on \
                                       shows up within seconds)";

/// `lookup NAME`: an unknown user is an error (exit 1), after the JSON in `--json` mode.
pub(crate) async fn lookup(home: &Home, name: &str, json: bool) -> anyhow::Result<()> {
    let name = parse_name(name)?;
    let request = ControlRequest::Lookup {
        name: name.to_string(),
    };
    let view: LookupView = match call(home, request).await? {
        ControlResponse::Lookup(v) => v,
        other => return unexpected(other),
    };
    let unknown = view.status == "unknown";
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
    } else if !unknown {
        let seen = match (view.status.as_str(), view.last_seen) {
            ("offline", Some(s)) => format!(
                ", last seen {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
                )
            ),
            ("offline", None) => NOT_SEEN_YET.into(),
            _ => String::new(),
        };
        // A user on several devices: how many, and on how many signed on.
        let devices = match view.devices.len() {
            n if n > 1 => {
                let on = view
                    .devices
                    .iter()
                    .filter(|d| d.status != "offline")
                    .count();
                format!(" ({n} devices, {on} signed on)")
            }
            _ => String::new(),
        };
        outln!(
            "{}: {}{seen}{devices}",
            escape(&view.user),
            escape(&view.status)
        );
    }
    if unknown {
        bail!("unknown user {name}: nobody by that name was found");
    }
    Ok(())
}

pub(crate) async fn netcheck(home: &Home, json: bool) -> anyhow::Result<()> {
    let view: NetcheckView = match call(home, ControlRequest::Netcheck).await? {
        ControlResponse::Netcheck(v) => v,
        other => return unexpected(other),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    outln!("reachability: {}", view.reachability);
    outln!("NAT:          {}", view.nat);
    for a in &view.external_addrs {
        outln!("public:       {a}");
    }
    for o in &view.observed_addrs {
        outln!("observed:     {} (by {})", o.observed, o.observer);
    }
    Ok(())
}

pub(crate) async fn set_status(home: &Home, status: Status, json: bool) -> anyhow::Result<()> {
    print_done(
        call(home, ControlRequest::SetStatus { status }).await?,
        json,
    )
}

/// `down`: stopping a daemon that is not running is no error; it says so on stderr.
pub(crate) async fn down(home: &Home, json: bool) -> anyhow::Result<()> {
    let Some(mut client) = connect(home).await? else {
        let message = format!(
            "natter is not running for {}: nothing to stop",
            home.dir().display()
        );
        if json {
            return super::print_message(&message, true);
        }
        eprintln!("{message}");
        return Ok(());
    };
    print_done(client.call(&ControlRequest::Down).await?, json)
}

/// `ping NAME`: one line per probe; an error (exit 1) when no probe was answered, after the
/// JSON in `--json` mode.
pub(crate) async fn ping(
    home: &Home,
    name: &str,
    count: u32,
    interval_ms: u64,
    json: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let name = parse_name(name)?;
    if home.identity().is_ok_and(|me| me.user == name) {
        bail!("cannot ping yourself");
    }
    let request = ControlRequest::Ping {
        name: name.to_string(),
        count,
        interval_ms: Some(interval_ms),
    };
    let client = ControlClient::connect(home.dir()).await?;
    let stream = client.stream::<_, ControlResponse>(&request).await?;
    futures::pin_mut!(stream);
    let mut probes: Vec<PingProbe> = Vec::new();
    while let Some(next) = stream.next().await {
        let probe = match next? {
            ControlResponse::Ping(p) => p,
            other => return unexpected(other),
        };
        if !json {
            match (&probe.rtt_ms, &probe.path) {
                (Some(rtt), Some(path)) => {
                    outln!("{name}: seq={} rtt={rtt:.2} ms via {path}", probe.seq)
                }
                _ => outln!(
                    "{name}: seq={} failed: {}",
                    probe.seq,
                    escape(probe.error.as_deref().unwrap_or("no answer"))
                ),
            }
        }
        probes.push(probe);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&probes)?);
    }
    ping_verdict(name.as_str(), &probes)
}

/// Whether a finished ping succeeded: at least one probe was answered.
fn ping_verdict(name: &str, probes: &[PingProbe]) -> anyhow::Result<()> {
    if probes.iter().any(|p| p.rtt_ms.is_some()) {
        return Ok(());
    }
    match probes.len() {
        0 => bail!("no answer from {name}"),
        1 => bail!("no answer from {name}: the probe was lost"),
        n => bail!("no answer from {name}: all {n} probes were lost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(seq: u32, rtt_ms: Option<f64>) -> PingProbe {
        PingProbe {
            seq,
            rtt_ms,
            path: rtt_ms.map(|_| "direct".to_owned()),
            error: rtt_ms.is_none().then(|| "timeout".to_owned()),
        }
    }

    #[test]
    fn a_ping_fails_only_when_nothing_answered() {
        assert!(ping_verdict("bob", &[probe(1, None), probe(2, Some(1.5))]).is_ok());
        let err = ping_verdict("bob", &[probe(1, None), probe(2, None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no answer from bob: all 2 probes were lost"
        );
        assert!(ping_verdict("bob", &[]).is_err());
    }
}
