//! Stellar ledgers: the two storage layouts, XDR decoding with `stellar-xdr`,
//! and the participant rules of lighthorizon's `all/all` and `all/payments`.
//!
//! Layouts (detected at open):
//! - **meta-archive** (lighthorizon): `ledgers/<seq>` holds a 4-byte XDR union
//!   discriminant (must be 0) then a `LedgerCloseMeta`; `latest` holds the
//!   last sequence as decimal text.
//! - **data-lake** (Galexie): zstd-compressed `LedgerCloseMetaBatch` objects
//!   named `<hex>--<start>[-<end>].xdr.zstd`, possibly in partition folders.
//!
//! Participant rules, per transaction (failed ones included, like lighthorizon):
//! - `all/all`: the transaction source, the fee-bump fee source, every
//!   operation's source (defaulting to the transaction source) and every
//!   operation's counter-party: create_account / payment / path payment /
//!   account_merge destinations, allow_trust and set_trust_line_flags
//!   trustors, create_claimable_balance claimants, begin_sponsoring sponsored
//!   account, revoke_sponsorship's account (account, trustline, offer seller,
//!   data, signer) and clawback's `from`.
//! - `all/payments`: for create_account, payment, both path payments and
//!   account_merge only, the operation source and destination.
//!
//! Muxed accounts are reduced to their `G...` account everywhere.
//! Transaction positions are TOIDs with the 1-based index in apply order
//! (`tx_processing`), so envelopes need not be hashed; the network
//! passphrase is still checked once per ledger by hashing the first envelope.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use stellar_xdr::{
    FeeBumpTransactionInnerTx, GeneralizedTransactionSet, LedgerCloseMeta, LedgerCloseMetaBatch,
    LedgerKey, Limited, Limits, OperationBody, ReadXdr, RevokeSponsorshipOp, TransactionEnvelope,
    TransactionPhase, TxSetComponent,
};

use crate::account::Account;
use crate::checkpoint::{CheckpointPart, CheckpointSpan, STELLAR_SPAN};
use crate::error::{Error, Result};
use crate::extract::{CheckpointFacts, MASK_ALL, MASK_PAYMENT, Modules, toid};
use crate::source::LedgerSource;
use crate::store::StoreRoot;

/// Testnet passphrase.
pub const TESTNET_PASSPHRASE: &str = "Test SDF Network ; September 2015";
/// Pubnet passphrase.
pub const PUBNET_PASSPHRASE: &str = "Public Global Stellar Network ; September 2015";

/// Concurrent object reads per checkpoint.
const FETCH_CONCURRENCY: usize = 16;

/// Deepest XDR nesting decoded (every struct, union, option and array level
/// counts one). Real ledgers stay far below it (soroban-env's own default is
/// 500); it exists so that a hostile object (say a claim predicate nested a
/// million times) fails with an error instead of overflowing the decoding
/// thread's stack, which would abort the process. Tests check that nesting
/// up to this limit decodes on a 2 MiB thread.
pub const XDR_DEPTH_LIMIT: u32 = 500;

/// Largest decompressed data-lake object accepted, in bytes of XDR. Galexie
/// writes one to a few dozen ledgers per object, each at most a few MiB of
/// XDR. Objects are decoded as they decompress (no buffer of the whole
/// object), and decoding stops at this bound, so a small zstd bomb costs at
/// most a small multiple of it in memory instead of filling it.
pub const MAX_LAKE_OBJECT_BYTES: usize = 512 << 20;

/// XDR read limits for an input of `input_len` bytes: nesting bounded by
/// [`XDR_DEPTH_LIMIT`], and no length field may claim more bytes than the
/// input holds (so a hostile length cannot make the decoder allocate more
/// than the input's size).
pub fn xdr_limits(input_len: usize) -> Limits {
    Limits {
        depth: XDR_DEPTH_LIMIT,
        len: input_len,
    }
}

#[derive(Debug, Clone)]
enum Layout {
    MetaArchive { latest: u32 },
    DataLake { files: Arc<Vec<LakeFile>> },
}

#[derive(Debug, Clone)]
struct LakeFile {
    start: u32,
    end: u32,
    rel: String,
}

/// A Stellar ledger source over one of the two layouts.
#[derive(Debug, Clone)]
pub struct StellarSource {
    root: StoreRoot,
    layout: Layout,
    network_id: [u8; 32],
}

/// Parses a data-lake object name `<hex>--<start>[-<end>].xdr.zstd`.
pub fn parse_lake_name(name: &str) -> Option<(u32, u32)> {
    let file = name.rsplit('/').next()?;
    let stem = file.strip_suffix(".xdr.zstd")?;
    let (_, range) = stem.split_once("--")?;
    match range.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let a = range.parse().ok()?;
            Some((a, a))
        }
    }
}

impl StellarSource {
    /// Opens `root`, detecting the layout: a `latest` object means
    /// meta-archive, otherwise the root is listed for data-lake files.
    pub async fn open(root: StoreRoot, network_passphrase: &str) -> Result<Self> {
        let network_id: [u8; 32] = Sha256::digest(network_passphrase.as_bytes()).into();
        let layout = match root.get_opt("latest").await? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let latest = text.trim().parse::<u32>().map_err(|_| {
                    Error::corrupt(
                        root.describe("latest"),
                        format!("expected a ledger sequence, found `{}`", text.trim()),
                    )
                })?;
                Layout::MetaArchive { latest }
            }
            None => {
                let mut files: Vec<LakeFile> = root
                    .list("")
                    .await?
                    .into_iter()
                    .filter_map(|(rel, _)| {
                        let (start, end) = parse_lake_name(&rel)?;
                        Some(LakeFile { start, end, rel })
                    })
                    .collect();
                if files.is_empty() {
                    return Err(Error::NotFound(format!(
                        "{}: neither a meta-archive (`latest` + `ledgers/<seq>`) nor a data lake (`*--<start>.xdr.zstd` files)",
                        root.describe("")
                    )));
                }
                files.sort_by_key(|f| f.start);
                Layout::DataLake {
                    files: Arc::new(files),
                }
            }
        };
        Ok(StellarSource {
            root,
            layout,
            network_id,
        })
    }

    /// Reads and decodes every ledger of `first..=last` (no extraction):
    /// the decode-only floor measured by the benchmark.
    pub async fn decode_range(&self, first: u32, last: u32) -> Result<Vec<LedgerCloseMeta>> {
        self.fetch_decoded(first, last).await
    }

    async fn fetch_decoded(&self, first: u32, last: u32) -> Result<Vec<LedgerCloseMeta>> {
        match &self.layout {
            Layout::MetaArchive { .. } => {
                let root = self.root.clone();
                let raws: Vec<(u32, bytes::Bytes)> = futures::stream::iter(first..=last)
                    .map(|seq| {
                        let root = root.clone();
                        async move {
                            let rel = format!("ledgers/{seq}");
                            let b = root.get(&rel).await?;
                            Ok::<_, Error>((seq, b))
                        }
                    })
                    .buffered(FETCH_CONCURRENCY)
                    .try_collect()
                    .await?;
                let root = self.root.clone();
                tokio::task::spawn_blocking(move || {
                    raws.iter()
                        .map(|(seq, b)| {
                            decode_meta_archive_ledger(
                                &root.describe(&format!("ledgers/{seq}")),
                                *seq,
                                b,
                            )
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .await
                .map_err(|e| Error::decode("ledger batch", e))?
            }
            Layout::DataLake { files } => {
                // Files are sorted by start and do not overlap: skip to the
                // first one that can hold `first`.
                let from = files.partition_point(|f| f.end < first);
                let wanted: Vec<LakeFile> = files[from..]
                    .iter()
                    .take_while(|f| f.start <= last)
                    .filter(|f| f.end >= first)
                    .cloned()
                    .collect();
                let root = self.root.clone();
                let raws: Vec<(String, bytes::Bytes)> =
                    futures::stream::iter(wanted)
                        .map(|f| {
                            let root = root.clone();
                            async move {
                                Ok::<_, Error>((root.describe(&f.rel), root.get(&f.rel).await?))
                            }
                        })
                        .buffered(FETCH_CONCURRENCY)
                        .try_collect()
                        .await?;
                let metas = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    for (name, b) in &raws {
                        out.extend(decode_lake_file(name, b)?.ledger_close_metas.to_vec());
                    }
                    Ok::<_, Error>(out)
                })
                .await
                .map_err(|e| Error::decode("ledger batch", e))??;
                let mut metas: Vec<LedgerCloseMeta> = metas
                    .into_iter()
                    .filter(|m| (first..=last).contains(&ledger_seq(m)))
                    .collect();
                metas.sort_by_key(ledger_seq);
                // Every ledger of the range must be there exactly once.
                for (expected, m) in
                    (first..=last).zip(metas.iter().map(ledger_seq).chain(std::iter::repeat(0)))
                {
                    if m != expected {
                        return Err(Error::NotFound(format!(
                            "ledger {expected} is missing from the data lake at {} (or duplicated)",
                            self.root.describe("")
                        )));
                    }
                }
                if metas.len() as u64 != u64::from(last - first) + 1 {
                    return Err(Error::corrupt(
                        self.root.describe(""),
                        format!("ledgers {first}..={last} appear more than once"),
                    ));
                }
                Ok(metas)
            }
        }
    }
}

/// Decodes a meta-archive `ledgers/<seq>` object; `name` is used in errors.
pub fn decode_meta_archive_ledger(name: &str, seq: u32, bytes: &[u8]) -> Result<LedgerCloseMeta> {
    if bytes.len() < 4 {
        return Err(Error::decode(
            name,
            "object shorter than its 4-byte version prefix",
        ));
    }
    let version = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    if version != 0 {
        return Err(Error::decode(
            name,
            format!("unknown serialized meta version {version} (expected 0)"),
        ));
    }
    let xdr = &bytes[4..];
    let meta = LedgerCloseMeta::from_xdr(xdr, xdr_limits(xdr.len()))
        .map_err(|e| Error::decode(name, format!("bad LedgerCloseMeta XDR: {e}")))?;
    let found = ledger_seq(&meta);
    if found != seq {
        return Err(Error::decode(
            name,
            format!("holds ledger {found}, not {seq}"),
        ));
    }
    Ok(meta)
}

/// Decodes one data-lake object (zstd of a `LedgerCloseMetaBatch`),
/// refusing one whose XDR runs past [`MAX_LAKE_OBJECT_BYTES`].
pub fn decode_lake_file(name: &str, bytes: &[u8]) -> Result<LedgerCloseMetaBatch> {
    decode_lake_file_limited(name, bytes, MAX_LAKE_OBJECT_BYTES)
}

/// [`decode_lake_file`] with the decompressed-size bound `max_bytes`: the
/// XDR is read straight from the decompressor, at most `max_bytes` of it,
/// with nesting bounded by [`XDR_DEPTH_LIMIT`].
pub fn decode_lake_file_limited(
    name: &str,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<LedgerCloseMetaBatch> {
    let decoder = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| Error::decode(name, format!("bad zstd stream: {e}")))?;
    let mut reader = Limited::new(
        std::io::BufReader::new(decoder),
        Limits {
            depth: XDR_DEPTH_LIMIT,
            len: max_bytes,
        },
    );
    LedgerCloseMetaBatch::read_xdr_to_end(&mut reader).map_err(|e| match e {
        stellar_xdr::Error::LengthLimitExceeded => Error::decode(
            name,
            format!(
                "decompresses to more than {max_bytes} bytes of XDR (or a length field claims more): \
                 refused as a likely zstd bomb ({} bytes compressed)",
                bytes.len()
            ),
        ),
        stellar_xdr::Error::Io(e) => {
            Error::decode(name, format!("bad zstd stream or truncated XDR: {e}"))
        }
        e => Error::decode(name, format!("bad LedgerCloseMetaBatch XDR: {e}")),
    })
}

/// Sequence number of a ledger.
pub fn ledger_seq(meta: &LedgerCloseMeta) -> u32 {
    match meta {
        LedgerCloseMeta::V0(m) => m.ledger_header.header.ledger_seq,
        LedgerCloseMeta::V1(m) => m.ledger_header.header.ledger_seq,
        LedgerCloseMeta::V2(m) => m.ledger_header.header.ledger_seq,
    }
}

/// Protocol version of a ledger.
pub fn ledger_protocol(meta: &LedgerCloseMeta) -> u32 {
    match meta {
        LedgerCloseMeta::V0(m) => m.ledger_header.header.ledger_version,
        LedgerCloseMeta::V1(m) => m.ledger_header.header.ledger_version,
        LedgerCloseMeta::V2(m) => m.ledger_header.header.ledger_version,
    }
}

/// Every envelope of the ledger's transaction set (set order).
pub fn envelopes(meta: &LedgerCloseMeta) -> Vec<&TransactionEnvelope> {
    fn generalized(set: &GeneralizedTransactionSet) -> Vec<&TransactionEnvelope> {
        let GeneralizedTransactionSet::V1(v1) = set;
        let mut out = Vec::new();
        for phase in v1.phases.iter() {
            match phase {
                TransactionPhase::V0(components) => {
                    for c in components.iter() {
                        let TxSetComponent::TxsetCompTxsMaybeDiscountedFee(c) = c;
                        out.extend(c.txs.iter());
                    }
                }
                TransactionPhase::V1(par) => {
                    for stage in par.execution_stages.iter() {
                        for cluster in stage.0.iter() {
                            out.extend(cluster.0.iter());
                        }
                    }
                }
            }
        }
        out
    }
    match meta {
        LedgerCloseMeta::V0(m) => m.tx_set.txs.iter().collect(),
        LedgerCloseMeta::V1(m) => generalized(&m.tx_set),
        LedgerCloseMeta::V2(m) => generalized(&m.tx_set),
    }
}

/// Transaction hashes in apply order.
pub fn applied_hashes(meta: &LedgerCloseMeta) -> Vec<[u8; 32]> {
    match meta {
        LedgerCloseMeta::V0(m) => m
            .tx_processing
            .iter()
            .map(|t| t.result.transaction_hash.0)
            .collect(),
        LedgerCloseMeta::V1(m) => m
            .tx_processing
            .iter()
            .map(|t| t.result.transaction_hash.0)
            .collect(),
        LedgerCloseMeta::V2(m) => m
            .tx_processing
            .iter()
            .map(|t| t.result.transaction_hash.0)
            .collect(),
    }
}

/// Adds the participants of one envelope to `facts` (rules in the module docs).
pub fn add_envelope_participants(env: &TransactionEnvelope, facts: &mut CheckpointFacts) {
    let (tx_source, ops) = match env {
        TransactionEnvelope::TxV0(e) => (
            Account::Stellar(e.tx.source_account_ed25519.0),
            &e.tx.operations,
        ),
        TransactionEnvelope::Tx(e) => (Account::from_muxed(&e.tx.source_account), &e.tx.operations),
        TransactionEnvelope::TxFeeBump(e) => {
            facts.add(Account::from_muxed(&e.tx.fee_source), MASK_ALL);
            let FeeBumpTransactionInnerTx::Tx(inner) = &e.tx.inner_tx;
            (
                Account::from_muxed(&inner.tx.source_account),
                &inner.tx.operations,
            )
        }
    };
    facts.add(tx_source, MASK_ALL);
    for op in ops.iter() {
        let source = op
            .source_account
            .as_ref()
            .map_or(tx_source, Account::from_muxed);
        let mask = match op.body {
            OperationBody::CreateAccount(_)
            | OperationBody::Payment(_)
            | OperationBody::PathPaymentStrictReceive(_)
            | OperationBody::PathPaymentStrictSend(_)
            | OperationBody::AccountMerge(_) => MASK_PAYMENT,
            _ => MASK_ALL,
        };
        facts.add(source, mask);
        match &op.body {
            OperationBody::CreateAccount(o) => {
                facts.add(Account::from_account_id(&o.destination), mask)
            }
            OperationBody::Payment(o) => facts.add(Account::from_muxed(&o.destination), mask),
            OperationBody::PathPaymentStrictReceive(o) => {
                facts.add(Account::from_muxed(&o.destination), mask)
            }
            OperationBody::PathPaymentStrictSend(o) => {
                facts.add(Account::from_muxed(&o.destination), mask)
            }
            OperationBody::AccountMerge(d) => facts.add(Account::from_muxed(d), mask),
            OperationBody::AllowTrust(o) => facts.add(Account::from_account_id(&o.trustor), mask),
            OperationBody::SetTrustLineFlags(o) => {
                facts.add(Account::from_account_id(&o.trustor), mask)
            }
            OperationBody::CreateClaimableBalance(o) => {
                for c in o.claimants.iter() {
                    let stellar_xdr::Claimant::ClaimantTypeV0(c) = c;
                    facts.add(Account::from_account_id(&c.destination), mask);
                }
            }
            OperationBody::BeginSponsoringFutureReserves(o) => {
                facts.add(Account::from_account_id(&o.sponsored_id), mask)
            }
            OperationBody::RevokeSponsorship(RevokeSponsorshipOp::Signer(s)) => {
                facts.add(Account::from_account_id(&s.account_id), mask)
            }
            OperationBody::RevokeSponsorship(RevokeSponsorshipOp::LedgerEntry(key)) => {
                let account = match key {
                    LedgerKey::Account(k) => Some(&k.account_id),
                    LedgerKey::Trustline(k) => Some(&k.account_id),
                    LedgerKey::Offer(k) => Some(&k.seller_id),
                    LedgerKey::Data(k) => Some(&k.account_id),
                    _ => None,
                };
                if let Some(a) = account {
                    facts.add(Account::from_account_id(a), mask);
                }
            }
            OperationBody::Clawback(o) => facts.add(Account::from_muxed(&o.from), mask),
            _ => {}
        }
    }
}

/// Adds one decoded ledger's facts. `network_id` is SHA-256 of the
/// passphrase, checked against the first transaction's hash.
pub fn add_ledger_facts(
    name: &str,
    meta: &LedgerCloseMeta,
    network_id: [u8; 32],
    modules: Modules,
    facts: &mut CheckpointFacts,
) -> Result<()> {
    let seq = ledger_seq(meta);
    let envs = envelopes(meta);
    let hashes = applied_hashes(meta);
    if envs.len() != hashes.len() {
        return Err(Error::decode(
            name,
            format!(
                "{} envelopes but {} transaction results",
                envs.len(),
                hashes.len()
            ),
        ));
    }
    if let Some(first) = envs.first() {
        let h = first
            .hash(network_id)
            .map_err(|e| Error::decode(name, format!("cannot hash transaction: {e}")))?;
        if !hashes.contains(&h) {
            return Err(Error::invalid(format!(
                "{name}: transaction hashes do not match the NETWORK_PASSPHRASE (wrong network?)"
            )));
        }
    }
    if modules.accounts {
        for env in &envs {
            add_envelope_participants(env, facts);
        }
    }
    if modules.transactions {
        for (i, h) in hashes.iter().enumerate() {
            facts.transactions.push((*h, toid(seq, i as u32 + 1, 0)));
        }
    }
    facts.ledgers += 1;
    Ok(())
}

#[async_trait]
impl LedgerSource for StellarSource {
    fn span(&self) -> CheckpointSpan {
        CheckpointSpan::new(STELLAR_SPAN).expect("64 > 0")
    }

    async fn available(&self) -> Result<(u32, u32)> {
        match &self.layout {
            Layout::MetaArchive { latest } => {
                let listed = self.root.list("ledgers").await?;
                let first = listed
                    .iter()
                    .filter_map(|(rel, _)| rel.strip_prefix("ledgers/")?.parse::<u32>().ok())
                    .min()
                    .ok_or_else(|| Error::NotFound(self.root.describe("ledgers/")))?;
                Ok((first, *latest))
            }
            Layout::DataLake { files } => Ok((
                files.iter().map(|f| f.start).min().unwrap_or(0),
                files.iter().map(|f| f.end).max().unwrap_or(0),
            )),
        }
    }

    async fn latest(&self) -> Result<u32> {
        match &self.layout {
            Layout::MetaArchive { latest } => Ok(*latest),
            Layout::DataLake { files } => Ok(files.iter().map(|f| f.end).max().unwrap_or(0)),
        }
    }

    async fn checkpoint_facts(
        &self,
        part: CheckpointPart,
        modules: Modules,
    ) -> Result<CheckpointFacts> {
        let metas = self.fetch_decoded(part.first(), part.last()).await?;
        let network_id = self.network_id;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut facts = CheckpointFacts::new(part.checkpoint());
            for m in &metas {
                let name = root.describe(&format!("ledger {}", ledger_seq(m)));
                add_ledger_facts(&name, m, network_id, modules, &mut facts)?;
            }
            Ok(facts)
        })
        .await
        .map_err(|e| Error::decode("checkpoint", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muxed_accounts_count_as_their_base_account() {
        use stellar_xdr::{
            Asset, MuxedAccount, MuxedAccountMed25519, Operation, PaymentOp, Transaction,
            TransactionExt, TransactionV1Envelope, Uint256,
        };
        let muxed = |key: u8, id: u64| {
            MuxedAccount::MuxedEd25519(MuxedAccountMed25519 {
                id,
                ed25519: Uint256([key; 32]),
            })
        };
        let pay = |src: Option<MuxedAccount>, dst: MuxedAccount| Operation {
            source_account: src,
            body: OperationBody::Payment(PaymentOp {
                destination: dst,
                asset: Asset::Native,
                amount: 1,
            }),
        };
        let tx = Transaction {
            source_account: muxed(1, 7),
            fee: 100,
            seq_num: stellar_xdr::SequenceNumber(1),
            cond: stellar_xdr::Preconditions::None,
            memo: stellar_xdr::Memo::None,
            operations: vec![
                pay(None, muxed(2, 9)),
                pay(Some(muxed(3, 1)), MuxedAccount::Ed25519(Uint256([2; 32]))),
            ]
            .try_into()
            .unwrap(),
            ext: TransactionExt::V0,
        };
        let env = TransactionEnvelope::Tx(TransactionV1Envelope {
            tx,
            signatures: Default::default(),
        });
        let mut facts = CheckpointFacts::new(1);
        add_envelope_participants(&env, &mut facts);
        let mut got: Vec<(Account, u8)> = facts.accounts.into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (Account::Stellar([1; 32]), MASK_PAYMENT),
                (Account::Stellar([2; 32]), MASK_PAYMENT),
                (Account::Stellar([3; 32]), MASK_PAYMENT),
            ]
        );
    }

    #[test]
    fn lake_names() {
        assert_eq!(
            parse_lake_name("FCD285FF--53312000.xdr.zstd"),
            Some((53312000, 53312000))
        );
        assert_eq!(parse_lake_name("a/FFFFFFFF--0-63.xdr.zstd"), Some((0, 63)));
        assert_eq!(parse_lake_name("latest"), None);
    }

    #[test]
    fn short_or_wrong_version_objects_are_named() {
        let e = decode_meta_archive_ledger("ledgers/5", 5, &[0, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ledgers/5"), "{e}");
        let e = decode_meta_archive_ledger("ledgers/5", 5, &[0, 0, 0, 9, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
