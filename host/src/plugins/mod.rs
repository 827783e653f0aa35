//! Tenant plugins: naming policies and transforms as sandboxed WebAssembly components (`wit/plugin.wit`).
//!
//! A plugin instance is reused across calls (a call then costs about a microsecond). A trap, a timeout or a
//! memory overrun costs that one call: the instance is dropped and the next call instantiates a fresh one
//! from the prepared `InstancePre`. Every output is validated before it is used; a failure holds that one
//! group, and never falls back to another name.

mod bindings;
mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Store;

use bindings::{v1, v2};
pub use runtime::{CallLimits, PluginEngine, Sandbox};

use crate::config::PluginsConfig;
use crate::model::{GroupKind, GroupPolicy, GroupScope, Hold, PolicyGroup, Transformed};
use crate::naming::{self, Placement};

/// The versions of the plugin contract (`writeback:plugin@…`) this agent runs. A component's version is read
/// from the interface it exports.
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// A plugin that could not be loaded or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    #[error("cannot read plugin {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("plugin {path} is not a valid WebAssembly component: {cause}")]
    Compile { path: PathBuf, cause: String },
    #[error("plugin {path} does not implement the {world} world: {cause}")]
    World { path: PathBuf, world: &'static str, cause: String },
    #[error(
        "plugin {path} cannot be linked as a {world} plugin: {cause}; the agent provides WASI (granting nothing) and writeback:plugin"
    )]
    Link { path: PathBuf, world: &'static str, cause: String },
    #[error("plugin {plugin} ran past its {limit_ms} ms limit and was stopped")]
    Timeout { plugin: String, limit_ms: u128 },
    #[error(
        "plugin {plugin} tried to wait (sleep, or block on a stream), which plugins may not do; the call was stopped"
    )]
    Waited { plugin: String },
    #[error("plugin {plugin} went over its memory limit of {limit_mib} MiB and was stopped")]
    Memory { plugin: String, limit_mib: usize },
    #[error("plugin {plugin} failed: {cause}")]
    Trap { plugin: String, cause: String },
}

/// The attributes the tenant's transforms may write: its own list, or [`crate::attributes::transform_defaults`]. None
/// when it has no transform.
pub fn transform_attributes(config: &PluginsConfig) -> Vec<String> {
    if config.transforms.is_empty() {
        return Vec::new();
    }
    config
        .transform_attributes
        .clone()
        .unwrap_or_else(|| crate::attributes::transform_defaults().map(str::to_string).collect())
}

/// Runs `f`, which may call plugins, off the async reactor. WASI's synchronous bindings block on the
/// ambient tokio runtime, which a reactor thread may not do; `block_in_place` hands the thread over first.
/// On a current-thread runtime (tests) a scoped thread without a runtime context does the work instead.
pub fn off_reactor<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

/// A digest of everything that decides a tenant's placements and attributes: each plugin file's content
/// and the plugin settings. When it changes, every group must be planned again.
pub fn fingerprint(config: &crate::config::PluginsConfig) -> String {
    use sha2::Digest;
    // An unreadable file hashes as empty: the cycle that loads it reports the cause.
    let digests = config
        .naming
        .iter()
        .chain(&config.transforms)
        .map(|path| sha2::Sha256::digest(std::fs::read(path).unwrap_or_default()).to_vec());
    fingerprint_of(config, digests)
}

/// The fingerprint of `config` with these digests of its files, in the order naming, then transforms.
fn fingerprint_of(config: &PluginsConfig, digests: impl Iterator<Item = Vec<u8>>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for (path, digest) in config.naming.iter().chain(&config.transforms).zip(digests) {
        hash.update(path.to_string_lossy().as_bytes());
        hash.update(digest);
    }
    hash.update(format!("{:?}{:?}{:?}", config.config, config.allowed_ous, config.transform_attributes).as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What instantiating a prepared plugin yields.
trait Prepared {
    type Bindings;
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Self::Bindings>;
}

/// Implements [`Prepared`] for a world's generated `…Pre` type.
macro_rules! prepared {
    ($pre:ty, $bindings:ty) => {
        impl Prepared for $pre {
            type Bindings = $bindings;
            fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<$bindings> {
                <$pre>::instantiate(self, store)
            }
        }
    };
}

prepared!(v1::naming::NamingPolicyPre<Sandbox>, v1::naming::NamingPolicy);
prepared!(v1::transform::TransformerPre<Sandbox>, v1::transform::Transformer);
prepared!(v2::naming::NamingPolicyPre<Sandbox>, v2::naming::NamingPolicy);
prepared!(v2::transform::TransformerPre<Sandbox>, v2::transform::Transformer);

/// A naming plugin, of the contract version it was built against.
enum Naming {
    V1(Plugin<v1::naming::NamingPolicyPre<Sandbox>>),
    V2(Plugin<v2::naming::NamingPolicyPre<Sandbox>>),
}

/// A transform plugin, of the contract version it was built against.
enum Transform {
    V1(Plugin<v1::transform::TransformerPre<Sandbox>>),
    V2(Plugin<v2::transform::TransformerPre<Sandbox>>),
}

/// What a transform answered, whatever its contract version.
enum Answer {
    Write(Vec<(String, Vec<String>)>),
    Exclude(String),
}

impl Naming {
    fn name(&self) -> Arc<str> {
        match self {
            Naming::V1(p) => p.name.clone(),
            Naming::V2(p) => p.name.clone(),
        }
    }

    fn drop_instance(&mut self) {
        match self {
            Naming::V1(p) => p.warm = None,
            Naming::V2(p) => p.warm = None,
        }
    }

    /// Asks the plugin where `group` goes; the outer error is a failed call, the inner one its refusal.
    fn place(&mut self, group: &PolicyGroup) -> Result<Result<Placement, String>, PluginError> {
        Ok(match self {
            Naming::V1(p) => {
                let input = v1_group(group);
                let answer = p.call(|b, store| b.writeback_plugin_naming().call_name_group(store, &input))?;
                answer.map(|p| Placement { cn: p.cn, sam_account_name: p.sam_account_name, ou: p.ou, scope: None })
            }
            Naming::V2(p) => {
                let input = v2_group(group);
                let answer = p.call(|b, store| b.writeback_plugin_naming().call_name_group(store, &input))?;
                answer.map(|p| Placement {
                    cn: p.cn,
                    sam_account_name: p.sam_account_name,
                    ou: p.ou,
                    scope: p.scope.map(scope_from_v2),
                })
            }
        })
    }
}

/// One `transform-group` call through the bindings of contract version `$version`: the same call, with each
/// version's own generated types.
macro_rules! transform_call {
    ($version:ident, $plugin:expr, $input:expr, $attributes:expr) => {{
        use $version::naming::writeback::plugin::types::Attribute;
        use $version::transform::exports::writeback::plugin::transform::Verdict;
        let input = $input;
        let offered: Vec<Attribute> =
            $attributes.iter().map(|(name, values)| Attribute { name: name.clone(), values: values.clone() }).collect();
        let answer =
            $plugin.call(|b, store| b.writeback_plugin_transform().call_transform_group(store, &input, &offered))?;
        answer.map(|verdict| match verdict {
            Verdict::Write(list) => Answer::Write(list.into_iter().map(|a| (a.name, a.values)).collect()),
            Verdict::Exclude(reason) => Answer::Exclude(reason),
        })
    }};
}

impl Transform {
    fn name(&self) -> Arc<str> {
        match self {
            Transform::V1(p) => p.name.clone(),
            Transform::V2(p) => p.name.clone(),
        }
    }

    fn drop_instance(&mut self) {
        match self {
            Transform::V1(p) => p.warm = None,
            Transform::V2(p) => p.warm = None,
        }
    }

    /// Offers `attributes` to the plugin; the outer error is a failed call, the inner one its refusal.
    fn transform(
        &mut self,
        group: &PolicyGroup,
        attributes: &BTreeMap<String, Vec<String>>,
    ) -> Result<Result<Answer, String>, PluginError> {
        Ok(match self {
            Transform::V1(p) => transform_call!(v1, p, v1_group(group), attributes),
            Transform::V2(p) => transform_call!(v2, p, v2_group(group), attributes),
        })
    }
}

/// The world of the component at `path`, from the interface it exports: `naming-policy` or `transformer`.
pub fn world_of(engine: &PluginEngine, path: &Path) -> Result<&'static str, PluginError> {
    let (component, _) = engine.load(path)?;
    if exported_version(engine.engine(), &component, "naming").is_some() {
        return Ok("naming-policy");
    }
    if exported_version(engine.engine(), &component, "transform").is_some() {
        return Ok("transformer");
    }
    Err(PluginError::World {
        path: path.to_path_buf(),
        world: "naming-policy or transformer",
        cause: "it exports neither writeback:plugin/naming nor writeback:plugin/transform".into(),
    })
}

/// The contract version of the `interface` (`naming` or `transform`) that `component` exports, if it exports one.
fn exported_version(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    interface: &str,
) -> Option<String> {
    let prefix = format!("writeback:plugin/{interface}@");
    component.component_type().exports(engine).find_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_string))
}

/// One loaded plugin and its warm instance.
struct Plugin<P: Prepared> {
    name: Arc<str>,
    pre: P,
    engine: wasmtime::Engine,
    config: Arc<BTreeMap<String, String>>,
    limits: CallLimits,
    warm: Option<(Store<Sandbox>, P::Bindings)>,
    /// This plugin's call counters, looked up once rather than on every call.
    calls: CallCounters,
}

/// The plugin-call counters of one plugin: successful and failed calls.
#[derive(Clone)]
struct CallCounters {
    ok: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
}

impl CallCounters {
    fn of(plugin: &str) -> CallCounters {
        let counter = |outcome: &str| {
            let labels = crate::metrics::PluginLabels { plugin: plugin.to_string(), outcome: outcome.into() };
            crate::metrics::global().plugin_calls.get_or_create(&labels).clone()
        };
        CallCounters { ok: counter("ok"), failed: counter("failed") }
    }
}

impl<P: Prepared> Plugin<P> {
    /// Calls into the plugin with a fresh deadline; a failure drops the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&P::Bindings, &mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.warm.is_none() {
            let mut store = Sandbox::store(&self.engine, self.name.clone(), self.config.clone(), self.limits);
            runtime::arm_deadline(&mut store, self.limits.timeout);
            let bindings = self.pre.instantiate(&mut store).map_err(|e| self.classify(e))?;
            self.warm = Some((store, bindings));
        }
        let (store, bindings) = self.warm.as_mut().expect("instantiated above");
        runtime::arm_deadline(store, self.limits.timeout);
        let result = f(bindings, store);
        if result.is_ok() { &self.calls.ok } else { &self.calls.failed }.inc();
        let recycle = store.data_mut().forward_output();
        match result {
            Ok(value) => {
                if recycle {
                    self.warm = None;
                }
                Ok(value)
            }
            Err(e) => {
                self.warm = None;
                Err(self.classify(e))
            }
        }
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        let plugin = self.name.to_string();
        if matches!(error.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
            return PluginError::Timeout { plugin, limit_ms: self.limits.timeout.as_millis() };
        }
        if error.downcast_ref::<runtime::WaitRefused>().is_some() {
            return PluginError::Waited { plugin };
        }
        if error.downcast_ref::<runtime::OverBudget>().is_some() {
            return PluginError::Memory { plugin, limit_mib: self.limits.memory_bytes >> 20 };
        }
        if let Some(unprovided) = error.downcast_ref::<runtime::Unprovided>() {
            return PluginError::Trap { plugin, cause: unprovided.to_string() };
        }
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            let cause = match trap {
                wasmtime::Trap::UnreachableCodeReached => {
                    format!("{trap} (a panic; the plugin's message is in the log)")
                }
                other => other.to_string(),
            };
            return PluginError::Trap { plugin, cause };
        }
        let text = format!("{error:#}");
        // Context layers may hide the typed error from a downcast, never its text.
        if text.contains(&runtime::WaitRefused.to_string()) {
            return PluginError::Waited { plugin };
        }
        if text.contains(&runtime::OverBudget.to_string()) {
            return PluginError::Memory { plugin, limit_mib: self.limits.memory_bytes >> 20 };
        }
        PluginError::Trap { plugin, cause: text.split_whitespace().collect::<Vec<_>>().join(" ") }
    }
}

fn plugin_name(path: &Path) -> Arc<str> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string()).into()
}

/// The plugins of one tenant: an optional naming policy and a chain of transforms.
pub struct TenantPlugins {
    naming: Option<Naming>,
    transforms: Vec<Transform>,
    allowed_attributes: BTreeSet<String>,
    /// The fingerprint of the files as they were loaded and of the settings (see [`fingerprint`]).
    fingerprint: String,
}

/// What every plugin of a tenant is loaded with.
struct Setup<'a> {
    engine: &'a PluginEngine,
    linker: &'a wasmtime::component::Linker<Sandbox>,
    settings: &'a Arc<BTreeMap<String, String>>,
    limits: CallLimits,
}

impl Setup<'_> {
    /// Compiles (or takes from the cache) the component at `path`, and finds which contract version of
    /// `interface` it exports.
    fn load(
        &self,
        path: &Path,
        world: &'static str,
        interface: &str,
        digests: &mut Vec<Vec<u8>>,
    ) -> Result<(wasmtime::component::Component, String), PluginError> {
        let (component, digest) = self.engine.load(path)?;
        digests.push(digest);
        let not_world = |cause: String| PluginError::World { path: path.to_path_buf(), world, cause };
        let version = exported_version(self.engine.engine(), &component, interface)
            .ok_or_else(|| not_world(format!("it exports no writeback:plugin/{interface} interface")))?;
        if !CONTRACT_VERSIONS.contains(&version.as_str()) {
            return Err(not_world(format!(
                "it was built against writeback:plugin@{version}, and this agent runs versions {}",
                CONTRACT_VERSIONS.join(" and ")
            )));
        }
        Ok((component, version))
    }

    /// Prepares a loaded component for `world`.
    fn prepare<P: Prepared>(
        &self,
        path: &Path,
        world: &'static str,
        component: &wasmtime::component::Component,
        wrap: fn(wasmtime::component::InstancePre<Sandbox>) -> wasmtime::Result<P>,
    ) -> Result<Plugin<P>, PluginError> {
        let not_linked =
            |e: wasmtime::Error| PluginError::Link { path: path.to_path_buf(), world, cause: format!("{e:#}") };
        let mut linker = self.linker.clone();
        runtime::stub_unprovided_imports(&mut linker, self.engine.engine(), component).map_err(not_linked)?;
        let pre = wrap(linker.instantiate_pre(component).map_err(not_linked)?).map_err(not_linked)?;
        let name = plugin_name(path);
        let calls = CallCounters::of(&name);
        let (engine, config, limits) = (self.engine.engine().clone(), self.settings.clone(), self.limits);
        Ok(Plugin { name, pre, engine, config, limits, warm: None, calls })
    }

    fn naming(&self, path: &Path, digests: &mut Vec<Vec<u8>>) -> Result<Naming, PluginError> {
        const WORLD: &str = "naming-policy";
        let (component, version) = self.load(path, WORLD, "naming", digests)?;
        Ok(match version.as_str() {
            "0.1.0" => Naming::V1(self.prepare(path, WORLD, &component, v1::naming::NamingPolicyPre::new)?),
            _ => Naming::V2(self.prepare(path, WORLD, &component, v2::naming::NamingPolicyPre::new)?),
        })
    }

    fn transform(&self, path: &Path, digests: &mut Vec<Vec<u8>>) -> Result<Transform, PluginError> {
        const WORLD: &str = "transformer";
        let (component, version) = self.load(path, WORLD, "transform", digests)?;
        Ok(match version.as_str() {
            "0.1.0" => Transform::V1(self.prepare(path, WORLD, &component, v1::transform::TransformerPre::new)?),
            _ => Transform::V2(self.prepare(path, WORLD, &component, v2::transform::TransformerPre::new)?),
        })
    }
}

impl TenantPlugins {
    /// Loads (and compiles or takes from the cache) every plugin the tenant configures.
    pub fn load(engine: &PluginEngine, config: &PluginsConfig) -> Result<TenantPlugins, PluginError> {
        let settings = Arc::new(config.config.clone());
        let limits = CallLimits { timeout: config.timeout, memory_bytes: config.memory_limit_mib << 20 };
        let linker = engine.linker()?;
        let setup = Setup { engine, linker: &linker, settings: &settings, limits };
        let mut digests = Vec::new();
        let naming = match &config.naming {
            Some(path) => Some(setup.naming(path, &mut digests)?),
            None => None,
        };
        let transforms =
            config.transforms.iter().map(|path| setup.transform(path, &mut digests)).collect::<Result<_, _>>()?;
        let allowed_attributes = transform_attributes(config).into_iter().map(|a| a.to_lowercase()).collect();
        let fingerprint = fingerprint_of(config, digests.into_iter());
        Ok(TenantPlugins { naming, transforms, allowed_attributes, fingerprint })
    }

    /// The fingerprint of what was loaded: the files' content as read, and the settings.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Forgets the warm instances; the next calls instantiate afresh (for measuring that cost).
    pub fn drop_instances(&mut self) {
        if let Some(naming) = &mut self.naming {
            naming.drop_instance();
        }
        for transform in &mut self.transforms {
            transform.drop_instance();
        }
    }

    /// Whether any plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.naming.is_none() && self.transforms.is_empty()
    }
}

/// The policy of a tenant whose plugins did not load: every group is held with this cause, so nothing of the
/// tenant is written (and nothing renamed with another naming) until plugins that load replace it.
pub struct Unloaded(pub String);

impl GroupPolicy for Unloaded {
    fn place(&mut self, _: &PolicyGroup) -> Result<Placement, Hold> {
        Err(Hold::NotLoaded(self.0.clone()))
    }

    fn transform(&mut self, _: &PolicyGroup, _: &mut BTreeMap<String, Vec<String>>) -> Result<Transformed, Hold> {
        Err(Hold::NotLoaded(self.0.clone()))
    }
}

/// The group as a 0.1.0 plugin sees it: every target type is universal.
fn v1_group(group: &PolicyGroup) -> v1::naming::writeback::plugin::types::Group {
    use v1::naming::writeback::plugin::types::{Group, GroupKind as Kind, OnpremGroupType as Type};
    Group {
        id: group.id.to_string(),
        display_name: group.display_name.to_string(),
        description: group.description.map(str::to_string),
        mail_nickname: group.mail_nickname.map(str::to_string),
        mail: group.mail.map(str::to_string),
        kind: if group.unified { Kind::Microsoft365 } else { Kind::Security },
        target_type: match group.kind {
            GroupKind::Security => Type::UniversalSecurity,
            GroupKind::Distribution => Type::UniversalDistribution,
            GroupKind::MailEnabledSecurity => Type::UniversalMailEnabledSecurity,
        },
    }
}

/// The group as a 0.2.0 plugin sees it.
fn v2_group(group: &PolicyGroup) -> v2::naming::writeback::plugin::types::Group {
    use v2::naming::writeback::plugin::types::{
        Group, GroupKind as Kind, GroupScope as Scope, OnpremGroupType as Type,
    };
    Group {
        id: group.id.to_string(),
        display_name: group.display_name.to_string(),
        description: group.description.map(str::to_string),
        mail_nickname: group.mail_nickname.map(str::to_string),
        mail: group.mail.map(str::to_string),
        kind: if group.unified { Kind::Microsoft365 } else { Kind::Security },
        target_type: match group.kind {
            GroupKind::Security => Type::Security,
            GroupKind::Distribution => Type::Distribution,
            GroupKind::MailEnabledSecurity => Type::MailEnabledSecurity,
        },
        scope: match group.scope {
            GroupScope::Universal => Scope::Universal,
            GroupScope::Global => Scope::Global,
            GroupScope::DomainLocal => Scope::DomainLocal,
        },
        group_types: group.group_types.to_vec(),
        member_count: group.member_count,
    }
}

fn scope_from_v2(scope: v2::naming::writeback::plugin::types::GroupScope) -> GroupScope {
    use v2::naming::writeback::plugin::types::GroupScope as Scope;
    match scope {
        Scope::Universal => GroupScope::Universal,
        Scope::Global => GroupScope::Global,
        Scope::DomainLocal => GroupScope::DomainLocal,
    }
}

impl GroupPolicy for TenantPlugins {
    fn place(&mut self, group: &PolicyGroup) -> Result<Placement, Hold> {
        let Some(plugin) = self.naming.as_mut() else {
            return naming::default_placement(group.id, Some(group.display_name))
                .map_err(|e| Hold::Refused(e.to_string()));
        };
        let name = plugin.name();
        let answer = plugin.place(group).map_err(|e| Hold::Failed(e.to_string()))?;
        answer.map_err(|reason| Hold::Refused(format!("naming plugin {name} refused the group: {reason}")))
    }

    fn transform(
        &mut self,
        group: &PolicyGroup,
        attributes: &mut BTreeMap<String, Vec<String>>,
    ) -> Result<Transformed, Hold> {
        for plugin in &mut self.transforms {
            let name = plugin.name();
            let answer = plugin.transform(group, attributes).map_err(|e| Hold::Failed(e.to_string()))?;
            match answer.map_err(|reason| Hold::Refused(format!("transform {name} failed: {reason}")))? {
                Answer::Exclude(reason) => return Ok(Transformed::Exclude(format!("excluded by {name}: {reason}"))),
                Answer::Write(changes) => {
                    apply_changes(&name, &self.allowed_attributes, attributes, changes).map_err(Hold::Failed)?
                }
            }
        }
        Ok(Transformed::Write)
    }
}

/// Applies a transform's attribute changes after checking each name against the allow-list.
fn apply_changes(
    plugin: &str,
    allowed: &BTreeSet<String>,
    attributes: &mut BTreeMap<String, Vec<String>>,
    changes: Vec<(String, Vec<String>)>,
) -> Result<(), String> {
    for (name, _) in &changes {
        if !allowed.contains(&name.to_lowercase()) {
            return Err(format!("transform {plugin} tried to write {name:?}, which is not in the allowed attributes"));
        }
    }
    for (name, values) in changes {
        // Keep the agent's spelling of a known attribute so the planner compares like with like.
        let key = attributes.keys().find(|k| k.eq_ignore_ascii_case(&name)).cloned().unwrap_or(name);
        attributes.insert(key, values);
    }
    Ok(())
}

/// Implements a contract version's `host` interface (and its empty `types` host trait) for the sandbox.
macro_rules! host {
    ($version:ident) => {
        impl $version::naming::writeback::plugin::host::Host for Sandbox {
            fn log(&mut self, level: $version::naming::writeback::plugin::host::Level, message: String) {
                use $version::naming::writeback::plugin::host::Level;
                let plugin = &*self.plugin;
                match level {
                    Level::Debug => tracing::debug!(plugin, "{message}"),
                    Level::Info => tracing::info!(plugin, "{message}"),
                    Level::Warn => tracing::warn!(plugin, "{message}"),
                    Level::Error => tracing::error!(plugin, "{message}"),
                }
            }

            fn config(&mut self, key: String) -> Option<String> {
                self.config.get(&key).cloned()
            }
        }

        impl $version::naming::writeback::plugin::types::Host for Sandbox {}
    };
}

host!(v1);
host!(v2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_may_only_write_allowed_attributes() {
        let allowed: BTreeSet<String> = ["info".to_string(), "description".to_string()].into();
        let mut attrs = BTreeMap::from([("description".to_string(), vec!["d".to_string()])]);
        let change = |name: &str| vec![(name.to_string(), vec!["x".to_string()])];
        apply_changes("p", &allowed, &mut attrs, change("Info")).unwrap();
        assert_eq!(attrs["Info"], ["x"]);
        apply_changes("p", &allowed, &mut attrs, change("DESCRIPTION")).unwrap();
        assert_eq!(attrs["description"], ["x"], "the agent's spelling is kept");
        let err = apply_changes("p", &allowed, &mut attrs, change("member")).unwrap_err();
        assert!(err.contains("\"member\""), "{err}");
    }
}
