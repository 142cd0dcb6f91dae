//! Tests: every task of a node supervised: restarts, degraded state in the heartbeat.
