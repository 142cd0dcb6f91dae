//! Tests: the hub's JetStream found without --js-domain, and nats-server's state from its monitoring port.
