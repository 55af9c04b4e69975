//! Checkpoints: the whole state of an engine in one safetensors file.
//!
//! Saved: fp32 master weights, optimizer state, loss scale and growth tracker,
//! applied-step count, learning rate, configuration, tensor layout, and the open
//! window (accumulator, total weight, micro-batch count), so training can stop and
//! resume in the middle of a window and end bit-identical to an uninterrupted run.
//!
//! Tensors are named `master.<i>`, `acc.<i>`, and by optimizer `momentum_buffer.<i>`
//! (SGD with momentum) or `exp_avg.<i>` / `exp_avg_sq.<i>` (AdamW), plus `comp.<i>`
//! (the Kahan compensation, with compensated_accumulation), with `<i>` the
//! tensor index; scalars and the layout live in the string metadata. Every tensor
//! has a CRC-32 (zlib.crc32 of its bytes) and the metadata has one of its own.

mod durable;
pub mod safetensors;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use crate::backend::StateSnapshot;
use crate::engine::config::{codes, Config, DeviceRequest, Optimizer, RawConfig};
use crate::engine::layout::Layout;
use crate::engine::{Engine, EngineSnapshot};
use crate::status::Result;
use safetensors::{corrupt, io_error, TensorOut};

/// Name of the format in the metadata.
pub const FORMAT_NAME: &str = "gacc-checkpoint";
/// Version of the format; a reader refuses versions it does not know. The C API
/// publishes it as GACC_CHECKPOINT_FORMAT_VERSION (ffi::conv checks they agree).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The per-tensor buffers of a snapshot, with their checkpoint names.
fn buffer_names(config: &Config) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = match config.optimizer {
        Optimizer::AdamW { .. } => vec!["master", "acc", "exp_avg", "exp_avg_sq"],
        Optimizer::Sgd { momentum, .. } if momentum != 0.0 => {
            vec!["master", "acc", "momentum_buffer"]
        }
        Optimizer::Sgd { .. } => vec!["master", "acc"],
    };
    if config.numerics.compensated {
        names.push("comp");
    }
    names
}

fn buffer<'a>(state: &'a StateSnapshot, kind: &str) -> &'a [f32] {
    match kind {
        "master" => &state.master,
        "acc" => &state.acc,
        "comp" => &state.comp,
        "exp_avg" | "momentum_buffer" => &state.state1,
        _ => &state.state2,
    }
}

fn metadata_crc(metadata: &BTreeMap<String, String>) -> String {
    let mut hasher = crc32fast::Hasher::new();
    for (k, v) in metadata.iter().filter(|(k, _)| k.as_str() != "metadata_crc32") {
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(v.as_bytes());
        hasher.update(b"\n");
    }
    format!("{:08x}", hasher.finalize())
}

/// The configuration as its raw fields ("config.<field>"), numeric codes from
/// engine::config::codes: the values these files have always stored.
fn config_metadata(config: &Config, meta: &mut BTreeMap<String, String>) {
    let raw = config.to_raw();
    let fields: [(&str, String); 24] = [
        ("optimizer", raw.optimizer.to_string()),
        ("lr", raw.lr.to_string()),
        ("momentum", raw.momentum.to_string()),
        ("nesterov", raw.nesterov.to_string()),
        ("beta1", raw.beta1.to_string()),
        ("beta2", raw.beta2.to_string()),
        ("eps", raw.eps.to_string()),
        ("weight_decay", raw.weight_decay.to_string()),
        ("precision", raw.precision.to_string()),
        ("max_grad_norm", raw.max_grad_norm.to_string()),
        ("init_scale", raw.init_scale.to_string()),
        ("growth_factor", raw.growth_factor.to_string()),
        ("backoff_factor", raw.backoff_factor.to_string()),
        ("growth_interval", raw.growth_interval.to_string()),
        ("grad_reduction", raw.grad_reduction.to_string()),
        ("hysteresis", raw.hysteresis.to_string()),
        ("consecutive_hysteresis", raw.consecutive_hysteresis.to_string()),
        ("min_loss_scale", raw.min_loss_scale.to_string()),
        ("max_loss_scale", raw.max_loss_scale.to_string()),
        ("drop_nonfinite_microbatches", raw.drop_nonfinite_microbatches.to_string()),
        ("compensated_accumulation", raw.compensated_accumulation.to_string()),
        ("stochastic_rounding", raw.stochastic_rounding.to_string()),
        ("seed", raw.seed.to_string()),
        ("loss_scale_policy", raw.loss_scale_policy.to_string()),
    ];
    for (k, v) in fields {
        meta.insert(format!("config.{k}"), v);
    }
}

/// Writes the snapshot to `path` atomically and durably.
pub fn save_snapshot(snap: &EngineSnapshot, path: &Path) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT_NAME.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("gacc_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    config_metadata(&snap.config, &mut meta);
    // Rust prints floats in the shortest form that parses back to the same bits.
    meta.insert("lr".to_string(), snap.lr.to_string());
    meta.insert("loss_scale".to_string(), snap.state.loss_scale.to_string());
    meta.insert("growth_tracker".to_string(), snap.state.growth_tracker.to_string());
    meta.insert("hysteresis_left".to_string(), snap.state.hysteresis_left.to_string());
    meta.insert("window_device_total".to_string(), snap.state.window_total.to_string());
    meta.insert("window_dropped".to_string(), snap.state.window_dropped.to_string());
    meta.insert("applied_steps".to_string(), snap.state.applied_steps.to_string());
    meta.insert("total_weight".to_string(), snap.total_weight.to_string());
    meta.insert("microbatches".to_string(), snap.microbatches.to_string());
    let layout: Vec<Value> = snap
        .layout
        .tensors
        .iter()
        .map(|t| serde_json::json!({ "name": t.name, "numel": t.numel, "no_weight_decay": !t.decay }))
        .collect();
    meta.insert("layout".to_string(), Value::Array(layout).to_string());

    let mut tensors = Vec::new();
    for kind in buffer_names(&snap.config) {
        let flat = buffer(&snap.state, kind);
        for (i, t) in snap.layout.tensors.iter().enumerate() {
            let data = &flat[t.offset..t.offset + t.numel];
            let name = format!("{kind}.{i}");
            meta.insert(format!("crc32.{name}"), format!("{:08x}", safetensors::crc32_f32(data)));
            tensors.push(TensorOut { name, data });
        }
    }
    let crc = metadata_crc(&meta);
    meta.insert("metadata_crc32".to_string(), crc);
    durable::replace_file(path, |w| safetensors::write(w, &meta, &tensors))
}

fn field<'a>(meta: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str> {
    meta.get(key).map(String::as_str).ok_or_else(|| corrupt(format!("metadata has no {key:?}")))
}

fn parse<T: std::str::FromStr>(meta: &BTreeMap<String, String>, key: &str) -> Result<T> {
    let text = field(meta, key)?;
    text.parse().map_err(|_| corrupt(format!("metadata {key:?} = {text:?} does not parse")))
}

/// Parses `key` into `out` when present; leaves `out` (the default) otherwise.
fn parse_or<T: std::str::FromStr>(meta: &BTreeMap<String, String>, key: &str, out: &mut T) -> Result<()> {
    if meta.contains_key(key) {
        *out = parse(meta, key)?;
    }
    Ok(())
}

fn config_from_metadata(meta: &BTreeMap<String, String>) -> Result<Config> {
    let mut raw = RawConfig::defaults();
    raw.device = codes::DEVICE_CPU;
    raw.optimizer = parse(meta, "config.optimizer")?;
    raw.lr = parse(meta, "config.lr")?;
    raw.momentum = parse(meta, "config.momentum")?;
    raw.nesterov = parse(meta, "config.nesterov")?;
    raw.beta1 = parse(meta, "config.beta1")?;
    raw.beta2 = parse(meta, "config.beta2")?;
    raw.eps = parse(meta, "config.eps")?;
    raw.weight_decay = parse(meta, "config.weight_decay")?;
    raw.precision = parse(meta, "config.precision")?;
    raw.max_grad_norm = parse(meta, "config.max_grad_norm")?;
    raw.init_scale = parse(meta, "config.init_scale")?;
    raw.growth_factor = parse(meta, "config.growth_factor")?;
    raw.backoff_factor = parse(meta, "config.backoff_factor")?;
    raw.growth_interval = parse(meta, "config.growth_interval")?;
    raw.grad_reduction = parse(meta, "config.grad_reduction")?;
    // Numerics options (absent from files written before they existed: defaults).
    parse_or(meta, "config.hysteresis", &mut raw.hysteresis)?;
    parse_or(meta, "config.consecutive_hysteresis", &mut raw.consecutive_hysteresis)?;
    parse_or(meta, "config.min_loss_scale", &mut raw.min_loss_scale)?;
    parse_or(meta, "config.max_loss_scale", &mut raw.max_loss_scale)?;
    parse_or(meta, "config.drop_nonfinite_microbatches", &mut raw.drop_nonfinite_microbatches)?;
    parse_or(meta, "config.compensated_accumulation", &mut raw.compensated_accumulation)?;
    parse_or(meta, "config.stochastic_rounding", &mut raw.stochastic_rounding)?;
    parse_or(meta, "config.seed", &mut raw.seed)?;
    // Files written before the loss-scale policy existed: GRADSCALER, the only rule then.
    parse_or(meta, "config.loss_scale_policy", &mut raw.loss_scale_policy)?;
    Config::validate(&raw).map_err(|e| corrupt(format!("saved configuration is invalid: {}", e.message)))
}

fn layout_from_metadata(meta: &BTreeMap<String, String>) -> Result<Layout> {
    let value: Value = serde_json::from_str(field(meta, "layout")?)
        .map_err(|e| corrupt(format!("metadata \"layout\" is not JSON: {e}")))?;
    let entries = value.as_array().ok_or_else(|| corrupt("metadata \"layout\" is not a list"))?;
    let mut specs = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let numel =
            e.get("numel").and_then(Value::as_u64).ok_or_else(|| corrupt(format!("layout[{i}] has no numel")))?;
        let no_decay = e
            .get("no_weight_decay")
            .and_then(Value::as_bool)
            .ok_or_else(|| corrupt(format!("layout[{i}] has no no_weight_decay")))?;
        let name = match e.get("name") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(_) => return Err(corrupt(format!("layout[{i}].name is not a string"))),
        };
        let numel = usize::try_from(numel).map_err(|_| corrupt(format!("layout[{i}].numel is too large")))?;
        specs.push((name, numel, !no_decay));
    }
    Layout::new(specs).map_err(|e| corrupt(format!("saved layout is invalid: {}", e.message)))
}

/// Reads and fully validates a checkpoint (format, version, metadata checksum,
/// configuration, layout, the exact set of tensors and their sizes, every tensor's
/// checksum) into a snapshot. Opening failures are GACC_ERR_IO; anything else that
/// does not check out is GACC_ERR_CORRUPT.
pub fn read_snapshot(path: &Path) -> Result<EngineSnapshot> {
    let file = File::open(path).map_err(|e| io_error(&format!("opening {}", path.display()), e))?;
    let file_len = file.metadata().map_err(|e| io_error("reading the file size", e))?.len();
    read_snapshot_from(BufReader::with_capacity(1 << 20, file), file_len)
}

/// As `read_snapshot`, from any seekable input (the fuzz target feeds bytes here).
pub fn read_snapshot_from<R: Read + Seek>(mut input: R, file_len: u64) -> Result<EngineSnapshot> {
    let header = safetensors::read_header(&mut input, file_len)?;
    let meta = &header.metadata;
    if field(meta, "format")? != FORMAT_NAME {
        return Err(corrupt(format!("format is {:?}, not {FORMAT_NAME:?}", field(meta, "format")?)));
    }
    let version: u32 = parse(meta, "format_version")?;
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("format_version {version} is not supported (this gacc reads {FORMAT_VERSION})")));
    }
    // Fuzz builds skip the checksums so the fuzzer can reach the validation behind them.
    if !cfg!(fuzzing) && field(meta, "metadata_crc32")? != metadata_crc(meta) {
        return Err(corrupt("metadata checksum mismatch: the header was modified or damaged"));
    }
    let config = config_from_metadata(meta)?;
    let layout = layout_from_metadata(meta)?;
    let names = buffer_names(&config);
    let expected = names.len() * layout.tensors.len();
    if header.tensors.len() != expected {
        return Err(corrupt(format!("file holds {} tensors, expected {expected}", header.tensors.len())));
    }
    // Read tensors in file order (sequential I/O), each straight into its place.
    let mut order: Vec<(u64, usize, usize)> = Vec::with_capacity(expected); // (offset, kind, tensor)
    for (k, kind) in names.iter().enumerate() {
        for (i, t) in layout.tensors.iter().enumerate() {
            let name = format!("{kind}.{i}");
            let (numel, offset) =
                *header.tensors.get(&name).ok_or_else(|| corrupt(format!("tensor {name:?} is missing")))?;
            if numel != t.numel {
                return Err(corrupt(format!("tensor {name:?} has {numel} values, the layout says {}", t.numel)));
            }
            order.push((offset, k, i));
        }
    }
    order.sort();
    let data_start = file_len - header.data_len;
    let mut flats: Vec<Vec<f32>> = Vec::with_capacity(names.len());
    for kind in &names {
        flats.push(crate::alloc::try_zeroed::<f32>(layout.numel, kind)?);
    }
    input.seek(SeekFrom::Start(data_start)).map_err(|e| io_error("seeking to the tensor data", e))?;
    for (_, k, i) in order {
        let t = &layout.tensors[i];
        let name = format!("{}.{i}", names[k]);
        let values = safetensors::read_f32(&mut input, t.numel, &name)?;
        let want = field(meta, &format!("crc32.{name}"))?;
        if !cfg!(fuzzing) && format!("{:08x}", safetensors::crc32_f32(&values)) != want {
            return Err(corrupt(format!("checksum mismatch in tensor {name:?}")));
        }
        flats[k][t.offset..t.offset + t.numel].copy_from_slice(&values);
    }
    let mut flats = flats.into_iter();
    let master = flats.next().unwrap_or_default();
    let acc = flats.next().unwrap_or_default();
    let state1 = if config.optimizer.state_buffers() >= 1 { flats.next().unwrap_or_default() } else { Vec::new() };
    let state2 = if config.optimizer.state_buffers() >= 2 { flats.next().unwrap_or_default() } else { Vec::new() };
    let comp = if config.numerics.compensated { flats.next().unwrap_or_default() } else { Vec::new() };
    let total_weight: f64 = parse(meta, "total_weight")?;
    if !(total_weight.is_finite() && total_weight >= 0.0) {
        return Err(corrupt(format!("total_weight {total_weight} is not finite and >= 0")));
    }
    let loss_scale: f32 = parse(meta, "loss_scale")?;
    if !(loss_scale.is_finite() && loss_scale > 0.0) {
        return Err(corrupt(format!("loss_scale {loss_scale} is not finite and > 0")));
    }
    let window_total = if meta.contains_key("window_device_total") { parse(meta, "window_device_total")? } else { 0.0 };
    if !(f64::is_finite(window_total) && window_total >= 0.0) {
        return Err(corrupt(format!("window_device_total {window_total} is not finite and >= 0")));
    }
    let mut window_dropped = 0u32;
    parse_or(meta, "window_dropped", &mut window_dropped)?;
    let mut hysteresis_left = config.scaler.hysteresis;
    parse_or(meta, "hysteresis_left", &mut hysteresis_left)?;
    if hysteresis_left < 1 || hysteresis_left > config.scaler.hysteresis {
        return Err(corrupt(format!(
            "hysteresis_left {hysteresis_left} is not in [1, hysteresis = {}]",
            config.scaler.hysteresis
        )));
    }
    let growth_tracker: u32 = parse(meta, "growth_tracker")?;
    let max_tracker = crate::engine::math::ScalerState::max_tracker(&config.scaler);
    if growth_tracker > max_tracker {
        return Err(corrupt(format!(
            "growth_tracker {growth_tracker} is above {max_tracker}, the most a {:?} scaler with growth_interval {} \
             holds",
            config.scaler.policy, config.scaler.growth_interval
        )));
    }
    let lr: f32 = parse(meta, "lr")?;
    crate::engine::config::validate_lr(lr).map_err(|e| corrupt(format!("saved {}", e.message)))?;
    Ok(EngineSnapshot {
        config,
        layout,
        lr,
        total_weight,
        microbatches: parse(meta, "microbatches")?,
        state: StateSnapshot {
            master,
            acc,
            state1,
            state2,
            loss_scale,
            growth_tracker,
            hysteresis_left,
            applied_steps: parse(meta, "applied_steps")?,
            comp,
            window_total,
            window_dropped,
        },
    })
}

/// Saves an engine's whole state.
pub fn save(engine: &mut Engine, path: &Path) -> Result<()> {
    let snap = engine.snapshot()?;
    save_snapshot(&snap, path)
}

/// Loads a checkpoint into an existing engine whose layout (tensor sizes and weight
/// decay flags), optimizer, precision, gradient reduction and loss-scale policy
/// match it. On any failure
/// the engine is left exactly as it was.
pub fn load(engine: &mut Engine, path: &Path) -> Result<()> {
    let snap = read_snapshot(path)?;
    check_compatible(engine, &snap)?;
    engine.restore(&snap)
}

fn check_compatible(engine: &Engine, snap: &EngineSnapshot) -> Result<()> {
    let ours = engine.layout();
    if ours.tensors.len() != snap.layout.tensors.len() {
        return Err(corrupt(format!(
            "checkpoint has {} tensors, the engine {}",
            snap.layout.tensors.len(),
            ours.tensors.len()
        )));
    }
    for (i, (a, b)) in ours.tensors.iter().zip(&snap.layout.tensors).enumerate() {
        if a.numel != b.numel || a.decay != b.decay {
            return Err(corrupt(format!(
                "tensor {i}: checkpoint has numel {} (weight decay {}), the engine numel {} (weight decay {})",
                b.numel, b.decay, a.numel, a.decay
            )));
        }
    }
    let cfg = engine.config();
    let same_kind = std::mem::discriminant(&cfg.optimizer) == std::mem::discriminant(&snap.config.optimizer)
        && cfg.optimizer.state_buffers() == snap.config.optimizer.state_buffers();
    let same_buffers = cfg.numerics.compensated == snap.config.numerics.compensated
        && cfg.numerics.drop_nonfinite == snap.config.numerics.drop_nonfinite;
    if cfg.scaler.policy != snap.config.scaler.policy {
        // The saved counters mean different things under the two rules.
        return Err(corrupt(format!(
            "checkpoint loss_scale_policy {:?} does not match the engine's {:?}",
            snap.config.scaler.policy, cfg.scaler.policy
        )));
    }
    if !same_kind || !same_buffers || cfg.precision != snap.config.precision || cfg.reduction != snap.config.reduction {
        return Err(corrupt(format!(
            "checkpoint configuration ({:?}, {:?}, {:?}, {:?}) does not match the engine's ({:?}, {:?}, {:?}, {:?})",
            snap.config.optimizer,
            snap.config.precision,
            snap.config.reduction,
            snap.config.numerics,
            cfg.optimizer,
            cfg.precision,
            cfg.reduction,
            cfg.numerics
        )));
    }
    Ok(())
}

/// Builds a new engine from a checkpoint, with the saved configuration on `device`.
pub fn create_from(path: &Path, device: DeviceRequest) -> Result<Engine> {
    let snap = read_snapshot(path)?;
    let mut config = snap.config;
    config.device = device;
    let mut engine = Engine::new(config, snap.layout.clone(), &snap.state.master)?;
    engine.restore(&snap)?;
    Ok(engine)
}
