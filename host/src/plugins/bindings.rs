//! Host bindings generated from `wit/plugin.wit`, one module per world; the shared interfaces are
//! generated once, in `naming`, and reused by `transform`.

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
