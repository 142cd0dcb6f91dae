//! The node's one wasmtime `Engine`: component model, epoch interruption, the pooling allocator
//! sized for small VMs with a fallback to on-demand allocation, and the epoch ticker thread.
//! Also [`PoolSlots`], the pool's slots in use for `lattice_pool_slots_in_use`.

use std::time::Duration;

use anyhow::Context;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    PoolingAllocatorMetrics,
};

/// How often the epoch advances; request deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Component instances the pool holds at once by default (all components of the node
/// together): `--max-instances`.
pub const DEFAULT_POOL_INSTANCES: u32 = 1000;
/// Core instances per component instance slot: a Rust component has a few, CPython many.
const CORE_INSTANCES_PER_SLOT: u32 = 4;
/// Memories and tables per component instance slot.
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 2;

/// Linear memory kept resident (reset in place) per freed pool slot, with PAGEMAP_SCAN, in bytes.
const KEEP_RESIDENT_SCANNED_BYTES: usize = 2 * 1024 * 1024;
/// The same without PAGEMAP_SCAN, where the whole window is rewritten, in bytes.
const KEEP_RESIDENT_BYTES: usize = 1024 * 1024;
/// Table and async-stack bytes kept resident per freed slot.
const TABLE_KEEP_RESIDENT_BYTES: usize = 128 * 1024;
const STACK_KEEP_RESIDENT_BYTES: usize = 128 * 1024;

/// Guard region after a linear memory in the on-demand fallback, in bytes.
const SMALL_GUARD_BYTES: u64 = 64 * 1024;
/// Address space reserved for a linear memory to grow into in the fallback, in bytes.
const SMALL_GROWTH_RESERVATION_BYTES: u64 = 16 * 1024 * 1024;

/// Which allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Instances come from pre-reserved slots (fast instantiation).
    Pooling,
    /// Instances are mapped on demand (the pool could not be reserved).
    OnDemand,
}

/// Builds the engine with the pooling allocator holding `pool_instances` component instances
/// at once (and 4 core instances, 2 memories, 2 tables and one stack per instance), each linear
/// memory capped at `max_memory_bytes`; if the pool cannot be reserved (small VM, `ulimit -v`),
/// logs a warning and builds an on-demand engine instead. Starts the epoch ticker.
///
/// # Errors
/// Neither engine could be created.
pub fn build(max_memory_bytes: u64, pool_instances: u32) -> anyhow::Result<(Engine, Allocator)> {
    let slots = pool_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
        .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
        .total_stacks(slots)
        .max_memory_size(usize::try_from(max_memory_bytes).unwrap_or(usize::MAX));
    // Reset a freed slot by rewriting the pages an instance touched instead of `madvise`-ing
    // them away: every `madvise` in a multi-threaded process is a TLB shootdown on all cores,
    // which profiling showed as ~30% of the node's CPU at 32 connections. With the kernel's
    // PAGEMAP_SCAN (Linux 6.7+) only resident pages are rewritten, so a larger window is cheap.
    // A warm slot keeps at most this much resident. Measured with bench/http.sh.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_SCANNED_BYTES);
    } else {
        pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    }
    pool.table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        .async_stack_keep_resident(STACK_KEEP_RESIDENT_BYTES);
    let pooled =
        Engine::new(base_config().allocation_strategy(InstanceAllocationStrategy::Pooling(pool)));
    let (engine, allocator) = match pooled {
        Ok(engine) => (engine, Allocator::Pooling),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot reserve the pooling allocator's memory (small VM or limited virtual memory?); \
                 falling back to on-demand instance allocation"
            );
            // Small reservations too: the default 4 GiB + 2 GiB of address space per linear
            // memory is what such a VM cannot give. Bounds checks become explicit.
            let mut config = base_config();
            config
                .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                .memory_reservation(0)
                .memory_guard_size(SMALL_GUARD_BYTES)
                .memory_reservation_for_growth(SMALL_GROWTH_RESERVATION_BYTES);
            let engine = Engine::new(&config)
                .map_err(anyhow::Error::from)
                .context("creating the wasmtime engine")?;
            (engine, Allocator::OnDemand)
        }
    };
    start_epoch_ticker(&engine)?;
    Ok((engine, allocator))
}

/// The pooling allocator's component instance slots in use, as wasmtime counts them
/// ([`PoolingAllocatorMetrics::component_instances`]: a slot is taken when an instance is
/// made and given back when its store is dropped), written to `lattice_pool_slots_in_use` of
/// `lattice_pool_slots` (`--max-instances`). With the on-demand allocator there is no pool and
/// both stay 0. Cheap to clone.
#[derive(Clone)]
pub(super) struct PoolSlots {
    pool: Option<PoolingAllocatorMetrics>,
    total: u64,
}

impl PoolSlots {
    /// The slots of `engine`'s pool, `total` of them; sets the gauges (none in use yet).
    pub(super) fn new(engine: &Engine, total: u32) -> PoolSlots {
        let slots = PoolSlots {
            pool: engine.pooling_allocator_metrics(),
            total: u64::from(total.max(1)),
        };
        slots.update();
        slots
    }

    /// Writes the slots in use now: call it after an instance took a slot or gave it back.
    /// Two atomic loads and a store when nothing changes meanwhile. Concurrent updates may
    /// write in any order, so each reads the count again after writing and writes once more
    /// if it changed: the last update to run leaves the count of its time, so an idle node
    /// shows what it holds.
    pub(super) fn update(&self) {
        let Some(pool) = &self.pool else { return };
        let metrics = crate::admin::metrics::get();
        if !metrics.is_enabled() {
            return;
        }
        let mut seen = pool.component_instances();
        loop {
            metrics.pool_slots(seen, self.total);
            let now = pool.component_instances();
            if now == seen {
                break;
            }
            seen = now;
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("lattice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(())
}
