//! Issue 13: secrets.

#[allow(unused_imports)]
use crate::common;
