//! A TCP proxy in front of the dev chain's JSON-RPC that a test can switch
//! off (connections refused, open ones cut) and on again: the RPC going down
//! as seen by billing, while the chain itself keeps its state.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ChainProxy {
    pub url: String,
    up: watch::Sender<bool>,
}

impl ChainProxy {
    /// Proxies a fresh local port to `target` (host:port) until the runtime stops.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (up, watching) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*watching.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let mut down = watching.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self { url, up })
    }

    pub fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}
