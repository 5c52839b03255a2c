//! `GET /v1/models` and `GET /v1/models/{id}` from the inference registry.

use axum::Json;
use axum::extract::{Path, State};
use rungate_common::client::{request, within};
use rungate_proto::inference::v1::{ListModelsRequest, Model};
use serde_json::{Value, json};

use crate::ApiError;
use crate::state::AppState;

fn model_json(model: &Model) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    })
}

async fn fetch(state: &AppState) -> Result<Vec<Model>, ApiError> {
    let deadline = state.deadlines.rpc;
    let list = request(ListModelsRequest {}, deadline);
    let response = within(deadline, state.inference.clone().list_models(list)).await?;
    Ok(response.into_inner().models)
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models = fetch(&state).await?;
    Ok(Json(json!({
        "object": "list",
        "data": models.iter().map(model_json).collect::<Vec<_>>(),
    })))
}

pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let models = fetch(&state).await?;
    models
        .iter()
        .find(|m| m.id == id)
        .map(|m| Json(model_json(m)))
        .ok_or_else(|| {
            ApiError::not_found(format!("The model '{id}' does not exist"))
                .with_code("model_not_found")
        })
}
