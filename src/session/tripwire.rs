//! The tripwire: settings the gateway pins on an upstream session, watched in what
//! the server itself reports (DESIGN.md decision 10).
//!
//! The classifier decides statements from their text, but a setting can still change
//! without a statement the gateway sees: a user function a DBA labelled STABLE may call
//! `set_config`. The server reports the settings that matter (Postgres: ParameterStatus;
//! MySQL: session-state tracking), so each front end hands every report to
//! [`Tripwire::check`], and a pinned value that changes ends the session before anything
//! further is forwarded. Protocol-neutral: it knows names and values, not messages.

/// Pinned settings and the only value each may have.
#[derive(Debug, Clone, Default)]
pub struct Tripwire {
    pinned: Vec<(String, String)>,
}

/// A pinned setting changed: the session must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream reported {name} = {actual:?}, but sqlgate pins it to {pinned:?}")]
pub struct Tripped {
    pub name: String,
    pub pinned: String,
    pub actual: String,
}

impl Tripwire {
    /// Pins `name` to `value` (names compare case-insensitively, values exactly).
    pub fn pin(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        self.pinned.retain(|(n, _)| *n != name);
        self.pinned.push((name, value.to_owned()));
    }

    /// Checks one report of the server.
    pub fn check(&self, name: &str, value: &str) -> Result<(), Tripped> {
        let name = name.to_ascii_lowercase();
        match self.pinned.iter().find(|(n, _)| *n == name) {
            Some((_, pinned)) if pinned != value => Err(Tripped {
                name,
                pinned: pinned.clone(),
                actual: value.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_values_may_be_reported_again_but_not_changed() {
        let mut wire = Tripwire::default();
        wire.pin("standard_conforming_strings", "on");
        wire.pin("is_superuser", "off");
        assert!(wire.check("standard_conforming_strings", "on").is_ok());
        assert!(wire.check("application_name", "anything").is_ok());
        let tripped = wire
            .check("Standard_Conforming_Strings", "off")
            .unwrap_err();
        assert_eq!(tripped.pinned, "on");
        assert!(wire.check("is_superuser", "on").is_err());
    }
}
