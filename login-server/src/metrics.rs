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

/// How long an answer may take to write before the scraper is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
                // A scraper that stops reading gives its slot up after WRITE_TIMEOUT: eight of
                // them would otherwise hold every slot for good.
                let answer = async {
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(body.as_bytes()).await?;
                    stream.shutdown().await
                };
                if tokio::time::timeout(WRITE_TIMEOUT, answer).await.is_err() {
                    tracing::debug!("metrics scraper stopped reading: connection dropped");
                }
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    /// Eight scrapers that ask and never read hold every slot while the answer is being
    /// written; with a write timeout, a ninth is served once it runs out.
    #[tokio::test]
    async fn scrapers_that_stop_reading_do_not_hold_the_endpoint() {
        // An answer of several MiB: writing it blocks when nobody reads.
        let mut registry = Registry::default();
        let big: Family<Vec<(String, String)>, Counter> = Family::default();
        for i in 0..40_000 {
            big.get_or_create(&vec![("label".into(), format!("{i:0>120}"))])
                .inc();
        }
        registry.register("big", "A large family", big);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(Arc::new(registry), shutdown.clone()));

        let mut stalled = Vec::new();
        for _ in 0..8 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(1024).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            stalled.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let served = tokio::time::timeout(WRITE_TIMEOUT * 3, async {
            loop {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            served.is_ok(),
            "no scrape served while eight scrapers stall"
        );
        shutdown.cancel();
        drop(stalled);
    }
}
