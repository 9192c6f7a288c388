//! An opt-in Prometheus endpoint: plain HTTP on a TCP address, any path answered with the text
//! exposition of a registry. Shared by `natter-login serve --metrics` and `natter up --metrics`.
//! Deliberately tiny: one small GET per scrape, bounded reads, a few connections at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A bound metrics endpoint; [`MetricsServer::run`] serves it.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until `shutdown`.
    pub async fn run(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(8));
        loop {
            let (mut stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // too many scrapers at once: drop the connection
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = [0u8; 4096];
                // The request itself does not matter; read what arrives within a second.
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                let mut body = String::new();
                if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }
}
