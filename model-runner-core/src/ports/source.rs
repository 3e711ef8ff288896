//! [`BlockSource`]: where a chain's blocks come from.

use std::fmt;
use std::sync::Arc;

use alloy_primitives::Bytes;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{StreamExt, stream};

use crate::chain::{BlockRange, Chain};
use crate::data::{Block, BlockHead, BlockRef, CallRequest};

/// A block source failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A block the source does not have (yet).
    #[error("block {number} not available from {source_name}")]
    BlockNotFound {
        /// Block number.
        number: u64,
        /// Which source.
        source_name: String,
    },
    /// The source cannot do this (e.g. `call` on a file source).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The contract call reverted (or the node refused to execute it): an answer about the
    /// contract's state, not a failure of the node; retrying gives the same answer.
    #[error("call reverted: {0}")]
    Reverted(String),
    /// Data that does not parse.
    #[error("invalid chain data: {0}")]
    InvalidData(String),
    /// An answer to [`BlockSource::blocks`] that is not exactly the blocks of the range,
    /// ascending ([`check_whole_range`]): short (a node behind a load balancer that has not
    /// reached the range yet, a source with a hole), out of order, or holding other blocks.
    /// Asking again later may give the whole range.
    #[error(
        "blocks {range}: the source answered {got} blocks{}, not exactly the range's blocks in order",
        answered(.first, .last)
    )]
    RangeMismatch {
        /// The range asked for.
        range: BlockRange,
        /// How many blocks came back.
        got: usize,
        /// The first block number that came back.
        first: Option<u64>,
        /// The last block number that came back.
        last: Option<u64>,
    },
    /// The node is unreachable or rate-limits; retry later.
    #[error("chain source unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Any other backend failure.
    #[error("chain source {adapter}: {source}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One chain's blocks, head and contract state.
///
/// # Contract
///
/// - `head` MUST return the latest block the source can serve.
/// - `blocks` MUST return every block of the range, ascending, each with all its transactions
///   and logs (and receipts when the source has them), or an error: never a partial range.
///   A block past the head is `BlockNotFound`.
/// - The same block number MUST give the same block until a reorg replaces it (then the hash
///   differs).
/// - `call` MUST read contract state as of the block whose hash is the request's `block_hash`
///   (EIP-1898), never of another block with the same number, or say `Unsupported`. A call the
///   contract refuses (it reverts) MUST be [`SourceError::Reverted`], so a reads model can record
///   it apart from a node that failed. A wrapper MAY cache answers by (chain, block hash, to,
///   data) ([`CachedCalls`](crate::ports::CachedCalls)): they never change. Errors are never cached.
/// - `calls` MUST give exactly one answer per request, in the requests' order, each the answer
///   `call` of that request would give; one request's revert or failure MUST NOT change the
///   others' answers.
#[async_trait]
pub trait BlockSource: fmt::Debug + Send + Sync + 'static {
    /// The chain this source serves.
    fn chain(&self) -> &Chain;
    /// The latest block.
    async fn head(&self) -> Result<BlockHead, SourceError>;
    /// The blocks of `range`.
    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError>;
    /// Where block `number` of the source's current chain sits: its hash and parent hash. The
    /// scheduler asks this of each realtime run's last block and, after a reorg, walks back
    /// with it to the common ancestor. The default loads the whole block; a source that can
    /// read a header alone (JSON-RPC `eth_getBlockByNumber(n, false)`) SHOULD override it.
    /// A block past the head is `BlockNotFound`; an answer that is not that one block is
    /// [`SourceError::RangeMismatch`].
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        let range = BlockRange::single(number);
        let blocks = self.blocks(range).await?;
        let block = blocks.first().ok_or_else(|| SourceError::BlockNotFound {
            number,
            source_name: self.chain().to_string(),
        })?;
        check_whole_range(range, &blocks)?;
        Ok(BlockRef {
            number: block.number,
            hash: block.hash,
            parent_hash: block.parent_hash,
        })
    }
    /// Reads contract state (`eth_call`).
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        let _ = request;
        Err(SourceError::Unsupported(format!(
            "this {} source cannot call contracts",
            self.chain()
        )))
    }
    /// [`call`](Self::call) for each of `requests`: one answer per request, in the requests'
    /// order, each what `call` of that request would give (a revert is that element's
    /// [`SourceError::Reverted`], never the others'). A source MAY send them together (JSON-RPC
    /// batches) and MAY ask a node once for identical requests. The default calls `call` for
    /// each, at most [`CALLS_IN_FLIGHT`] at a time.
    async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
        // Boxed futures, collected first: the async-trait future must be `Send` for every
        // lifetime, which a stream mapping a closure cannot show the compiler.
        let calls: Vec<BoxFuture<'_, Result<Bytes, SourceError>>> =
            requests.iter().map(|r| self.call(r)).collect();
        stream::iter(calls)
            .buffered(CALLS_IN_FLIGHT)
            .collect()
            .await
    }
}

/// `" (block F first, block L last)"` of a [`SourceError::RangeMismatch`] with blocks.
fn answered(first: &Option<u64>, last: &Option<u64>) -> String {
    match (first, last) {
        (Some(f), Some(l)) => format!(" (block {f} first, block {l} last)"),
        _ => String::new(),
    }
}

/// Checks an answer of [`BlockSource::blocks`] against the contract: exactly the blocks of
/// `range`, ascending, each once; otherwise [`SourceError::RangeMismatch`]. The worker,
/// batch-index's runner source, the default [`BlockSource::block_ref`] and the conformance
/// suite check what they read with it, so a source that answers short or with other blocks
/// never makes a run or an index that silently lacks blocks.
///
/// ```
/// use model_runner_core::ports::{SourceError, check_whole_range};
/// use model_runner_core::{Block, BlockRange};
///
/// let block = |n| Block::empty(n, Default::default(), Default::default(), 0);
/// let range = BlockRange::new(7, 8).unwrap();
/// assert!(check_whole_range(range, &[block(7), block(8)]).is_ok());
/// let short = check_whole_range(range, &[block(7)]).unwrap_err();
/// assert!(matches!(short, SourceError::RangeMismatch { got: 1, .. }), "{short}");
/// assert!(check_whole_range(range, &[block(8), block(7)]).is_err());
/// ```
pub fn check_whole_range(range: BlockRange, blocks: &[Block]) -> Result<(), SourceError> {
    if blocks
        .iter()
        .map(|b| b.number)
        .eq(range.start()..=range.end())
    {
        return Ok(());
    }
    Err(SourceError::RangeMismatch {
        range,
        got: blocks.len(),
        first: blocks.first().map(|b| b.number),
        last: blocks.last().map(|b| b.number),
    })
}

/// Calls the default [`BlockSource::calls`] keeps in flight at most.
pub const CALLS_IN_FLIGHT: usize = 16;

#[async_trait]
impl<T: BlockSource + ?Sized> BlockSource for Arc<T> {
    fn chain(&self) -> &Chain {
        (**self).chain()
    }
    async fn head(&self) -> Result<BlockHead, SourceError> {
        (**self).head().await
    }
    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        (**self).blocks(range).await
    }
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        (**self).block_ref(number).await
    }
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        (**self).call(request).await
    }
    async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
        (**self).calls(requests).await
    }
}

/// Implements [`BlockSource`] for a type that wraps another source in field `$inner`: chain,
/// head, blocks and block refs are the inner source's, and the items given (`call`, `calls`)
/// complete the impl (the trait's defaults where none are given).
///
/// A macro because `#[async_trait]` must see every method of the impl: a wrapper that only
/// changes how calls are answered (a cache, a test fake) would otherwise restate the four
/// reads by hand.
macro_rules! block_source_reading {
    (
        $inner:ident,
        impl $([$($generics:tt)*])? for $wrapper:ty { $($items:tt)* }
    ) => {
        #[async_trait::async_trait]
        impl $(<$($generics)*>)? $crate::ports::BlockSource for $wrapper {
            fn chain(&self) -> &$crate::chain::Chain {
                self.$inner.chain()
            }
            async fn head(
                &self,
            ) -> ::std::result::Result<$crate::data::BlockHead, $crate::ports::SourceError> {
                self.$inner.head().await
            }
            async fn blocks(
                &self,
                range: $crate::chain::BlockRange,
            ) -> ::std::result::Result<Vec<$crate::data::Block>, $crate::ports::SourceError> {
                self.$inner.blocks(range).await
            }
            async fn block_ref(
                &self,
                number: u64,
            ) -> ::std::result::Result<$crate::data::BlockRef, $crate::ports::SourceError> {
                self.$inner.block_ref(number).await
            }
            $($items)*
        }
    };
}
pub(crate) use block_source_reading;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use alloy_primitives::{Address, B256};

    use super::*;
    use crate::memory::MemoryBlockSource;

    fn request(i: u8) -> CallRequest {
        CallRequest {
            to: Address::repeat_byte(0xAA),
            data: Bytes::from(vec![i]),
            block: 1,
            block_hash: B256::with_last_byte(1),
        }
    }

    /// A memory source whose `call` answers the calldata back, reverts on 0xff, and yields to
    /// the other calls before answering (as a network call would), counting calls in flight.
    #[derive(Debug)]
    struct Echo {
        inner: MemoryBlockSource,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        seen: Mutex<Vec<u8>>,
    }

    block_source_reading!(inner, impl for Echo {
        async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
            self.seen.lock().unwrap().push(request.data[0]);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.max_in_flight.fetch_max(now, SeqCst);
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            self.in_flight.fetch_sub(1, SeqCst);
            if request.data[0] == 0xff {
                return Err(SourceError::Reverted("execution reverted".into()));
            }
            Ok(request.data.clone())
        }
    });

    /// A wrapper that only reads through: everything but the reads is the trait's default.
    #[derive(Debug)]
    struct ReadsOnly {
        inner: MemoryBlockSource,
    }

    block_source_reading!(inner, impl for ReadsOnly {});

    #[tokio::test]
    async fn block_source_reading_forwards_the_reads_and_keeps_the_defaults() {
        let chain = Chain::new("ethereum").unwrap();
        // Two sources built alike: the same blocks, so the wrapper's answers are the inner's.
        let inner = MemoryBlockSource::with_empty_blocks(chain.clone(), 3..=5);
        let wrapper = ReadsOnly {
            inner: MemoryBlockSource::with_empty_blocks(chain, 3..=5),
        };
        assert_eq!(wrapper.chain(), inner.chain());
        assert_eq!(wrapper.head().await.unwrap(), inner.head().await.unwrap());
        let range = BlockRange::new(3, 4).unwrap();
        assert_eq!(
            wrapper.blocks(range).await.unwrap(),
            inner.blocks(range).await.unwrap()
        );
        assert_eq!(
            wrapper.block_ref(5).await.unwrap(),
            inner.block_ref(5).await.unwrap()
        );
        assert!(matches!(
            wrapper.call(&request(1)).await,
            Err(SourceError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn default_calls_answer_each_request_in_order_within_the_bound() {
        let echo = Arc::new(Echo {
            inner: MemoryBlockSource::with_empty_blocks(Chain::new("ethereum").unwrap(), 0..=1),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let mut requests: Vec<CallRequest> = (0..40).map(request).collect();
        requests[7] = request(0xff);
        // Through `Arc<T>`, as the engine holds sources.
        let answers = echo.calls(&requests).await;
        assert_eq!(answers.len(), 40, "one answer per request");
        for (i, answer) in answers.iter().enumerate() {
            match (i, answer) {
                (7, Err(SourceError::Reverted(_))) => {}
                (i, Ok(b)) if i != 7 => assert_eq!(b.as_ref(), [i as u8]),
                (i, other) => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!(
            echo.seen.lock().unwrap().len(),
            40,
            "each request called once"
        );
        assert_eq!(
            echo.max_in_flight.load(SeqCst),
            CALLS_IN_FLIGHT,
            "concurrently, at most CALLS_IN_FLIGHT at once"
        );
        assert!(echo.calls(&[]).await.is_empty());
    }

    #[tokio::test]
    async fn default_calls_on_the_memory_source_say_unsupported_for_each_request() {
        let memory = MemoryBlockSource::with_empty_blocks(Chain::new("ethereum").unwrap(), 0..=1);
        let answers = memory.calls(&[request(1), request(2), request(3)]).await;
        assert_eq!(answers.len(), 3);
        for answer in answers {
            assert!(
                matches!(answer, Err(SourceError::Unsupported(_))),
                "{answer:?}"
            );
        }
    }

    /// Every way an answer can differ from the range, and the message each gets.
    #[test]
    fn check_whole_range_accepts_exactly_the_range_ascending() {
        let block = |n| Block::empty(n, B256::ZERO, B256::ZERO, 0);
        let blocks = |ns: &[u64]| ns.iter().map(|&n| block(n)).collect::<Vec<_>>();
        let range = BlockRange::new(7, 9).unwrap();
        let top = BlockRange::new(u64::MAX - 1, u64::MAX).unwrap();
        let cases: [(BlockRange, &[u64], Option<&str>); 9] = [
            (range, &[7, 8, 9], None),
            (top, &[u64::MAX - 1, u64::MAX], None),
            (range, &[], Some("answered 0 blocks, not exactly")),
            (
                range,
                &[7, 8],
                Some("answered 2 blocks (block 7 first, block 8 last)"),
            ),
            (
                range,
                &[7, 8, 9, 10],
                Some("answered 4 blocks (block 7 first, block 10 last)"),
            ),
            (
                range,
                &[7, 7, 9],
                Some("answered 3 blocks (block 7 first, block 9 last)"),
            ),
            (
                range,
                &[9, 8, 7],
                Some("answered 3 blocks (block 9 first, block 7 last)"),
            ),
            (
                range,
                &[8, 9, 10],
                Some("answered 3 blocks (block 8 first, block 10 last)"),
            ),
            (
                top,
                &[u64::MAX],
                Some("answered 1 blocks (block 18446744073709551615 first"),
            ),
        ];
        for (range, numbers, want) in cases {
            let got = check_whole_range(range, &blocks(numbers));
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e @ SourceError::RangeMismatch { .. }), Some(want)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{range} {numbers:?}: {e}");
                    assert!(e.starts_with(&format!("blocks {range}: ")), "{e}");
                }
                (got, want) => panic!("{range} {numbers:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Answers every range with the block before it: as many blocks, the wrong ones.
    #[derive(Debug)]
    struct OneBehind(MemoryBlockSource);

    #[async_trait]
    impl BlockSource for OneBehind {
        fn chain(&self) -> &Chain {
            self.0.chain()
        }
        async fn head(&self) -> Result<BlockHead, SourceError> {
            self.0.head().await
        }
        async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
            let behind = BlockRange::new(range.start() - 1, range.end() - 1).unwrap();
            self.0.blocks(behind).await
        }
    }

    /// The default `block_ref` used to describe whatever block came back, under any number.
    #[tokio::test]
    async fn the_default_block_ref_refuses_another_block() {
        let chain = Chain::new("ethereum").unwrap();
        let source = OneBehind(MemoryBlockSource::with_empty_blocks(chain, 0..=9));
        let e = source.block_ref(5).await.unwrap_err();
        assert!(
            matches!(e, SourceError::RangeMismatch { got: 1, .. }),
            "{e}"
        );
        let inner = MemoryBlockSource::with_empty_blocks(Chain::new("ethereum").unwrap(), 0..=9);
        assert_eq!(inner.block_ref(5).await.unwrap().number, 5);
    }
}
