//! Host bindings generated from the plugin contract, one module per version and world. Each version's shared
//! interfaces are generated once, in its `naming`, and reused by its `transform`.

/// `writeback:plugin@0.1.0` (`wit/0.1.0`), frozen: every group universal, no scope in the placement.
pub mod v1 {
    /// The `naming-policy` world.
    pub mod naming {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "naming-policy",
        });
    }

    /// The `transformer` world.
    pub mod transform {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "transformer",
            with: {
                "writeback:plugin/types": super::naming::writeback::plugin::types,
                "writeback:plugin/host": super::naming::writeback::plugin::host,
            },
        });
    }
}

/// `writeback:plugin@0.2.0` (`wit`): a scope in the placement, group types and member count in the group.
pub mod v2 {
    /// The `naming-policy` world.
    pub mod naming {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "naming-policy",
        });
    }

    /// The `transformer` world.
    pub mod transform {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "transformer",
            with: {
                "writeback:plugin/types": super::naming::writeback::plugin::types,
                "writeback:plugin/host": super::naming::writeback::plugin::host,
            },
        });
    }
}
