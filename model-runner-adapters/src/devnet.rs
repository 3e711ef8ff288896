//! `devnet://`: a deterministic, realistic Ethereum-like chain generated on the fly.
//!
//! **A demo source, not a chain.** It lets realtime mode and backfills be seen and measured
//! without a node: block `n` always has the same content (a pure function of the seed and `n`),
//! and the head advances with the wall clock at the configured block time.
//!
//! Each block has about 150 transactions and 300 logs (both varied ±20 % per block), with
//! addresses drawn from a Zipf distribution over 10,000 accounts (a few hot contracts and
//! wallets, a long tail), like mainnet. Logs are ERC-20 `Transfer`s (about half), ERC-721
//! `Transfer`s (four topics), ERC-20 `Approval`s and other events; some transactions create
//! contracts. `txs=0` gives blocks without transactions, hence without logs (a log belongs to a
//! transaction); `logs=0` gives blocks without logs.
//!
//! `delay_ms=N` makes every [`BlockSource::blocks`] call wait N ms before it returns: a slow
//! source, for tests of runs that outlast a shutdown grace. It does not change any content.
//!
//! URL: `devnet://?block_time_ms=1000&head=1000000&seed=1&txs=150&logs=300&delay_ms=0`, every
//! parameter optional with those defaults. `head` is the head block at the moment the source is
//! created.

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use async_trait::async_trait;
use model_runner_core::models::TRANSFER_TOPIC;
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockHead, BlockRange, BlockRef, Chain, Log, Receipt, Transaction};

/// `keccak256("Approval(address,address,uint256)")`.
const APPROVAL_TOPIC: B256 =
    alloy_primitives::b256!("8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925");
const ACCOUNTS: usize = 10_000;

/// Devnet settings (see the module docs for the URL form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevnetConfig {
    /// Time between blocks.
    pub block_time: Duration,
    /// Head at creation.
    pub head: u64,
    /// Changes every block's content.
    pub seed: u64,
    /// Mean transactions per block.
    pub txs: u32,
    /// Mean logs per block.
    pub logs: u32,
    /// Wait of every `blocks` call: a slow source, for tests of runs that outlast a shutdown
    /// grace.
    pub delay: Duration,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        Self {
            block_time: Duration::from_millis(1000),
            head: 1_000_000,
            seed: 1,
            txs: 150,
            logs: 300,
            delay: Duration::ZERO,
        }
    }
}

impl DevnetConfig {
    /// Parses `devnet://?key=value&...`.
    pub fn from_url(url: &str) -> Result<Self, SourceError> {
        let rest = url.strip_prefix("devnet://").ok_or_else(|| {
            SourceError::InvalidData(format!(
                "not a devnet URL: {} (expected devnet://...)",
                model_runner_core::redact::redact_url(url)
            ))
        })?;
        // Errors below quote parameters: user info (which has no use here) must not reach one.
        if rest
            .split(['/', '?'])
            .next()
            .is_some_and(|a| a.contains('@'))
        {
            return Err(SourceError::InvalidData(format!(
                "a devnet URL takes no user info: {} (expected devnet://?key=value&...)",
                model_runner_core::redact::redact_url(url)
            )));
        }
        let query = rest.trim_start_matches('/').trim_start_matches('?');
        let params: DevnetParams = serde_urlencoded::from_str(query).map_err(|e| {
            SourceError::InvalidData(format!(
                "invalid devnet URL {}: {e}",
                model_runner_core::redact::redact_url(url)
            ))
        })?;
        let num = |k: &str, v: Option<String>| {
            v.map(|v| {
                v.parse::<u64>().map_err(|_| {
                    SourceError::InvalidData(format!(
                        "invalid devnet parameter {k}={v:?}: expected a non-negative integer"
                    ))
                })
            })
            .transpose()
        };
        let mut c = Self::default();
        if let Some(ms) = num("block_time_ms", params.block_time_ms)? {
            c.block_time = Duration::from_millis(ms.max(1));
        }
        if let Some(n) = num("head", params.head)? {
            c.head = n;
        }
        if let Some(n) = num("seed", params.seed)? {
            c.seed = n;
        }
        if let Some(n) = num("txs", params.txs)? {
            c.txs = n.min(10_000) as u32;
        }
        if let Some(n) = num("logs", params.logs)? {
            c.logs = n.min(20_000) as u32;
        }
        if let Some(ms) = num("delay_ms", params.delay_ms)? {
            c.delay = Duration::from_millis(ms);
        }
        Ok(c)
    }
}

/// The query of a devnet URL, as given (values are checked by [`DevnetConfig::from_url`], so
/// its errors quote them).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DevnetParams {
    block_time_ms: Option<String>,
    head: Option<String>,
    seed: Option<String>,
    txs: Option<String>,
    logs: Option<String>,
    delay_ms: Option<String>,
}

/// The devnet source.
#[derive(Debug)]
pub struct DevnetSource {
    chain: Chain,
    config: DevnetConfig,
    started: Instant,
    accounts: Vec<Address>,
    zipf_cdf: Vec<f64>,
}

/// SplitMix64: tiny, fast, and stable across library versions, so a block's content never
/// changes with a dependency upgrade.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `mean` ± 20 % (at least ±1), uniformly; exactly 0 for a mean of 0.
    fn around(&mut self, mean: u32) -> usize {
        if mean == 0 {
            return 0;
        }
        let spread = (mean / 5).max(1) as u64;
        (u64::from(mean) - spread + self.below(2 * spread + 1)) as usize
    }
    fn word(&mut self) -> B256 {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        B256::from(b)
    }
}

impl DevnetSource {
    /// A devnet serving `chain`.
    pub fn new(chain: Chain, config: DevnetConfig) -> Self {
        let mut rng = Rng(config.seed ^ 0x00DE_71E7);
        let accounts = (0..ACCOUNTS)
            .map(|_| Address::from_word(rng.word()))
            .collect();
        // Zipf with exponent 1.1: cumulative weights, sampled by binary search.
        let mut total = 0.0;
        let mut zipf_cdf: Vec<f64> = (1..=ACCOUNTS)
            .map(|k| {
                total += 1.0 / (k as f64).powf(1.1);
                total
            })
            .collect();
        for w in &mut zipf_cdf {
            *w /= total;
        }
        Self {
            chain,
            config,
            started: Instant::now(),
            accounts,
            zipf_cdf,
        }
    }

    /// From a `devnet://` URL.
    pub fn from_url(chain: Chain, url: &str) -> Result<Self, SourceError> {
        Ok(Self::new(chain, DevnetConfig::from_url(url)?))
    }

    fn account(&self, rng: &mut Rng) -> Address {
        let u = rng.unit();
        let i = self.zipf_cdf.partition_point(|&c| c < u).min(ACCOUNTS - 1);
        self.accounts[i]
    }

    fn block_hash(&self, number: u64) -> B256 {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&self.config.seed.to_be_bytes());
        buf[8..].copy_from_slice(&number.to_be_bytes());
        keccak256(buf)
    }

    fn parent_hash(&self, number: u64) -> B256 {
        match number {
            0 => B256::ZERO,
            n => self.block_hash(n - 1),
        }
    }

    /// The current head number.
    pub fn head_number(&self) -> u64 {
        let elapsed =
            self.started.elapsed().as_millis() / self.config.block_time.as_millis().max(1);
        self.config.head.saturating_add(elapsed as u64)
    }

    /// Block `number` (whether or not the head has reached it).
    pub fn generate(&self, number: u64) -> Block {
        let mut rng = Rng(self.config.seed.wrapping_mul(0x100_0000_01B3) ^ number);
        let hash = self.block_hash(number);
        // A nonzero mean never draws an empty block of transactions; logs need a transaction.
        let tx_count = match rng.around(self.config.txs) {
            0 if self.config.txs > 0 => 1,
            n => n,
        };
        let log_count = match rng.around(self.config.logs) {
            _ if tx_count == 0 => 0,
            n => n,
        };
        let mut transactions = Vec::with_capacity(tx_count);
        let mut cumulative = 0u64;
        for index in 0..tx_count as u64 {
            let create = rng.below(100) == 0;
            let gas_used = 21_000 + rng.below(200_000);
            cumulative += gas_used;
            let tx_hash = rng.word();
            let to = (!create).then(|| self.account(&mut rng));
            transactions.push(Transaction {
                hash: tx_hash,
                index,
                from: self.account(&mut rng),
                to,
                value: U256::from(rng.below(5_000_000_000_000_000_000)),
                gas: gas_used + rng.below(50_000),
                gas_price: Some(u128::from(10_000_000_000 + rng.below(50_000_000_000))),
                nonce: rng.below(100_000),
                input: Bytes::from(rng.next().to_be_bytes().to_vec()),
                receipt: Some(Receipt {
                    status: Some(rng.below(50) != 0),
                    gas_used,
                    cumulative_gas_used: cumulative,
                    contract_address: create.then(|| Address::from_word(rng.word())),
                    effective_gas_price: None,
                }),
            });
        }
        let mut logs = Vec::with_capacity(log_count);
        for log_index in 0..log_count as u64 {
            let tx = &transactions[rng.below(tx_count as u64) as usize];
            let contract = self.account(&mut rng);
            let a = self.account(&mut rng).into_word();
            let b = self.account(&mut rng).into_word();
            let kind = rng.below(100);
            let amount = U256::from(rng.next()) * U256::from(1 + rng.below(1_000_000));
            let (topics, data) = match kind {
                0..=49 => (
                    vec![TRANSFER_TOPIC, a, b],
                    Bytes::from(amount.to_be_bytes::<32>().to_vec()),
                ),
                50..=59 => (
                    vec![
                        TRANSFER_TOPIC,
                        a,
                        b,
                        B256::from(U256::from(rng.below(100_000))),
                    ],
                    Bytes::new(),
                ),
                60..=74 => (
                    vec![APPROVAL_TOPIC, a, b],
                    Bytes::from(amount.to_be_bytes::<32>().to_vec()),
                ),
                _ => (
                    vec![rng.word(), a],
                    Bytes::from([rng.word().0, rng.word().0].concat()),
                ),
            };
            logs.push(Log {
                address: contract,
                topics,
                data,
                log_index,
                transaction_hash: tx.hash,
                transaction_index: tx.index,
                block_number: number,
            });
        }
        logs.sort_by_key(|l| (l.transaction_index, l.log_index));
        for (i, l) in logs.iter_mut().enumerate() {
            l.log_index = i as u64;
        }
        Block {
            number,
            hash,
            parent_hash: self.parent_hash(number),
            timestamp: 1_700_000_000 + number * self.config.block_time.as_secs().max(1),
            miner: Some(self.account(&mut rng)),
            gas_used: cumulative,
            gas_limit: 30_000_000,
            base_fee_per_gas: Some(u128::from(1_000_000_000 + rng.below(30_000_000_000))),
            transactions,
            logs,
        }
    }
}

#[async_trait]
impl BlockSource for DevnetSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        let number = self.head_number();
        Ok(BlockHead {
            number,
            hash: self.block_hash(number),
        })
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let head = self.head_number();
        if range.end() > head {
            return Err(SourceError::BlockNotFound {
                number: range.end(),
                source_name: format!("devnet (head is {head})"),
            });
        }
        if !self.config.delay.is_zero() {
            tokio::time::sleep(self.config.delay).await;
        }
        Ok((range.start()..=range.end())
            .map(|n| self.generate(n))
            .collect())
    }

    /// The header alone: a devnet block's hash follows from its number, no block is generated.
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        let head = self.head_number();
        if number > head {
            return Err(SourceError::BlockNotFound {
                number,
                source_name: format!("devnet (head is {head})"),
            });
        }
        Ok(BlockRef {
            number,
            hash: self.block_hash(number),
            parent_hash: self.parent_hash(number),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runner_core::models::decode_transfer;

    fn devnet() -> DevnetSource {
        DevnetSource::new(Chain::new("ethereum").unwrap(), DevnetConfig::default())
    }

    #[test]
    fn blocks_are_deterministic_and_realistic() {
        let (a, b) = (devnet(), devnet());
        let x = a.generate(12_345);
        assert_eq!(x, b.generate(12_345), "same seed, same block");
        assert_ne!(x.hash, a.generate(12_346).hash);
        assert_eq!(a.generate(12_346).parent_hash, x.hash);
        let blocks: Vec<_> = (0..50).map(|n| a.generate(n)).collect();
        let txs: usize = blocks.iter().map(|b| b.transactions.len()).sum();
        let logs: usize = blocks.iter().map(|b| b.logs.len()).sum();
        assert!((120 * 50..=180 * 50).contains(&txs), "{txs}");
        assert!((240 * 50..=360 * 50).contains(&logs), "{logs}");
        let erc20 = blocks
            .iter()
            .flat_map(|b| &b.logs)
            .filter(|l| decode_transfer(l).is_some())
            .count();
        let erc721 = blocks
            .iter()
            .flat_map(|b| &b.logs)
            .filter(|l| l.topics.len() == 4)
            .count();
        assert!(erc20 > logs / 3 && erc721 > logs / 20, "{erc20} {erc721}");
        // Zipf: the hottest account sends far more than an average one.
        let mut counts = std::collections::HashMap::new();
        for t in blocks.iter().flat_map(|b| &b.transactions) {
            *counts.entry(t.from).or_insert(0) += 1;
        }
        let max = counts.values().max().copied().unwrap();
        assert!(max > 20 * txs / ACCOUNTS, "max {max}");
        assert!(
            blocks
                .iter()
                .all(|b| b.logs.windows(2).all(|w| w[0].log_index < w[1].log_index))
        );
    }

    #[tokio::test]
    async fn block_ref_is_the_generated_blocks_header() {
        let d = devnet();
        for n in [0, 1, 12_345] {
            let block = d.generate(n);
            assert_eq!(
                d.block_ref(n).await.unwrap(),
                BlockRef {
                    number: n,
                    hash: block.hash,
                    parent_hash: block.parent_hash
                }
            );
        }
        let head = d.head_number();
        assert!(matches!(
            d.block_ref(head + 1_000).await,
            Err(SourceError::BlockNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn head_gates_blocks() {
        let d = DevnetSource::from_url(
            Chain::new("ethereum").unwrap(),
            "devnet://?head=100&block_time_ms=3600000",
        )
        .unwrap();
        assert_eq!(d.head().await.unwrap().number, 100);
        assert_eq!(
            d.blocks(BlockRange::new(90, 100).unwrap())
                .await
                .unwrap()
                .len(),
            11
        );
        let err = d
            .blocks(BlockRange::new(90, 101).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("head is 100"), "{err}");
    }

    #[tokio::test]
    async fn zero_txs_or_logs_load_empty_blocks() {
        for (url, has_txs, has_logs) in [
            ("devnet://?head=100&logs=0", true, false),
            ("devnet://?head=100&txs=0", false, false),
            ("devnet://?head=100&txs=0&logs=0", false, false),
            ("devnet://?head=100&txs=1&logs=1", true, true),
        ] {
            let d = DevnetSource::from_url(Chain::new("ethereum").unwrap(), url).unwrap();
            let blocks = d.blocks(BlockRange::new(0, 100).unwrap()).await.unwrap();
            assert_eq!(blocks.len(), 101, "{url}");
            let txs: usize = blocks.iter().map(|b| b.transactions.len()).sum();
            let logs: usize = blocks.iter().map(|b| b.logs.len()).sum();
            assert_eq!(txs > 0, has_txs, "{url}: {txs} transactions");
            assert_eq!(logs > 0, has_logs, "{url}: {logs} logs");
            if has_txs {
                assert!(blocks.iter().all(|b| !b.transactions.is_empty()), "{url}");
            }
            assert_eq!(blocks[100].parent_hash, blocks[99].hash, "{url}");
        }
    }

    #[test]
    fn delay_parses_and_defaults_to_none() {
        let c = DevnetConfig::from_url("devnet://?delay_ms=1500&block_time_ms=500").unwrap();
        assert_eq!(c.delay, Duration::from_millis(1500));
        assert_eq!(c.block_time, Duration::from_millis(500));
        assert_eq!(
            DevnetConfig::from_url("devnet://").unwrap().delay,
            Duration::ZERO
        );
        let err = DevnetConfig::from_url("devnet://?delay_ms=soon").unwrap_err();
        assert!(err.to_string().contains("delay_ms=\"soon\""), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_slows_every_load_without_changing_content() {
        let chain = Chain::new("ethereum").unwrap();
        let slow =
            DevnetSource::from_url(chain.clone(), "devnet://?head=10&delay_ms=1500").unwrap();
        let fast = DevnetSource::from_url(chain, "devnet://?head=10").unwrap();
        let range = BlockRange::new(3, 5).unwrap();
        let t0 = tokio::time::Instant::now();
        let slow_blocks = slow.blocks(range).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(1500));
        assert_eq!(slow_blocks, fast.blocks(range).await.unwrap());
    }

    #[test]
    fn urls_parse_into_a_config_or_name_what_is_wrong() {
        type Case = (&'static str, Result<(u64, u64), &'static str>);
        let cases: [Case; 8] = [
            ("devnet://", Ok((1_000_000, 1))),
            ("devnet://?head=10&seed=7", Ok((10, 7))),
            ("devnet:///?seed=3&", Ok((1_000_000, 3))),
            ("devnet://?blocktime=5", Err("unknown field `blocktime`")),
            ("devnet://?wait=1", Err("delay_ms")),
            ("devnet://?head=-1", Err("head=\"-1\"")),
            ("devnet://?head=1&head=2", Err("duplicate field `head`")),
            (
                "devnet://?token=hunter22",
                Err("devnet://?token=***: unknown field `token`"),
            ),
        ];
        for (url, want) in cases {
            match (DevnetConfig::from_url(url), want) {
                (Ok(c), Ok(want)) => assert_eq!((c.head, c.seed), want, "{url}"),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{url}: {e}");
                    assert!(!e.contains("hunter22"), "{url}: {e}");
                }
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn errors_never_show_a_password() {
        // Found by fuzz/fuzz_targets/adapter_url.rs: the user info was quoted back as an
        // unknown parameter.
        let err = DevnetConfig::from_url("devnet://e00E:wJaetpw@db:5432/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes no user info"), "{err}");
        assert!(!err.contains("wJaetpw"), "{err}");
        let err = DevnetConfig::from_url("https://u:hunter22@node")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a devnet URL"), "{err}");
        assert!(!err.contains("hunter22"), "{err}");
    }
}
