//! Tests: desired state with no shared store, and a store that cannot be wiped by accident.
