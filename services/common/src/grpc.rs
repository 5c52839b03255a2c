//! The frame every RunGate gRPC server runs in: health and reflection next to
//! the service's own routes, a server span per call parented to the caller's
//! trace, and a graceful drain on shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::util::MapResponseLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::cutoff::CutOff;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("no gRPC endpoint in `{0}`")]
    NoEndpoint(String),
    #[error("invalid gRPC endpoint `{url}`: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Serves `routes` plus `grpc.health.v1` and reflection on `listener` until
/// `shutdown` resolves. Then health turns NOT_SERVING (so balancers stop
/// routing here), the listener closes, and in-flight calls get `drain` to finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&'static str],
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in services {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    // Both reflection versions: grpcurl and older tools still ask for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rungate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::from(routes.into_axum_router().merge(crate::metrics::router()))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let deadline = CancellationToken::new();
    let cut_off = deadline.clone();
    let server = Server::builder()
        // HTTP/1.1 too: `/metrics`, and billing's x402 facilitator JSON API.
        .accept_http1(true)
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(crate::propagation::grpc_server_span)
                // NotFound, InvalidArgument & co. are answers, not server failures.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(MapResponseLayer::new(
            move |response: http::Response<tonic::body::Body>| {
                response.map(|body| CutOff::wrap(body, &cut_off))
            },
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown => {}
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in services {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    let _ = stop_accepting.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                ?drain,
                "drain deadline passed; ending calls still in flight"
            );
            deadline.cancel();
            Ok(())
        }
    }
}

/// Accepted connections without Nagle: stream messages are small and must
/// not wait for the peer's delayed ACK.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
