//! The node's one wasmtime `Engine`: component model, epoch interruption, the pooling allocator
//! sized for small VMs with a fallback to on-demand allocation, and the epoch ticker thread.
//! Also [`PoolSlots`], the pool's slots in use for `lattice_pool_slots_in_use` (its most used
//! resource, scaled to component instance slots).

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

/// The pooling allocator's slots in use, written to `lattice_pool_slots_in_use` of
/// `lattice_pool_slots` (`--max-instances`). A component instance slot comes with 4 core
/// instances, 2 memories, 2 tables and 1 stack, and the pool refuses an instance once any of
/// them runs out (a component of many core modules uses up core instances first), so the slots
/// in use are those of the resource furthest used, each scaled to slots ([`slots_in_use`]), as
/// wasmtime counts them ([`PoolingAllocatorMetrics`]: taken when an instance is made, given
/// back when its store is dropped). With the on-demand allocator there is no pool and both
/// stay 0. Cheap to clone.
#[derive(Clone)]
pub(super) struct PoolSlots {
    pool: Option<PoolingAllocatorMetrics>,
    total: u64,
}

/// What one pool holds in use of each resource it limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InUse {
    component_instances: u64,
    core_instances: u64,
    memories: u64,
    tables: u64,
    stacks: u64,
}

impl InUse {
    fn of(pool: &PoolingAllocatorMetrics) -> InUse {
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        InUse {
            component_instances: pool.component_instances(),
            core_instances: pool.core_instances(),
            memories: wide(pool.memories()),
            tables: wide(pool.tables()),
            stacks: wide(pool.stacks()),
        }
    }
}

/// The component instance slots `in_use` amounts to: the most of any resource, scaled to
/// slots and rounded up (5 core instances of 4 per slot are 2 slots), at most `total`.
fn slots_in_use(in_use: InUse, total: u64) -> u64 {
    let per_slot = |n: u64, per: u32| n.div_ceil(u64::from(per));
    [
        in_use.component_instances,
        per_slot(in_use.core_instances, CORE_INSTANCES_PER_SLOT),
        per_slot(in_use.memories, MEMORIES_PER_SLOT),
        per_slot(in_use.tables, TABLES_PER_SLOT),
        in_use.stacks,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
    .min(total)
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
    /// A few atomic loads and a store when nothing changes meanwhile. Concurrent updates may
    /// write in any order, so each reads the counts again after writing and writes once more
    /// if they changed: the last update to run leaves the count of its time, so an idle node
    /// shows what it holds.
    pub(super) fn update(&self) {
        let Some(pool) = &self.pool else { return };
        let metrics = crate::admin::metrics::get();
        if !metrics.is_enabled() {
            return;
        }
        let mut seen = InUse::of(pool);
        loop {
            metrics.pool_slots(slots_in_use(seen, self.total), self.total);
            let now = InUse::of(pool);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_in_use_are_those_of_the_most_used_resource() {
        let one = InUse {
            component_instances: 1,
            core_instances: 1,
            memories: 1,
            tables: 1,
            stacks: 1,
        };
        assert_eq!(slots_in_use(InUse::default(), 10), 0);
        assert_eq!(slots_in_use(one, 10), 1);
        // Two instances of a component with 9 core modules each: 18 core instances of the
        // 4 per slot are 5 slots' worth, though only 2 component instances run.
        let many_modules = InUse {
            component_instances: 2,
            core_instances: 18,
            memories: 2,
            tables: 2,
            stacks: 2,
        };
        assert_eq!(slots_in_use(many_modules, 10), 5);
        // Memories of 2 per slot, rounded up; never more than the pool holds.
        let memories = InUse { memories: 7, ..one };
        assert_eq!(slots_in_use(memories, 10), 4);
        assert_eq!(
            slots_in_use(
                InUse {
                    core_instances: 100,
                    ..one
                },
                10
            ),
            10
        );
    }
}
