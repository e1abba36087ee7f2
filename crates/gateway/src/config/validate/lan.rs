//! The keys of `tcp_server:` whose defaults depend on the mode: `unit_id` and
//! `max_connections`. A KSEM config (no `rtu_poll:`) serves the meter to the house: any
//! unit id, as the KSEM answers, and 16 connections; a KSTAR config serves one device:
//! unit 1 and 8 connections. Touches nothing.

use serde_saphyr::Spanned;

use crate::config::schema::UnitIdText;
use crate::config::{ConfigError, UnitIds};

use super::{line, Validator};

/// Connections at once when `tcp_server.max_connections` is not written, KSEM config.
pub(crate) const METER_MAX_CONNECTIONS: usize = 16;
/// The same in a KSTAR config.
pub(crate) const KSTAR_MAX_CONNECTIONS: usize = 8;

impl Validator<'_> {
    /// `tcp_server.max_connections`: 1..=1024, default by mode.
    pub(super) fn tcp_max_connections(
        &self,
        raw: Option<&Spanned<usize>>,
    ) -> Result<usize, ConfigError> {
        let Some(n) = raw else {
            return Ok(if self.have_rtu_poll {
                KSTAR_MAX_CONNECTIONS
            } else {
                METER_MAX_CONNECTIONS
            });
        };
        if n.value == 0 || n.value > 1024 {
            return Err(self.err(line(n), "tcp_server.max_connections", "must be 1..1024"));
        }
        Ok(n.value)
    }

    /// `tcp_server.unit_id`: `any`, one id or a non-empty list of ids 0..=255; default by
    /// mode (any in a KSEM config, 1 in a KSTAR config).
    pub(super) fn tcp_unit_ids(
        &self,
        raw: Option<&Spanned<UnitIdText>>,
    ) -> Result<UnitIds, ConfigError> {
        const KEY: &str = "tcp_server.unit_id";
        let Some(raw) = raw else {
            return Ok(if self.have_rtu_poll {
                UnitIds::Only(vec![1])
            } else {
                UnitIds::Any
            });
        };
        let at = line(raw);
        let written: Vec<i64> = match &raw.value {
            UnitIdText::Word(w) if w.trim() == "any" => return Ok(UnitIds::Any),
            UnitIdText::Word(w) => {
                return Err(self.err(
                    at,
                    KEY,
                    format!("`{w}` is not a unit id; write `any`, one id (71) or a list ([1, 71])"),
                ))
            }
            UnitIdText::One(n) => vec![*n],
            UnitIdText::Many(list) => list.clone(),
        };
        if written.is_empty() {
            return Err(self.err(at, KEY, "an empty list answers nobody; write `any` or ids"));
        }
        let mut ids = Vec::with_capacity(written.len());
        for n in written {
            let id = u8::try_from(n)
                .map_err(|_| self.err(at, KEY, format!("`{n}` is not a unit id (0..255)")))?;
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(UnitIds::Only(ids))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, UnitIds};

    const KSEM: &str = "push: {listen: '127.0.0.1:5020'}\nregions:\n  - {name: t, start: 0, count: 40, source: push}\n";
    const KSTAR: &str = "rtu_poll: {device: /dev/ttyUSB0}\nregions:\n  - {name: a, start: 3000, count: 1, function: input, source: rtu_poll, every: 1s}\n";

    fn tcp(base: &str, keys: &str) -> Result<crate::config::TcpServerConfig, String> {
        let text = format!("tcp_server: {{listen: '127.0.0.1:502'{keys}}}\n{base}");
        parse(&text, "gw.yaml")
            .map_err(|e| e.to_string())
            .map(|l| l.config.tcp_server.expect("tcp_server"))
    }

    #[test]
    fn defaults_follow_the_mode() {
        let meter = tcp(KSEM, "").expect("ksem");
        assert_eq!((meter.unit_id, meter.max_connections), (UnitIds::Any, 16));
        let kstar = tcp(KSTAR, "").expect("kstar");
        assert_eq!(
            (kstar.unit_id, kstar.max_connections),
            (UnitIds::Only(vec![1]), 8)
        );
    }

    #[test]
    fn unit_id_is_any_one_id_or_a_list() {
        assert_eq!(
            tcp(KSEM, ", unit_id: any").expect("any").unit_id,
            UnitIds::Any
        );
        let one = tcp(KSEM, ", unit_id: 71").expect("71").unit_id;
        assert_eq!(one, UnitIds::Only(vec![71]));
        assert!(one.accepts(71) && !one.accepts(1));
        let list = tcp(KSEM, ", unit_id: [71, 1, 71]").expect("list").unit_id;
        assert_eq!(list, UnitIds::Only(vec![1, 71]));
        assert_eq!(list.to_string(), "1,71");
        for (bad, says) in [
            ("256", "`256` is not a unit id"),
            ("[1, -1]", "`-1` is not a unit id"),
            ("[]", "empty list"),
            ("all", "`all` is not a unit id"),
        ] {
            let e = tcp(KSEM, &format!(", unit_id: {bad}")).expect_err(bad);
            assert!(
                e.contains("gw.yaml:1: tcp_server.unit_id") && e.contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn max_connections_is_bounded() {
        assert_eq!(
            tcp(KSEM, ", max_connections: 32")
                .expect("32")
                .max_connections,
            32
        );
        let e = tcp(KSEM, ", max_connections: 0").expect_err("0");
        assert!(
            e.contains("tcp_server.max_connections: must be 1..1024"),
            "{e}"
        );
    }
}
