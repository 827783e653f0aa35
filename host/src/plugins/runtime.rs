//! The sandbox every plugin call runs in: one wasmtime engine per agent, a compile cache, and stores with
//! WASI linked but nothing granted, a memory limit and a wall-clock deadline.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginError;

/// How often the epoch advances; a call's deadline is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Guest stdout and stderr are collected in memory and logged after each call.
const OUTPUT_CAPACITY: usize = 1 << 20;
/// Past this much collected output the instance is recycled, so the pipes never fill up.
const OUTPUT_RECYCLE: usize = OUTPUT_CAPACITY / 2;

/// Host functions that wait outside wasm code, where epoch interruption never fires: a guest that sleeps or
/// waits on a stream would hold the agent for as long as it liked. They trap instead, so that every call ends
/// within its timeout. Non-blocking `pollable.ready` stays, since a loop around it runs in wasm code.
const WAITING_FUNCTIONS: &[(&str, &str)] =
    &[("wasi:io/poll@0.2.12", "poll"), ("wasi:io/poll@0.2.12", "[method]pollable.block")];

/// Counts of what one plugin instance may create. Bytes are budgeted by [`InstanceBudget`]; these bound the
/// address space that each memory reserves however small it is.
const MAX_INSTANCES: usize = 1_000;
const MAX_MEMORIES: usize = 64;
const MAX_TABLES: usize = 1_000;

/// The error a refused wait traps with, so that it is reported as what it is.
#[derive(Debug)]
pub(super) struct WaitRefused;

impl std::fmt::Display for WaitRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin tried to wait (sleep, or block on a stream), which plugins may not do")
    }
}

impl std::error::Error for WaitRefused {}

/// The error a call to an import the agent does not provide traps with.
#[derive(Debug)]
pub(super) struct Unprovided(pub(super) String);

impl std::fmt::Display for Unprovided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the plugin called {}, which the agent does not provide (plugins get no network, files or environment)",
            self.0
        )
    }
}

impl std::error::Error for Unprovided {}

/// Import packages the linker provides (any version it matches); every other import is one the agent does not
/// provide.
const PROVIDED: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
    "writeback:plugin/",
];

/// The resource type given to the resources of imports the agent does not provide: no value of it ever exists.
struct UnprovidedResource;

/// Defines every import of `component` from a package the agent does not provide (`wasi:http`, say, which
/// componentize-js imports by default) as functions that trap when called, so that the component loads and fails
/// only if it really uses one. The sandbox stays as it is: nothing is granted.
pub(super) fn stub_unprovided_imports(
    linker: &mut Linker<Sandbox>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;
    // An interface may use resources an earlier import brought (`wasi:http/types` uses `wasi:io`'s streams): those
    // are left to their own definition, which the linker matches by type. Imports come in the component's order.
    let mut seen = Vec::new();
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else { continue };
        let provided = PROVIDED.iter().any(|package| name.starts_with(package));
        let mut stubs = if provided { None } else { Some(linker.instance(name)?) };
        for (export, item) in instance.exports(engine) {
            match (item.ty, stubs.as_mut()) {
                (ComponentItem::Resource(resource), _) if seen.contains(&resource) => {}
                (ComponentItem::Resource(resource), stubs) => {
                    if let Some(stubs) = stubs {
                        stubs.resource(export, ResourceType::host::<UnprovidedResource>(), |_, _| Ok(()))?;
                    }
                    seen.push(resource);
                }
                (ComponentItem::ComponentFunc(_), Some(stubs)) => {
                    let called = format!("{name}#{export}");
                    stubs.func_new(export, move |_, _, _, _| Err(wasmtime::Error::new(Unprovided(called.clone()))))?
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The error an over-budget growth traps with.
#[derive(Debug)]
pub(super) struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin instance went over its memory limit")
    }
}

impl std::error::Error for OverBudget {}

/// The memory budget of one instance as a whole: every linear memory and table it creates or grows draws on
/// the same bytes, so a component cannot multiply its limit by creating more memories or instances.
pub(super) struct InstanceBudget {
    limit: usize,
    used: usize,
}

impl InstanceBudget {
    fn new(limit: usize) -> InstanceBudget {
        InstanceBudget { limit, used: 0 }
    }

    fn draw(&mut self, bytes: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(bytes);
        if total > self.limit {
            return Err(wasmtime::Error::new(OverBudget));
        }
        self.used = total;
        Ok(true)
    }
}

impl ResourceLimiter for InstanceBudget {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.draw(desired.saturating_sub(current))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Each table element takes a pointer's worth of host memory.
        self.draw(desired.saturating_sub(current).saturating_mul(size_of::<usize>()))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Resource limits of each plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock time one call may run.
    pub timeout: Duration,
    /// Bytes of linear memory and tables one instance may hold, all of its memories together.
    pub memory_bytes: usize,
}

/// A loaded component and the SHA-256 of its bytes.
type Loaded = (Vec<u8>, Component);

/// The engine shared by every plugin of the agent, and where compiled plugins are cached.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// The component this engine loaded last, by the SHA-256 of its bytes, so that a file loaded twice in a row
    /// (for its world, then as that plugin) is compiled once, with or without a cache directory. Only the last:
    /// a daemon whose plugins are replaced keeps no old ones.
    last: Arc<std::sync::Mutex<Option<Loaded>>>,
    /// How many components this engine compiled.
    #[cfg(test)]
    compiles: Arc<std::sync::atomic::AtomicUsize>,
}

impl PluginEngine {
    /// Creates the engine and starts its epoch ticker. `cache_dir` keeps precompiled artifacts.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginEngine, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        start_ticker(&engine);
        Ok(PluginEngine {
            engine,
            cache_dir,
            last: Arc::default(),
            #[cfg(test)]
            compiles: Arc::default(),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads a component: from the cache when this engine compiled the same bytes before, else compiled
    /// now and cached. Also returns the SHA-256 of the bytes it loaded, so that the policy's fingerprint is
    /// that of what runs, even when the file is replaced meanwhile.
    pub fn load(&self, path: &Path) -> Result<(Component, Vec<u8>), PluginError> {
        let bytes =
            std::fs::read(path).map_err(|e| PluginError::Read { path: path.to_path_buf(), cause: e.to_string() })?;
        let digest = {
            use sha2::Digest;
            sha2::Sha256::digest(&bytes).to_vec()
        };
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, component)) = last.as_ref().filter(|(kept, _)| *kept == digest) {
            return Ok((component.clone(), digest));
        }
        let component = self.component(path, &bytes)?;
        *last = Some((digest.clone(), component.clone()));
        Ok((component, digest))
    }

    fn component(&self, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
        let Some(cache) = self.cache_path(bytes) else {
            return self.compile(path, bytes);
        };
        // Read into memory rather than mapped: a mapped file truncated by someone else would crash the agent.
        if let Ok(artifact) = std::fs::read(&cache) {
            // SAFETY: the cache directory lies inside the agent's 0700 state directory and only ever holds
            // artifacts this agent produced with an engine of the same compatibility hash (part of the name);
            // a damaged one fails wasmtime's header and compatibility checks and is recompiled below.
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(cache = %cache.display(), "ignoring an unusable compiled plugin: {e}"),
            }
        }
        let component = self.compile(path, bytes)?;
        if let Err(e) = self.store_artifact(&component, &cache) {
            tracing::warn!(cache = %cache.display(), "cannot cache the compiled plugin: {e}");
        }
        Ok(component)
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
        #[cfg(test)]
        self.compiles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Component::from_binary(&self.engine, bytes)
            .map_err(|e| PluginError::Compile { path: path.to_path_buf(), cause: format!("{e:#}") })
    }

    fn store_artifact(&self, component: &Component, cache: &Path) -> std::io::Result<()> {
        let serialized = component.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = cache.with_extension("tmp");
        std::fs::write(&tmp, serialized)?;
        std::fs::rename(tmp, cache)
    }

    /// The cache file for these bytes: keyed by their content and the engine's compatibility hash.
    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let content = sha256_hex(bytes);
        Some(dir.join(format!("{content}-{:016x}.cwasm", engine_hash.finish())))
    }

    /// A linker with WASI p2 (nothing granted) and the host interface of every contract version.
    pub(super) fn linker(&self) -> Result<Linker<Sandbox>, PluginError> {
        let mut linker = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(e.to_string()))?;
        // Every contract version's host interface, so that plugins built against any of them link.
        super::bindings::v1::naming::NamingPolicy::add_to_linker::<_, wasmtime::component::HasSelf<Sandbox>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;
        super::bindings::v2::naming::NamingPolicy::add_to_linker::<_, wasmtime::component::HasSelf<Sandbox>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;
        refuse_waits(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Ok(linker)
    }
}

/// Replaces WASI's waiting functions with ones that trap (see [`WAITING_FUNCTIONS`]).
fn refuse_waits(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    for (interface, function) in WAITING_FUNCTIONS {
        linker.instance(interface)?.func_new(function, |_, _, _, _| Err(wasmtime::Error::new(WaitRefused)))?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Advances the engine's epoch until the engine is dropped; deadlines are measured against it.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the plugin deadline thread ({e}); plugin calls will fail at once");
    }
}

/// The per-store data of a plugin instance.
pub struct Sandbox {
    pub(super) plugin: Arc<str>,
    pub(super) config: Arc<BTreeMap<String, String>>,
    wasi: WasiCtx,
    table: ResourceTable,
    budget: InstanceBudget,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    logged: (usize, usize),
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Sandbox {
    /// A store for one instance: no preopened directories, no environment, no network, no inherited stdio.
    pub(super) fn store(
        engine: &Engine,
        plugin: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        limits: CallLimits,
    ) -> Store<Sandbox> {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let sandbox = Sandbox {
            plugin,
            config,
            wasi,
            table: ResourceTable::new(),
            budget: InstanceBudget::new(limits.memory_bytes),
            stdout,
            stderr,
            logged: (0, 0),
        };
        let mut store = Store::new(engine, sandbox);
        store.limiter(|s| &mut s.budget);
        store
    }

    /// Sends what the guest printed since the last call to the agent's log, tagged with the plugin's name.
    /// Returns whether so much was printed that the instance should be recycled.
    pub(super) fn forward_output(&mut self) -> bool {
        let out = self.stdout.contents();
        let err = self.stderr.contents();
        log_lines(&self.plugin, "stdout", &out[self.logged.0.min(out.len())..]);
        log_lines(&self.plugin, "stderr", &err[self.logged.1.min(err.len())..]);
        self.logged = (out.len(), err.len());
        out.len() + err.len() > OUTPUT_RECYCLE
    }
}

fn log_lines(plugin: &str, stream: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(plugin, stream, "{line}");
    }
}

/// Sets the call's deadline in epoch ticks.
pub(super) fn arm_deadline(store: &mut Store<Sandbox>, timeout: Duration) {
    let ticks = (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64;
    store.set_epoch_deadline(ticks);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with two memories of 600 pages (37.5 MiB) each: each fits a 64 MiB limit, both do not.
    const TWO_MEMORIES: &[u8] =
        &[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x05, 0x07, 0x02, 0x00, 0xd8, 0x04, 0x00, 0xd8, 0x04];

    #[test]
    fn the_memory_limit_holds_for_the_instance_as_a_whole() {
        let engine = PluginEngine::new(None).unwrap();
        let module = wasmtime::Module::new(engine.engine(), TWO_MEMORIES).unwrap();
        let store_with = |mib: usize| {
            let limits = CallLimits { timeout: Duration::from_secs(5), memory_bytes: mib << 20 };
            Sandbox::store(engine.engine(), "two-memories".into(), Arc::default(), limits)
        };
        let err = wasmtime::Instance::new(&mut store_with(64), &module, &[]).unwrap_err();
        assert!(format!("{err:#}").contains(&OverBudget.to_string()), "{err:#}");
        assert!(wasmtime::Instance::new(&mut store_with(80), &module, &[]).is_ok(), "75 MiB fit in 80 MiB");
    }

    #[test]
    fn content_hash_is_stable_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn cache_key_names_content_and_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = PluginEngine::new(Some(dir.path().to_path_buf())).unwrap();
        let a = engine.cache_path(b"one").unwrap();
        let b = engine.cache_path(b"two").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, engine.cache_path(b"one").unwrap());
        assert!(a.to_string_lossy().ends_with(".cwasm"));
    }

    #[test]
    fn a_file_loaded_twice_is_compiled_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.wasm");
        // The smallest component: the preamble alone.
        std::fs::write(&path, [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]).unwrap();
        let engine = PluginEngine::new(None).unwrap();
        let (_, digest) = engine.load(&path).unwrap();
        let (_, again) = engine.load(&path).unwrap();
        assert_eq!(digest, again);
        assert_eq!(engine.compiles.load(std::sync::atomic::Ordering::SeqCst), 1, "compiled once");
    }
}
