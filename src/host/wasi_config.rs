//! `wasi:config@0.2.0-draft`, `store` and its first-draft name `runtime`, as wasmCloud hosts
//! them: the component's `config` entries of the manifest (named configs' properties merged in
//! order), read-only.

use super::bindings::config::{runtime, store};
use super::state::HostState;

impl store::Host for HostState {
    #[tracing::instrument(name = "wasi_config.get", level = "debug", skip_all)]
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        Ok(Ok(self.grants.config.get(&key).cloned()))
    }

    #[tracing::instrument(name = "wasi_config.get_all", level = "debug", skip_all)]
    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(self
            .grants
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

impl runtime::Host for HostState {
    #[tracing::instrument(name = "wasi_config.runtime.get", level = "debug", skip_all)]
    fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, runtime::ConfigError>> {
        Ok(Ok(self.grants.config.get(&key).cloned()))
    }

    #[tracing::instrument(name = "wasi_config.runtime.get_all", level = "debug", skip_all)]
    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, runtime::ConfigError>> {
        Ok(Ok(self
            .grants
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}
