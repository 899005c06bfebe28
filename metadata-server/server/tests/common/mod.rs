//! A node served in-process on 127.0.0.1:0, and a client connected to it.

use std::sync::Arc;

use cairn_index_server::node::Node;
use cairn_proto::v1::index_client::IndexClient;
use tonic::transport::Channel;

/// A running node; stopped when dropped.
pub struct Served {
    pub client: IndexClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `node` until the returned value is dropped.
pub async fn serve(node: Node) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cairn_index_server::server::serve(
        Arc::new(node),
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Served {
        client: IndexClient::new(channel),
        stop: Some(stop),
    }
}
