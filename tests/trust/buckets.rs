//! Issue 13: buckets.

#[allow(unused_imports)]
use crate::common;
