//! Tests: requests run once, pool exhaustion is 503, Host headers are checked, traps cost the same.
