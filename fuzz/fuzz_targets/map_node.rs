//! Map nodes: decoding never panics; a decoded node re-encodes exactly.
#![no_main]

use blocksnap::format::node::Node;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = Node::decode(data) {
        assert!(!node.is_empty());
        assert_eq!(node.encode(), data);
    }
});
