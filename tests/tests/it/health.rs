//! Every service answers gRPC health and reflection; the edge answers /healthz.

use rungate_tests::cluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn every_grpc_service_reports_serving_by_name() {
    let c = cluster();
    for (url, service) in [
        (&c.inference_url, "rungate.inference.v1.InferenceService"),
        (&c.billing_url, "rungate.billing.v1.BillingService"),
        (&c.ledger_url, "rungate.ledger.v1.LedgerService"),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn reflection_lists_each_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let c = cluster();
    for (url, service) in [
        (&c.inference_url, "rungate.inference.v1.InferenceService"),
        (&c.billing_url, "rungate.billing.v1.BillingService"),
        (&c.ledger_url, "rungate.ledger.v1.LedgerService"),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection answers")
            .into_inner();
        let response = responses
            .message()
            .await
            .expect("message")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response from {url}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&service), "{url} lists {names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health"),
            "{url} lists {names:?}"
        );
    }
}

#[tokio::test]
async fn edge_answers_http_health() {
    let url = format!("{}/healthz", cluster().edge_url);
    let response = reqwest::get(url).await.expect("edge reachable");
    assert_eq!(response.status(), 200);
}
