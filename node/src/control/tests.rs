//! The control socket end to end, with toy request and response enums and tempdir homes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum ToyReq {
    Echo { text: String },
    Fail,
    Count { n: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToyResp {
    Echo(String),
    Tick(u32),
}

type ToyIncoming = Incoming<ToyReq, ToyResp>;

/// A running server whose requests arrive on `requests` for the test to answer.
struct Daemon {
    requests: mpsc::Receiver<ToyIncoming>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Daemon {
    async fn start(home: &Path) -> Daemon {
        let server = ControlServer::bind(home).await.unwrap();
        let (tx, requests) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(tx, shutdown.clone()));
        Daemon {
            requests,
            shutdown,
            task,
        }
    }

    /// Starts a server answering with the toy logic in a task of its own.
    async fn start_answering(home: &Path) -> (CancellationToken, JoinHandle<()>) {
        let Daemon {
            mut requests,
            shutdown,
            task,
        } = Daemon::start(home).await;
        tokio::spawn(async move {
            while let Some(Incoming { request, reply }) = requests.recv().await {
                let _ = match request {
                    ToyReq::Echo { text } => reply.send(Ok(ToyResp::Echo(text))).await,
                    ToyReq::Fail => reply.send(Err("no such user: bob".to_owned())).await,
                    ToyReq::Count { n } => {
                        for i in 0..n {
                            let _ = reply.send(Ok(ToyResp::Tick(i))).await;
                        }
                        Ok(())
                    }
                };
            }
        });
        (shutdown, task)
    }

    async fn next(&mut self) -> ToyIncoming {
        within(self.requests.recv()).await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.unwrap();
    }
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Sends `bytes` on a raw connection and returns the first line the daemon answers.
async fn raw_exchange(home: &Path, bytes: Vec<u8>) -> String {
    let stream = UnixStream::connect(socket_path(home)).await.unwrap();
    let (read, mut write) = stream.into_split();
    // Written in the background: the daemon may refuse before reading all of it.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut line = String::new();
    within(BufReader::new(read).read_line(&mut line))
        .await
        .unwrap();
    drop(writer);
    line
}

#[tokio::test]
async fn request_response_round_trip() {
    let home = tempfile::tempdir().unwrap();
    let (shutdown, task) = Daemon::start_answering(home.path()).await;

    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let resp: ToyResp = within(client.call(&ToyReq::Echo {
        text: "héllo\nworld".to_owned(),
    }))
    .await
    .unwrap();
    assert_eq!(resp, ToyResp::Echo("héllo\nworld".to_owned()));

    // A second call on the same client opens a new connection.
    let resp: ToyResp = within(client.call(&ToyReq::Echo {
        text: "again".to_owned(),
    }))
    .await
    .unwrap();
    assert_eq!(resp, ToyResp::Echo("again".to_owned()));

    let err = within(client.call::<_, ToyResp>(&ToyReq::Fail))
        .await
        .unwrap_err();
    assert!(matches!(&err, ControlError::Remote(s) if s == "no such user: bob"));
    assert_eq!(err.to_string(), "no such user: bob");

    // A request the daemon's enum does not know is refused in one sentence.
    let err = within(client.call::<_, ToyResp>(&serde_json::json!({"cmd": "fly"})))
        .await
        .unwrap_err();
    assert!(matches!(&err, ControlError::Remote(s) if s.contains("unknown control request")));

    shutdown.cancel();
    within(task).await.unwrap();
}

#[tokio::test]
async fn streaming_until_the_client_drops() {
    let home = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(home.path()).await;

    let client = ControlClient::connect(home.path()).await.unwrap();
    let mut stream = Box::pin(
        within(client.stream::<_, ToyResp>(&ToyReq::Count { n: 0 }))
            .await
            .unwrap(),
    );
    let Incoming { request, reply } = daemon.next().await;
    assert!(matches!(request, ToyReq::Count { .. }));

    for i in 0..3 {
        reply.send(Ok(ToyResp::Tick(i))).await.unwrap();
    }
    reply.send(Err("one bad item".to_owned())).await.unwrap();
    for i in 0..3 {
        let item = within(stream.next()).await.unwrap().unwrap();
        assert_eq!(item, ToyResp::Tick(i));
    }
    // An error line does not end the stream.
    let err = within(stream.next()).await.unwrap().unwrap_err();
    assert!(matches!(err, ControlError::Remote(s) if s == "one bad item"));
    assert!(!reply.is_closed());

    drop(stream);
    within(reply.closed()).await;
    assert!(reply.is_closed());
    assert_eq!(reply.send(Ok(ToyResp::Tick(9))).await, Err(ClientGone));
    assert_eq!(
        reply.try_send(Ok(ToyResp::Tick(9))),
        Err(TryReplyError::ClientGone)
    );

    daemon.stop().await;
}

#[tokio::test]
async fn stream_ends_when_the_daemon_is_done_or_stops() {
    let home = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(home.path()).await;

    // Done: the daemon drops its Replier.
    let client = ControlClient::connect(home.path()).await.unwrap();
    let mut stream = Box::pin(
        client
            .stream::<_, ToyResp>(&ToyReq::Count { n: 1 })
            .await
            .unwrap(),
    );
    let incoming = daemon.next().await;
    incoming.reply.send(Ok(ToyResp::Tick(0))).await.unwrap();
    drop(incoming);
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap(),
        ToyResp::Tick(0)
    );
    assert!(within(stream.next()).await.is_none());

    // Stopping: a reply queued just before shutdown is still delivered, then the stream ends.
    let client = ControlClient::connect(home.path()).await.unwrap();
    let mut stream = Box::pin(
        client
            .stream::<_, ToyResp>(&ToyReq::Count { n: 1 })
            .await
            .unwrap(),
    );
    let incoming = daemon.next().await;
    incoming.reply.send(Ok(ToyResp::Tick(7))).await.unwrap();
    daemon.shutdown.cancel();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap(),
        ToyResp::Tick(7)
    );
    assert!(within(stream.next()).await.is_none());
    within(incoming.reply.closed()).await;
    daemon.stop().await;
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(home.path()).await;

    let line = serde_json::to_vec(&serde_json::json!({
        "token": wire::new_token(),
        "request": {"cmd": "fail"},
    }))
    .unwrap();
    let mut bytes = line;
    bytes.push(b'\n');
    let answer = raw_exchange(home.path(), bytes).await;
    assert_eq!(answer, "{\"error\":\"bad control token\"}\n");

    // The client maps it to BadToken.
    std::fs::write(token_path(home.path()), wire::new_token()).unwrap();
    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let err = within(client.call::<_, ToyResp>(&ToyReq::Fail))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::BadToken), "{err}");

    // Nothing reached the daemon.
    assert!(daemon.requests.try_recv().is_err());
    daemon.stop().await;
}

#[tokio::test]
async fn oversize_and_malformed_requests_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(home.path()).await;

    let answer = raw_exchange(home.path(), vec![b'x'; MAX_REQUEST_BYTES + 4096]).await;
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let sentence = answer["error"].as_str().unwrap();
    assert!(sentence.contains("larger than"), "{sentence}");

    let answer = raw_exchange(home.path(), b"not json\n".to_vec()).await;
    assert!(answer.contains("malformed control request"), "{answer}");

    // The client refuses to send an oversize request itself.
    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let err = client
        .call::<_, ToyResp>(&ToyReq::Echo {
            text: "y".repeat(MAX_REQUEST_BYTES),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Protocol(_)), "{err}");

    assert!(daemon.requests.try_recv().is_err());
    daemon.stop().await;
}

#[tokio::test]
async fn second_daemon_on_the_same_home_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let (shutdown, task) = Daemon::start_answering(home.path()).await;
    let token = std::fs::read_to_string(token_path(home.path())).unwrap();

    let err = ControlServer::bind(home.path()).await.unwrap_err();
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another natter daemon is already running for this home"),
        "{err}"
    );

    // The refused daemon changed nothing: the first one still answers with its token.
    assert_eq!(
        std::fs::read_to_string(token_path(home.path())).unwrap(),
        token
    );
    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let resp: ToyResp = within(client.call(&ToyReq::Echo {
        text: "still here".to_owned(),
    }))
    .await
    .unwrap();
    assert_eq!(resp, ToyResp::Echo("still here".to_owned()));

    // Once the first stops, its socket is gone and the home can be taken again.
    shutdown.cancel();
    within(task).await.unwrap();
    assert!(!socket_path(home.path()).exists());
    let server = ControlServer::bind(home.path()).await.unwrap();
    drop(server);
    assert!(!socket_path(home.path()).exists());
}

#[tokio::test]
async fn live_socket_without_the_lock_is_refused() {
    // A daemon found only through its socket (say, one that predates the lock file).
    let home = tempfile::tempdir().unwrap();
    let _listener = tokio::net::UnixListener::bind(socket_path(home.path())).unwrap();
    let err = ControlServer::bind(home.path()).await.unwrap_err();
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    assert!(socket_path(home.path()).exists());
}

#[tokio::test]
async fn stale_socket_is_cleaned_up() {
    let home = tempfile::tempdir().unwrap();
    // A crashed daemon leaves its socket file and token behind.
    drop(std::os::unix::net::UnixListener::bind(socket_path(home.path())).unwrap());
    std::fs::write(token_path(home.path()), "old token").unwrap();
    assert!(socket_path(home.path()).exists());
    assert!(matches!(
        ControlClient::connect(home.path()).await.unwrap_err(),
        ControlError::NotRunning { .. }
    ));

    let (shutdown, task) = Daemon::start_answering(home.path()).await;
    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let resp: ToyResp = within(client.call(&ToyReq::Echo {
        text: "fresh".to_owned(),
    }))
    .await
    .unwrap();
    assert_eq!(resp, ToyResp::Echo("fresh".to_owned()));
    shutdown.cancel();
    within(task).await.unwrap();
}

#[tokio::test]
async fn no_daemon_says_how_to_start_it() {
    let home = tempfile::tempdir().unwrap();
    let err = ControlClient::connect(home.path()).await.unwrap_err();
    assert!(matches!(err, ControlError::NotRunning { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("natter --home"), "{message}");
    assert!(
        message.contains(&home.path().display().to_string()),
        "{message}"
    );

    // A home that does not even exist says the same.
    let missing = home.path().join("nowhere");
    let err = ControlClient::connect(&missing).await.unwrap_err();
    assert!(matches!(err, ControlError::NotRunning { .. }), "{err}");

    // And so does a daemon that has just stopped.
    let (shutdown, task) = Daemon::start_answering(home.path()).await;
    shutdown.cancel();
    within(task).await.unwrap();
    let err = ControlClient::connect(home.path()).await.unwrap_err();
    assert!(matches!(err, ControlError::NotRunning { .. }), "{err}");
}

#[tokio::test]
async fn socket_and_token_are_private() {
    let home = tempfile::tempdir().unwrap();
    let first = ControlServer::bind(home.path()).await.unwrap();
    let socket = socket_path(home.path());
    let token_file = token_path(home.path());
    assert_eq!(first.socket(), socket);
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // No temporary file is left behind.
    assert!(!home.path().join("control.token.tmp").exists());
    drop(first);

    // Each start writes a new token, and a wider mode left on the file is narrowed again.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _second = ControlServer::bind(home.path()).await.unwrap();
    assert_ne!(std::fs::read_to_string(&token_file).unwrap(), token);
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&socket), 0o600);
}

#[tokio::test]
async fn clients_beyond_the_cap_are_turned_away() {
    let home = tempfile::tempdir().unwrap();
    let (shutdown, task) = Daemon::start_answering(home.path()).await;

    // Idle clients, each holding a slot while the daemon waits for their request.
    let mut idle = Vec::new();
    for _ in 0..MAX_CLIENTS {
        idle.push(UnixStream::connect(socket_path(home.path())).await.unwrap());
    }
    let answer = raw_exchange(home.path(), Vec::new()).await;
    assert!(answer.contains("too many control clients"), "{answer}");

    // A slot frees up when an idle client leaves.
    drop(idle.pop());
    let mut client = ControlClient::connect(home.path()).await.unwrap();
    let resp: ToyResp = within(async {
        loop {
            match client
                .call(&ToyReq::Echo {
                    text: "in".to_owned(),
                })
                .await
            {
                Ok(resp) => break resp,
                // The freed slot may not have been reaped yet.
                Err(ControlError::Remote(s)) if s.contains("too many") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(resp, ToyResp::Echo("in".to_owned()));

    shutdown.cancel();
    within(task).await.unwrap();
}

#[tokio::test]
async fn quick_requests_do_not_queue_behind_ordinary_ones() {
    let home = tempfile::tempdir().unwrap();
    let server = ControlServer::bind(home.path()).await.unwrap();
    // The ordinary lane holds one request and nobody reads it: a burst waits there.
    let (ordinary, mut ordinary_rx) = mpsc::channel(1);
    let (quick, mut quick_rx) = mpsc::channel(1);
    let lanes: Lanes<ToyReq, ToyResp> =
        Lanes::new(ordinary).with_quick(quick, |r| matches!(r, ToyReq::Fail));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(lanes, shutdown.clone()));

    let mut waiting = Vec::new();
    for n in 0..3 {
        let home = home.path().to_owned();
        waiting.push(tokio::spawn(async move {
            let mut client = ControlClient::connect(&home).await.unwrap();
            client.call::<_, ToyResp>(&ToyReq::Count { n }).await
        }));
    }
    let first = within(ordinary_rx.recv()).await.unwrap();
    assert!(matches!(first.request, ToyReq::Count { .. }));

    // With the ordinary lane full, the quick request still gets through and is answered.
    let home_path = home.path().to_owned();
    let asked = tokio::spawn(async move {
        let mut client = ControlClient::connect(&home_path).await.unwrap();
        client.call::<_, ToyResp>(&ToyReq::Fail).await
    });
    let incoming = within(quick_rx.recv()).await.unwrap();
    assert!(matches!(incoming.request, ToyReq::Fail));
    incoming
        .reply
        .send(Err("answered first".to_owned()))
        .await
        .unwrap();
    let err = within(asked).await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "answered first");

    // The ordinary requests were only held, not lost: they come next, in turn.
    drop(first);
    let mut ordinary_seen = 1;
    while ordinary_seen < 3 {
        let incoming = within(ordinary_rx.recv()).await.unwrap();
        assert!(matches!(incoming.request, ToyReq::Count { .. }));
        ordinary_seen += 1;
    }
    assert!(
        quick_rx.try_recv().is_err(),
        "only `Fail` takes the quick lane"
    );
    shutdown.cancel();
    within(task).await.unwrap();
    drop(waiting);
}
