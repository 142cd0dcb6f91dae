//! Tests of issue 14: admin.
