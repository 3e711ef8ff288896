//! The ABI registry over HTTP: `PUT`, `GET` and `DELETE /v1/abis/{chain}/{address}` and
//! `GET /v1/abis`.
//!
//! A registered JSON ABI is what the `abi_events` model decodes that contract's logs with (see
//! `model_runner_core::models::abi_events`). The store validates an ABI before keeping it
//! ([`RunStore::put_abi`](model_runner_core::ports::RunStore::put_abi)); its refusal is a
//! `400 invalid_abi` naming what is wrong.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use model_runner_core::Chain;
use model_runner_core::ports::{ContractAbi, StoreError, parse_address};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::ApiState;
use super::auth::{ReadAccess, WriteAccess};
use super::body::ApiJson;
use super::error::{ApiError, BodyRefusals, ErrorResponse, ReadRefusals, WriteRefusals};
use super::input::{self, Input};
use model_runner_core::ports::ContractRef;

/// A registered ABI.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AbiView {
    /// Chain.
    pub chain: String,
    /// Contract address, lowercase `0x`-hex.
    pub address: String,
    /// The JSON ABI as registered.
    #[schema(value_type = Vec<Object>)]
    pub abi: serde_json::Value,
    /// Last registration.
    pub updated_at: DateTime<Utc>,
}

impl From<ContractAbi> for AbiView {
    fn from(a: ContractAbi) -> Self {
        Self {
            chain: a.chain.to_string(),
            address: format!("{:#x}", a.address),
            abi: a.abi,
            updated_at: a.updated_at,
        }
    }
}

/// A registered ABI in a listing: its contract and the events `abi_events` decodes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AbiSummary {
    /// Chain.
    pub chain: String,
    /// Contract address, lowercase `0x`-hex.
    pub address: String,
    /// Signatures of the ABI's non-anonymous events, by name, e.g.
    /// `Transfer(address,address,uint256)`.
    pub events: Vec<String>,
    /// Last registration.
    pub updated_at: DateTime<Utc>,
}

/// Signatures of the non-anonymous events of a registered ABI, the ones `abi_events` decodes.
/// Registered ABIs were validated on the way in; one that no longer parses (a corrupt row) has
/// none, rather than failing a whole listing.
pub fn event_signatures(abi: &ContractAbi) -> Vec<String> {
    abi.parsed()
        .map(|p| {
            p.events()
                .filter(|e| !e.anonymous)
                .map(|e| e.signature())
                .collect()
        })
        .unwrap_or_default()
}

/// The registered ABIs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AbiList {
    /// By chain, then address.
    pub abis: Vec<AbiSummary>,
}

/// Query of `GET /v1/abis`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AbiListQuery {
    /// Only this chain.
    #[param(pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$", max_length = 32)]
    pub chain: Option<String>,
}

/// The path of one contract's ABI, `/v1/abis/{chain}/{address}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ContractPath {
    /// Chain name.
    #[param(pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$", max_length = 32)]
    pub chain: String,
    /// Contract address, 0x and 40 hex digits.
    #[param(pattern = "^0x[0-9a-fA-F]{40}$")]
    pub address: String,
}

impl ContractPath {
    /// The chain and address, checked.
    fn parse(&self) -> Result<(Chain, alloy_primitives::Address), ApiError> {
        let chain = input::chain(&self.chain)?;
        let address = parse_address(&self.address).map_err(|e| match e {
            StoreError::InvalidInput(m) => {
                ApiError::bad_request("invalid_address", m).field("address")
            }
            other => other.into(),
        })?;
        Ok((chain, address))
    }
}

/// The refusals of a [`ContractPath`] whose ABI must be registered, for reading or removing it.
#[derive(Debug, IntoResponses)]
pub enum ContractRefusals {
    /// Invalid chain or address
    #[response(status = 400)]
    Invalid(ErrorResponse),
    /// No ABI registered for the contract
    #[response(status = 404)]
    NoAbi(ErrorResponse),
}

fn no_abi(chain: &Chain, address: &alloy_primitives::Address) -> ApiError {
    ApiError::not_found(
        "abi_not_found",
        format!("no ABI is registered for {address:#x} on {chain}"),
    )
    .field("address")
}

/// Registers (or replaces) the JSON ABI of a contract. The body is the ABI itself: the JSON
/// array solc and Etherscan emit. The `abi_events` model decodes the contract's events with it.
#[utoipa::path(
    put,
    path = "/v1/abis/{chain}/{address}",
    tag = "abis",
    params(ContractPath),
    request_body(content = Vec<Object>, description = "The JSON ABI", content_type = "application/json"),
    responses(
        (status = 200, description = "The ABI as registered", body = AbiView),
        (status = 400, description = "Invalid chain, address or ABI", body = ErrorResponse),
        WriteRefusals, BodyRefusals,
    ),
)]
pub async fn put_abi(
    State(state): State<ApiState>,
    _: WriteAccess,
    Input(Path(contract)): Input<Path<ContractPath>>,
    ApiJson(abi): ApiJson<serde_json::Value>,
) -> Result<Json<AbiView>, ApiError> {
    let (chain, address) = contract.parse()?;
    match state
        .deps
        .store
        .put_abi(ContractRef::new(&chain, address), abi)
        .await
    {
        Ok(stored) => Ok(Json(stored.into())),
        Err(StoreError::InvalidInput(m)) => Err(ApiError::bad_request("invalid_abi", m)),
        Err(e) => Err(e.into()),
    }
}

/// The registered JSON ABI of a contract.
#[utoipa::path(
    get,
    path = "/v1/abis/{chain}/{address}",
    tag = "abis",
    params(ContractPath),
    responses(
        (status = 200, description = "The ABI", body = AbiView),
        ContractRefusals, ReadRefusals,
    ),
)]
pub async fn get_abi(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(contract)): Input<Path<ContractPath>>,
) -> Result<Json<AbiView>, ApiError> {
    let (chain, address) = contract.parse()?;
    match state
        .deps
        .store
        .abi(ContractRef::new(&chain, address))
        .await?
    {
        Some(abi) => Ok(Json(abi.into())),
        None => Err(no_abi(&chain, &address)),
    }
}

/// Removes the ABI of a contract: `abi_events` stops decoding its logs.
#[utoipa::path(
    delete,
    path = "/v1/abis/{chain}/{address}",
    tag = "abis",
    params(ContractPath),
    responses(
        (status = 204, description = "Removed"),
        ContractRefusals, WriteRefusals,
    ),
)]
pub async fn delete_abi(
    State(state): State<ApiState>,
    _: WriteAccess,
    Input(Path(contract)): Input<Path<ContractPath>>,
) -> Result<StatusCode, ApiError> {
    let (chain, address) = contract.parse()?;
    if state
        .deps
        .store
        .delete_abi(ContractRef::new(&chain, address))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_abi(&chain, &address))
    }
}

/// The registered ABIs, optionally of one chain, with the events each decodes.
#[utoipa::path(
    get,
    path = "/v1/abis",
    tag = "abis",
    params(AbiListQuery),
    responses(
        (status = 200, description = "The registered ABIs", body = AbiList),
        (status = 400, description = "Invalid parameter", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn list_abis(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Query(q)): Input<Query<AbiListQuery>>,
) -> Result<Json<AbiList>, ApiError> {
    let chain = q.chain.as_deref().map(input::chain).transpose()?;
    let abis = state.deps.store.abis(chain.as_ref()).await?;
    let abis = abis
        .into_iter()
        .map(|a| AbiSummary {
            chain: a.chain.to_string(),
            address: format!("{:#x}", a.address),
            events: event_signatures(&a),
            updated_at: a.updated_at,
        })
        .collect();
    Ok(Json(AbiList { abis }))
}
