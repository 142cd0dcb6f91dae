//! Issue 13: listen.

#[allow(unused_imports)]
use crate::common;
