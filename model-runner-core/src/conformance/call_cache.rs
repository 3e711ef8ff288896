//! The [`CallCache`] conformance suite: what was put is got back, every component of the key
//! tells entries apart, empty answers are answers. Keys are unique per run (a fresh calldata
//! prefix), so the suite runs in parallel against a shared server.

use alloy_primitives::{Address, B256, Bytes};

use crate::chain::Chain;
use crate::ports::{CallCache, CallKey};

/// Runs every case against `cache`.
pub async fn run_all(cache: &impl CallCache) {
    let base = fresh_key();
    unknown_key_is_none(cache, &base).await;
    put_then_get(cache, &base).await;
    every_key_component_is_distinct(cache, &base).await;
    empty_answer_is_an_answer(cache, &base).await;
}

/// A key no other run of the suite uses.
fn fresh_key() -> CallKey {
    let mut data = uuid::Uuid::new_v4().as_bytes().to_vec();
    data.extend_from_slice(&[0x70, 0xa0, 0x82, 0x31]);
    CallKey {
        chain: Chain::new("ethereum").expect("chain"),
        block_hash: B256::repeat_byte(0x11),
        to: Address::repeat_byte(0x22),
        data: data.into(),
    }
}

async fn get(cache: &impl CallCache, key: &CallKey) -> Option<Vec<u8>> {
    cache
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
        .map(|b| b.to_vec())
}

async fn put(cache: &impl CallCache, key: &CallKey, answer: &[u8]) {
    cache
        .put(key, &Bytes::copy_from_slice(answer))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

/// A key never put MUST be `None`.
pub async fn unknown_key_is_none(cache: &impl CallCache, base: &CallKey) {
    let mut key = base.clone();
    key.block_hash = B256::repeat_byte(0xEE);
    assert_eq!(get(cache, &key).await, None, "a key never put MUST be None");
}

/// `get` MUST give what was last put.
pub async fn put_then_get(cache: &impl CallCache, base: &CallKey) {
    put(cache, base, &[1; 32]).await;
    assert_eq!(
        get(cache, base).await,
        Some(vec![1u8; 32]),
        "get MUST give the answer put"
    );
    put(cache, base, &[2; 32]).await;
    assert_eq!(
        get(cache, base).await,
        Some(vec![2u8; 32]),
        "get MUST give the answer put last"
    );
}

/// Keys that differ in chain, block hash, contract or calldata MUST be distinct entries.
pub async fn every_key_component_is_distinct(cache: &impl CallCache, base: &CallKey) {
    put(cache, base, &[3]).await;
    let mut variants = Vec::new();
    let mut k = base.clone();
    k.chain = Chain::new("matic").expect("chain");
    variants.push(("chain", k));
    let mut k = base.clone();
    k.block_hash = B256::repeat_byte(0x12);
    variants.push(("block hash", k));
    let mut k = base.clone();
    k.to = Address::repeat_byte(0x23);
    variants.push(("contract", k));
    let mut k = base.clone();
    let mut data = k.data.to_vec();
    data.push(0);
    k.data = data.into();
    variants.push(("calldata", k));
    for (i, (what, key)) in variants.iter().enumerate() {
        assert_eq!(
            get(cache, key).await,
            None,
            "a key of another {what} MUST be another entry"
        );
        put(cache, key, &[10 + i as u8]).await;
    }
    assert_eq!(get(cache, base).await, Some(vec![3u8]));
    for (i, (what, key)) in variants.iter().enumerate() {
        assert_eq!(
            get(cache, key).await,
            Some(vec![10 + i as u8]),
            "the entry of another {what} MUST keep its own answer"
        );
    }
}

/// An empty answer (a call to an account without code) MUST be stored as one.
pub async fn empty_answer_is_an_answer(cache: &impl CallCache, base: &CallKey) {
    let mut key = base.clone();
    key.to = Address::repeat_byte(0x33);
    put(cache, &key, &[]).await;
    assert_eq!(
        get(cache, &key).await,
        Some(vec![]),
        "an empty answer MUST be stored as an answer"
    );
}
