//! The run message every queue adapter decodes (`RunMessage::decode`, model-runner-core
//! `ports/queue.rs`; the RabbitMQ consumer calls it on each delivery's body).
//!
//! Properties: decoding never panics; whatever decodes encodes back to a message that decodes to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_runner_core::ports::RunMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = RunMessage::decode(data) {
        let again = RunMessage::decode(&message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message, "encode/decode round trip");
    }
});
