//! Tests of issue 14: systemd.
