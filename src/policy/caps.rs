//! Caps on settings that size the server's memory and parallelism.
//!
//! A read-only session may still tune its planner, but `SET work_mem = '1TB'` lets one
//! hash or sort take the server's memory or fill its disk with temporary files. So the
//! settings that size memory are allowed only up to a cap (`[limits.setting_caps]`),
//! by `SET`, `set_config` and startup parameter alike. A value sqlgate cannot read the
//! way the server would (hexadecimal, exponents, an unknown unit) is refused: fail
//! closed.

use crate::sql::{SetFacts, StatementFacts, StatementKind};

/// How a setting's value is written and what its unit-less number means.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// Memory; a bare number counts units of this many bytes.
    Memory { unit_bytes: f64 },
    /// A plain number (integer or decimal).
    Number,
}

/// One capped setting.
#[derive(Debug, Clone, PartialEq)]
struct Cap {
    name: &'static str,
    measure: Measure,
    /// The cap is a floor: the setting may be raised, not lowered (costs that, set
    /// low, make every query JIT-compile or go parallel).
    floor: bool,
    /// In bytes for memory, else the number itself.
    max: f64,
    /// The cap as the DBA wrote it (for messages).
    shown: String,
}

/// The caps in force.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingCaps {
    caps: Vec<Cap>,
}

const KB: f64 = 1024.0;

/// Postgres settings that can be capped, their measure and default cap. The defaults
/// leave room for analytics (work_mem 16 times the server's default) and let an
/// agent lower, but not raise, hash_mem_multiplier and parallel workers.
const POSTGRES: &[(&str, Measure, &str)] = &[
    ("work_mem", Measure::Memory { unit_bytes: KB }, "64MB"),
    // Planning time and memory grow exponentially with the joins planned exhaustively.
    ("join_collapse_limit", Measure::Number, "12"),
    ("from_collapse_limit", Measure::Number, "12"),
    ("geqo_threshold", Measure::Number, "12"),
    ("effective_io_concurrency", Measure::Number, "16"),
    (
        "maintenance_work_mem",
        Measure::Memory { unit_bytes: KB },
        "256MB",
    ),
    (
        "temp_buffers",
        Measure::Memory {
            unit_bytes: 8.0 * KB,
        },
        "64MB",
    ),
    ("hash_mem_multiplier", Measure::Number, "2"),
    ("max_parallel_workers_per_gather", Measure::Number, "2"),
];

/// Settings that may be raised but not lowered below these (the server's defaults):
/// lower, they make every query JIT-compile (uninterruptible, memory not counted) or
/// take parallel workers from every other session.
const POSTGRES_FLOORS: &[(&str, Measure, &str)] = &[
    ("jit_above_cost", Measure::Number, "100000"),
    ("jit_inline_above_cost", Measure::Number, "500000"),
    ("jit_optimize_above_cost", Measure::Number, "500000"),
    ("parallel_setup_cost", Measure::Number, "1000"),
    ("parallel_tuple_cost", Measure::Number, "0.1"),
    (
        "min_parallel_table_scan_size",
        Measure::Memory {
            unit_bytes: 8.0 * KB,
        },
        "8MB",
    ),
    (
        "min_parallel_index_scan_size",
        Measure::Memory {
            unit_bytes: 8.0 * KB,
        },
        "512kB",
    ),
];

impl SettingCaps {
    /// The default caps for Postgres.
    pub fn postgres_defaults() -> Self {
        let caps = POSTGRES
            .iter()
            .map(|cap| (cap, false))
            .chain(POSTGRES_FLOORS.iter().map(|cap| (cap, true)))
            .filter_map(|((name, measure, shown), floor)| {
                let max = read(*measure, shown)?;
                Some(Cap {
                    name,
                    measure: *measure,
                    floor,
                    max,
                    shown: (*shown).to_owned(),
                })
            })
            .collect();
        SettingCaps { caps }
    }

    /// Sets the cap of `name` from the config file.
    pub fn set(&mut self, name: &str, value: &toml::Value) -> Result<(), String> {
        let known: Vec<&str> = self.caps.iter().map(|c| c.name).collect();
        let Some(cap) = self.caps.iter_mut().find(|c| c.name == name) else {
            return Err(format!(
                "{name:?} cannot be capped (settings with caps: {})",
                known.join(", ")
            ));
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => return Err("expected a string like \"64MB\" or a number".into()),
        };
        cap.max = read(cap.measure, &text).ok_or_else(|| match cap.measure {
            Measure::Memory { .. } => {
                format!("{text:?} is not a size like \"64MB\" (units B, kB, MB, GB, TB)")
            }
            Measure::Number => format!("{text:?} is not a number"),
        })?;
        cap.shown = text;
        Ok(())
    }

    /// Each capped setting and its cap, for `sqlgate check`.
    pub fn describe(&self) -> Vec<(&'static str, &'static str, &str)> {
        self.caps
            .iter()
            .map(|c| (c.name, if c.floor { ">=" } else { "<=" }, c.shown.as_str()))
            .collect()
    }

    /// Whether setting `name` to `value` stays within its cap (names of settings
    /// without a cap always pass).
    pub fn check_value(&self, name: &str, value: &str) -> Result<(), String> {
        let Some(cap) = self.caps.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            return Ok(());
        };
        match read(cap.measure, value) {
            Some(v) if !cap.floor && v <= cap.max => Ok(()),
            Some(v) if cap.floor && v >= cap.max => Ok(()),
            Some(_) if cap.floor => Err(format!(
                "{} = {value} is under the gateway's floor of {} (it may be raised, not lowered)",
                cap.name, cap.shown
            )),
            Some(_) => Err(format!(
                "{} = {value} is over the gateway's cap of {}",
                cap.name, cap.shown
            )),
            None => Err(format!(
                "{} = {value:?} is not a value sqlgate can check against its cap of {} \
                 (write a plain size like 64MB)",
                cap.name, cap.shown
            )),
        }
    }

    /// Every value a statement sets (`SET`, `set_config` with constants) within caps.
    pub fn check(&self, facts: &StatementFacts) -> Result<(), String> {
        if let StatementKind::Set(SetFacts::Value { name, values }) = &facts.kind {
            let value = values.join(",");
            self.check_value(name, &value)?;
        }
        for call in &facts.tree.set_config_calls {
            if let (Some(name), Some(value)) = (&call.name, &call.value) {
                self.check_value(name, value)?;
            }
        }
        Ok(())
    }
}

/// Reads a value as the server would, into bytes (memory) or a number; `None` for
/// anything but a plain decimal number with an optional unit.
fn read(measure: Measure, text: &str) -> Option<f64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty()
        || number.starts_with('.')
        || number.ends_with('.')
        || number.matches('.').count() > 1
    {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim();
    match measure {
        Measure::Number => unit.is_empty().then_some(number),
        Measure::Memory { unit_bytes } => {
            // The server's units are case-sensitive; the classifier lowercases values.
            let scale = match unit.to_ascii_lowercase().as_str() {
                "" => unit_bytes,
                "b" => 1.0,
                "kb" => KB,
                "mb" => KB * KB,
                "gb" => KB * KB * KB,
                "tb" => KB * KB * KB * KB,
                _ => return None,
            };
            Some(number * scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_values_are_read_as_the_server_reads_them() {
        let caps = SettingCaps::postgres_defaults();
        for ok in ["64MB", "64mb", " 32 MB ", "65536", "0.0625GB", "1024kB"] {
            assert!(caps.check_value("work_mem", ok).is_ok(), "{ok}");
        }
        for over in [
            "1TB",
            "65537",
            "65MB",
            "0.5GB",
            "1e9",
            "0x7fffffff",
            "-1",
            "1 PB",
            "",
        ] {
            assert!(caps.check_value("work_mem", over).is_err(), "{over}");
        }
        // temp_buffers counts 8 kB buffers: 8192 of them are 64 MB.
        assert!(caps.check_value("temp_buffers", "8192").is_ok());
        assert!(caps.check_value("temp_buffers", "8193").is_err());
        assert!(caps.check_value("hash_mem_multiplier", "1.5").is_ok());
        assert!(caps.check_value("hash_mem_multiplier", "1000").is_err());
        assert!(caps
            .check_value("max_parallel_workers_per_gather", "64")
            .is_err());
        assert!(caps.check_value("statement_timeout", "0").is_ok());
        // Planner limits, and costs that may only be raised.
        assert!(caps.check_value("join_collapse_limit", "100").is_err());
        assert!(caps.check_value("join_collapse_limit", "8").is_ok());
        assert!(caps.check_value("jit_above_cost", "0").is_err());
        assert!(caps.check_value("jit_above_cost", "-1").is_err());
        assert!(caps.check_value("jit_above_cost", "1000000").is_ok());
        assert!(caps.check_value("parallel_tuple_cost", "0").is_err());
        assert!(caps
            .check_value("min_parallel_table_scan_size", "0")
            .is_err());
        assert!(caps
            .check_value("min_parallel_table_scan_size", "16MB")
            .is_ok());
    }

    #[test]
    fn caps_come_from_the_config() {
        let mut caps = SettingCaps::postgres_defaults();
        caps.set("work_mem", &toml::Value::String("16MB".into()))
            .unwrap();
        assert!(caps.check_value("work_mem", "32MB").is_err());
        assert!(caps
            .set("shared_buffers", &toml::Value::Integer(1))
            .is_err());
        assert!(caps
            .set("work_mem", &toml::Value::String("lots".into()))
            .is_err());
    }
}
